"""TT-LoRA against LoRA on MPNet-base (all-mpnet-base-v2) and the packaged tweets, 3 seeds.

The TT-LoRA papers' RoBERTa-base configuration on a model of RoBERTa-base's shapes (12 layers,
768 wide): TT shape ``[64, 4, 3, 3, 4, 64]``, rank 4, on every layer's query and value
(``attention.attn.q`` and ``attention.attn.v``): 17,664 adapter parameters, against LoRA r=8 on
the same targets (294,912) and LoRA at the smallest rank whose parameter count is at least
TT-LoRA's (r=1: 36,864). Everything else is ``ttdecomp finetune``'s protocol (its defaults for
the schedule, epochs, α and lr of each method, validation-chosen epoch), on the packaged tweets
with the larger test split (``--test-size``, 2,000 by default).

Each method runs in a process of its own (``finetune`` in ``python -P``), so
the peak resident memory reported is that method's (``ru_maxrss`` of the process), beside the
wall time per run and the peak bytes of one training step that ``fit`` measures. The claim
table (paired differences with 95% intervals) is printed by ``scripts/claim_table.py`` from the
results.json files the runs write under ``--output``.

This takes hours on a CPU (one MPNet run of 4 epochs on 1,000 tweets is about 12x a MiniLM
run); ``--seeds 0 --methods tt-lora`` times one run.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_mpnet.py [--model mpnet] [--seeds 0,1,2]
        [--methods tt-lora,lora,lora-matched] [--threads 1] [--output bench-mpnet]
        [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ["attention.attn.q", "attention.attn.v"]
TT_SHAPE = [64, 4, 3, 3, 4, 64]
TT_RANK = 4
# name -> (ttdecomp finetune method, its settings)
RUNS = {
    "tt-lora": ("tt-lora", {"tt_shape": TT_SHAPE, "rank": TT_RANK}),
    "lora": ("lora", {"rank": 8}),
    # LoRA at TT-LoRA's budget: the rank is derived by the run (r=1 here: 36,864 >= 17,664)
    "lora-matched": ("lora-matched", {}),
}
ROOT = Path(__file__).resolve().parents[1]


def child(spec_file: str, stats_file: str) -> int:
    """Run one method's seeds with ``finetune`` in this process; write its peak memory."""
    from ttdecomp.finetune import FinetuneConfig, finetune

    spec = json.loads(Path(spec_file).read_text())
    start = time.perf_counter()
    finetune(
        FinetuneConfig(**spec["config"]),
        output=spec["output"],
        overwrite=True,
        figures=False,
        jobs=1,
        threads=spec["threads"],
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    Path(stats_file).write_text(json.dumps({"seconds": seconds, "peak_rss_bytes": peak}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mpnet", help="packaged name or local folder")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(RUNS), help=f"from {', '.join(RUNS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="bench-mpnet")
    parser.add_argument("--write", help="also write the claim table into this markdown file's "
                        "mpnet block (scripts/claim_table.py --write)")  # fmt: skip
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    names = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        parser.error(f"unknown methods {unknown}; expected some of {', '.join(RUNS)}")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    timing = {}
    for name in names:
        method, settings = RUNS[name]
        folder = output / name
        config = {
            "model": args.model,
            "methods": [method],
            "seeds": [int(x) for x in args.seeds.split(",")],
            "targets": TARGETS,
            "sizes": [None, None, args.test_size],
            "device": args.device,
            "epochs": args.epochs,
            **{key: {method: value} for key, value in settings.items() if key != "tt_shape"},
            **({"tt_shape": settings["tt_shape"]} if "tt_shape" in settings else {}),
        }
        if method == "lora-matched":  # matched against the paper's TT-LoRA configuration
            config["tt_shape"], config["rank"] = TT_SHAPE, {"tt-lora": TT_RANK}
        spec_file, stats_file = output / f"{name}.spec.json", output / f"{name}.process.json"
        spec = {"config": config, "output": str(folder), "threads": args.threads}
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, "-P", __file__, "--child", str(spec_file), str(stats_file)]
        print(f"{name}: {json.dumps(config)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        results = json.loads((folder / "results.json").read_text())
        process = json.loads(stats_file.read_text())
        rows = results["rows"]
        timing[name] = {
            "adapter_params": rows[0]["adapter_params"],
            "seconds_per_run": process["seconds"] / len(rows),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in rows),
            "peak_step_mib": max(r["peak_step_bytes"] for r in rows) / 2**20,
            "peak_rss_mib": process["peak_rss_bytes"] / 2**20,
        }
    print("| run | adapter params | wall s per run | train s | peak step MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, t in timing.items():
        print(
            f"| {name} | {t['adapter_params']:,} | {t['seconds_per_run']:.0f} | "
            f"{t['train_seconds']:.0f} | {t['peak_step_mib']:.1f} | {t['peak_rss_mib']:.0f} |"
        )
    (output / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    files = [str(output / name / "results.json") for name in timing]
    if "lora" in timing:
        print()
        write = ["--write", args.write, "--block", "mpnet"] if args.write else []
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "claim_table.py"), *files, "--costs", *write],
            check=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
