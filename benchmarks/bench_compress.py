"""Model-level quality of TT compression (``ttdecomp.compress``), measured, not assumed.

all-MiniLM-L6-v2 (packaged), all 36 encoder linear layers, budgets of their dense
parameters: the mean cosine of the compressed model's mean-pooled sentence embeddings to the
original's on 600 held-out tweets, and the accuracy of a logistic-regression probe trained on
the *original's* embeddings of the 1,000 training tweets (its weight decay chosen on the 300
validation tweets), applied to each model's test embeddings; weight-only vs calibration-aware
(256 training tweets), with and without healing (distillation into the TT cores on the
training tweets and then the rest of the packaged corpus, labels ignored, the validation and
test tweets left out: ``ttdecomp compress --heal``'s texts). SmolLM2-135M: held-out
perplexity on chatterbot test dialogues at the same budgets, with and without healing (KL on
the logits plus every layer's hidden states, on the training dialogues). For every compressed model:
forward time and peak tensor memory for a batch of 32 against the dense model, 1 and 2 torch
threads, ratios from the same run.

Usage::

    python benchmarks/bench_compress.py                      # everything (~1 h on 2 cores)
    python benchmarks/bench_compress.py --quick              # 50% only, short healing
    python benchmarks/bench_compress.py --skip-smollm2 --out results.json

Results are appended to the JSON file (``--out``) row by row, so an interrupted run keeps
what it measured; the tables are printed at the end (and as RST with ``--rst``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ttdecomp.compress import compress_model, heal
from ttdecomp.compress.inputs import causal_data, encoder_texts, load_model
from ttdecomp.compress.job import HEAL_CACHE_GB, HEAL_SIZE
from ttdecomp.compress.measure import (
    forward_cost,
    mean_cosine,
    measure_causal,
    sentence_embeddings,
    tokenize_batches,
)
from ttdecomp.finetune.data import load_classification


def probe_fit(x: torch.Tensor, y: torch.Tensor, decay: float, classes: int) -> torch.nn.Linear:
    """Multinomial logistic regression (L-BFGS, L2 ``decay``) on standardised features."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], classes).double()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")
    xd = x.double()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xd), y) + decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


class Probe:
    """Standardise with the original's training embeddings; decay chosen on validation."""

    def __init__(self, train, ytr, val, yval, classes: int) -> None:
        self.mu, self.sd = train.mean(0), train.std(0).clamp_min(1e-6)
        best = None
        for decay in (1e-4, 1e-3, 1e-2, 1e-1):
            lin = probe_fit(self._z(train), ytr, decay, classes)
            acc = self._acc(lin, val, yval)
            if best is None or acc > best[0]:
                best = (acc, decay, lin)
        self.val_acc, self.decay, self.lin = best

    def _z(self, x):
        return (x - self.mu) / self.sd

    def _acc(self, lin, x, y) -> float:
        with torch.no_grad():
            return float((lin(self._z(x).double()).argmax(1) == y).double().mean())

    def accuracy(self, x, y) -> float:
        return self._acc(self.lin, x, y)


def costs(original, compressed, batch, repeats: int = 3) -> dict:
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        dense = forward_cost(original, batch, repeats=repeats)
        small = forward_cost(compressed, batch, repeats=repeats)
        out[f"time_ratio_{threads}t"] = small["seconds"] / dense["seconds"]
        out[f"dense_s_{threads}t"] = dense["seconds"]
        out[f"peak_ratio_{threads}t"] = small["peak_bytes"] / max(dense["peak_bytes"], 1.0)
    torch.set_num_threads(1)
    out["param_ratio"] = small["param_bytes"] / dense["param_bytes"]
    return out


def record(path: Path, row: dict) -> None:
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append(row)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(path)
    print(json.dumps(row), flush=True)


def run_heal(args, small, original, data):
    """``heal`` with the benchmark's ``--heal-*`` settings, on ``--heal-threads`` threads."""
    torch.set_num_threads(args.heal_threads)
    try:
        return heal(
            small,
            original,
            data,
            steps=args.heal_steps,
            max_seconds=args.heal_seconds,
            lr=args.heal_lr,
            layerwise=args.heal_layerwise,
            refit_batches=args.heal_refit_batches,
            hidden=args.heal_hidden,
            schedule=args.heal_schedule,
            cache_bytes=args.heal_cache_gb * 2**30,
        )
    finally:
        torch.set_num_threads(1)


def healed_fields(args, h, **data: int) -> dict:
    """The JSON fields of a healed row: what :func:`run_heal` did and with which settings."""
    return {
        "healed": True,
        "heal_threads": args.heal_threads,
        "heal_steps": h.steps,
        "heal_s": h.seconds,
        "heal_loss": [h.loss_first, h.loss_last],
        "heal_config": {
            "lr": args.heal_lr,
            "layerwise": args.heal_layerwise,
            "hidden": args.heal_hidden,
            "refit_batches": args.heal_refit_batches,
            "schedule": args.heal_schedule,
            **data,
        },
        "refit_s": h.refit.seconds if h.refit else None,
    }


def minilm(args, out: Path) -> None:
    model, tok, _ = load_model("minilm")
    s = load_classification("tweets", sizes=(1000, 300, 600))
    texts = {k: [t for t, _ in getattr(s, k)] for k in ("train", "validation", "test")}
    labels = {k: torch.tensor([y for _, y in getattr(s, k)]) for k in texts}
    cal = tokenize_batches(tok, texts["train"][: args.calibration], batch_size=32)
    heal_texts = encoder_texts("tweets", (args.calibration, args.heal_size, 600))[1]
    heal_data = tokenize_batches(tok, heal_texts, batch_size=32)
    cache = args.cache / "minilm_reference.pt" if args.cache else None
    if cache is not None and cache.exists():
        ref = torch.load(cache)
    else:
        ref = {k: sentence_embeddings(model, tok, v) for k, v in texts.items()}
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(ref, cache)
    probe = Probe(ref["train"], labels["train"], ref["validation"], labels["validation"], 3)
    dense_acc = probe.accuracy(ref["test"], labels["test"])
    batch = tokenize_batches(tok, texts["test"][:32], batch_size=32)[0]
    record(
        out,
        {
            "model": "minilm",
            "budget": 1.0,
            "method": "dense",
            "healed": False,
            "cosine": 1.0,
            "probe_acc": dense_acc,
            "probe_decay": probe.decay,
            "probe_val_acc": probe.val_acc,
        },
    )
    for budget in args.budgets:
        for method in args.methods:
            t0 = time.perf_counter()
            small, rep = compress_model(
                model, budget, calibration=cal, method=method, layout=args.layout
            )
            seconds = time.perf_counter() - t0
            emb = sentence_embeddings(small, tok, texts["test"])
            row = {
                "model": "minilm",
                "budget": budget,
                "method": method,
                "healed": False,
                "cosine": mean_cosine(ref["test"], emb),
                "probe_acc": probe.accuracy(emb, labels["test"]),
                "tt_params": rep.n_params,
                "dense_params": rep.dense_n_params,
                "layouts": sorted({f"{r.layout}/{len(r.row_shape)}" for r in rep.layers}),
                "mean_output_error": sum(r.output_error for r in rep.layers) / len(rep.layers),
                "mean_weight_error": sum(r.weight_error for r in rep.layers) / len(rep.layers),
                "compress_s": seconds,
            }
            if method in args.cost_methods:  # the same shapes and ranks cost the same
                row.update(costs(model, small, batch, args.repeats))
            record(out, row)
            if method in args.heal_methods:
                h = run_heal(args, small, model, heal_data)
                emb = sentence_embeddings(small, tok, texts["test"])
                record(
                    out,
                    {
                        **row,
                        **healed_fields(args, h, texts=len(heal_texts)),
                        "cosine": mean_cosine(ref["test"], emb),
                        "probe_acc": probe.accuracy(emb, labels["test"]),
                    },
                )
            del small


def smollm2(args, out: Path) -> None:
    model, tok, _ = load_model("smollm2")
    splits, _ = causal_data("chatterbot")
    from ttdecomp.compress.inputs import causal_batches

    cal = causal_batches(tok, splits.train[: args.lm_calibration])
    heal_data = causal_batches(tok, splits.train[: args.lm_heal_size])
    held = splits.test[: args.lm_eval]
    dense_ppl = dense_cost = None

    def measure(small, repeats: int) -> dict:  # the dense model measured once, at the first row
        return measure_causal(
            model,
            small,
            tok,
            held,
            dense_ppl=dense_ppl,
            dense_cost=dense_cost,
            cost_batch=args.lm_cost_batch,
            repeats=repeats,
        )

    for budget in args.budgets:
        for method in args.lm_methods:
            t0 = time.perf_counter()
            small, rep = compress_model(
                model,
                budget,
                calibration=cal,
                method=method,
                layout=args.lm_layout,
                refine_steps=args.lm_refine_steps,
            )
            seconds = time.perf_counter() - t0
            m = measure(small, repeats=args.repeats)
            dense_ppl, dense_cost = m["dense_perplexity"], m["dense_cost"]
            row = {
                "model": "smollm2",
                "budget": budget,
                "method": method,
                "healed": False,
                "perplexity": m["perplexity"],
                "dense_perplexity": dense_ppl,
                "dialogues": m["dialogues"],
                "tt_params": rep.n_params,
                "dense_params": rep.dense_n_params,
                "compress_s": seconds,
                "measure_s": time.perf_counter() - t0 - seconds,
                "lm_calibration": args.lm_calibration,
                "lm_refine_steps": args.lm_refine_steps,
                "layouts": sorted({f"{r.layout}/{len(r.row_shape)}" for r in rep.layers}),
                "time_ratio_1t": m["time_ratio"],
                "peak_ratio_1t": m["peak_ratio"],
                "param_ratio": m["param_bytes"] / m["dense_param_bytes"],
            }
            record(out, row)
            if method in args.lm_heal_methods:
                h = run_heal(args, small, model, heal_data)
                perplexity = measure(small, repeats=1)  # the cost: the unhealed row's
                record(
                    out,
                    {
                        **row,
                        **healed_fields(args, h, dialogues=len(splits.train[: args.lm_heal_size])),
                        "perplexity": perplexity["perplexity"],
                    },
                )
            del small


def table(rows: list[dict], rst: bool) -> str:
    lines = []
    enc = [r for r in rows if r["model"] == "minilm"]
    if enc:
        head = [
            "budget",
            "method",
            "healed",
            "cosine",
            "probe acc",
            "out.err",
            "fwd 1t",
            "fwd 2t",
            "peak",
        ]
        body = []
        for r in enc:
            body.append(
                [
                    "dense" if r["method"] == "dense" else f"{r['budget']:.0%}",
                    {"dense": "-", "weight": "weight-only", "output": "calibration"}[r["method"]],
                    "yes" if r["healed"] else "no",
                    f"{r['cosine']:.3f}",
                    f"{r['probe_acc']:.1%}",
                    f"{r['mean_output_error']:.3f}" if "mean_output_error" in r else "-",
                    f"{r['time_ratio_1t']:.2f}x" if "time_ratio_1t" in r else "-",
                    f"{r['time_ratio_2t']:.2f}x" if "time_ratio_2t" in r else "-",
                    f"{r['peak_ratio_1t']:.2f}x" if "peak_ratio_1t" in r else "-",
                ]
            )
        lines.append(_render(head, body, rst))
    dec = [r for r in rows if r["model"] == "smollm2"]
    if dec:
        head = ["budget", "method", "healed", "perplexity", "dense ppl", "fwd 1t", "peak", "params"]
        body = [
            [
                f"{r['budget']:.0%}",
                r["method"],
                "yes" if r["healed"] else "no",
                f"{r['perplexity']:.2f}",
                f"{r['dense_perplexity']:.2f}",
                f"{r['time_ratio_1t']:.2f}x",
                f"{r['peak_ratio_1t']:.2f}x",
                f"{r['param_ratio']:.2f}x",
            ]
            for r in dec
        ]
        lines.append(_render(head, body, rst))
    return "\n\n".join(lines)


def _render(head: list[str], body: list[list[str]], rst: bool) -> str:
    if rst:
        out = [".. list-table::", "   :header-rows: 1", ""]
        for row in [head, *body]:
            out.append("   * - " + row[0])
            out.extend(f"     - {c}" for c in row[1:])
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.75, 0.5, 0.25, 0.1])
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--methods", nargs="+", default=["weight", "output"])
    ap.add_argument("--heal-methods", nargs="*", default=["output"])
    ap.add_argument("--heal-seconds", type=float, default=300.0)
    ap.add_argument("--heal-steps", type=int, default=100_000)
    ap.add_argument("--heal-lr", type=float, default=1e-3)
    ap.add_argument("--heal-size", type=int, default=HEAL_SIZE, help="healing texts")
    ap.add_argument("--heal-schedule", choices=("constant", "cosine"), default="cosine")
    ap.add_argument(
        "--heal-cache-gb", type=float, default=HEAL_CACHE_GB, help="teacher output cache"
    )
    ap.add_argument("--heal-layerwise", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--heal-refit-batches", type=int, default=4)
    ap.add_argument("--heal-hidden", choices=("last", "all"), default="all")
    ap.add_argument(
        "--heal-threads", type=int, default=1, help="torch threads while healing (2: the target)"
    )
    ap.add_argument("--lm-methods", nargs="+", default=["weight", "output"])
    ap.add_argument("--lm-heal-methods", nargs="*", default=["output"])
    ap.add_argument(
        "--lm-heal-size", type=int, default=HEAL_SIZE, help="healing dialogues (training split)"
    )
    ap.add_argument("--lm-layout", default="split")
    ap.add_argument("--lm-calibration", type=int, default=32)
    ap.add_argument("--lm-eval", type=int, default=40)
    ap.add_argument(
        "--lm-refine-steps", type=int, default=10, help="L-BFGS steps (multi-input-core layers)"
    )
    ap.add_argument("--lm-cost-batch", type=int, default=8, help="dialogues in the timed batch")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--quick", action="store_true", help="50%% only, 30 s of healing")
    ap.add_argument("--out", type=Path, default=Path("bench_compress.json"))
    ap.add_argument("--cache", type=Path, help="folder caching the original's embeddings")
    ap.add_argument("--cost-methods", nargs="*", default=["output"], help="rows timed")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per model")
    ap.add_argument("--rst", action="store_true", help="print the tables as RST list-tables")
    args = ap.parse_args()
    if args.quick:
        args.budgets, args.heal_seconds = [0.5], 30.0
    torch.set_num_threads(1)
    start = time.time()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()}, torch {torch.__version__}",
        flush=True,
    )
    print("# " + " ".join(sys.argv), flush=True)
    if not args.skip_minilm:
        minilm(args, args.out)
    if not args.skip_smollm2:
        smollm2(args, args.out)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    print(table(rows, args.rst))
    print(f"# {time.time() - start:.0f} s, load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
