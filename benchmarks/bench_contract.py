"""Benchmark: ttdecomp's TT-matrix × dense contraction against dense layers, LoRA and peers.

Every measurement runs in a fresh subprocess with the same thread count (numpy's and
torch's pools fight on small machines), float32, one warm-up, then the median of
``--runs`` timings. Memory is the peak RSS of that subprocess above its RSS after setup
(inputs and weights allocated), and, for autograd workloads, the bytes autograd saved for
backward (``saved_tensors_hooks``, unique storages). Workers run interleaved over
``--rounds`` rounds and the reported time is the median over rounds, so load from other
processes hits every library alike.

Workloads (ratios are printed against the reference named in each table):

* ``fwd64``: 64 vectors through the (8,8,8,8)×(8,8,8,8) rank-16 TT-matrix (4096×4096).
* ``fwdbwd``: forward + backward, 8192 tokens, same TT-matrix, against ``nn.Linear``.
* ``lora``: TT-LoRA split layout [16,4,4,4,2,2 | 2,2,4,4,4,16], rank 10, forward +
  backward on 8192×4096, against a LoRA r=8 pair (two bias-free ``nn.Linear``).
* ``sweep``: batch sizes 1…8192, the automatic plan against each forced order.

Run::

    python benchmarks/bench_contract.py                 # everything, 2 threads
    python benchmarks/bench_contract.py --only fwd64 --runs 7
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE8 = ((8, 8, 8, 8), (8, 8, 8, 8), (1, 16, 16, 16, 1))
LORA_COLS = (16, 4, 4, 4, 2, 2) + (1,) * 6
LORA_ROWS = (1,) * 6 + (2, 2, 4, 4, 4, 16)
LORA_RANKS = (1,) + (10,) * 11 + (1,)
SWEEP_BATCHES = (1, 4, 16, 64, 256, 1024, 4096, 8192)
SKIP_FACTOR = 20

WORKERS = {
    "fwd64": (
        "ttdecomp",
        "ttdecomp-numpy",
        "dense",
        "reconstruct",
        "tltorch",
        "torchtt",
        "tntorch",
    ),
    "fwdbwd": ("ttdecomp", "dense", "tltorch"),
    "lora": ("ttdecomp", "lora8"),
    "sweep": ("interleaved", "split"),
}


# --------------------------------------------------------------------------- worker side
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _cores(torch, shape, seed=0):
    rows, cols, ranks = shape
    gen = torch.Generator().manual_seed(seed)
    d = len(rows)
    std = math.prod(ranks) ** (-1 / (2 * d))  # unit-variance entries of W (t3f's formula)
    return [
        torch.randn(ranks[k], rows[k], cols[k], ranks[k + 1], generator=gen) * std for k in range(d)
    ]


def _saved_mb(torch, fn) -> float:
    """MB autograd saves for backward while ``fn`` runs (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values()) / 2**20


def worker(workload: str, lib: str, runs: int) -> dict:
    import torch

    torch.manual_seed(0)
    result: dict = {}
    if workload == "fwd64":
        x = torch.randn(64, 4096)
        fn = _fwd64(torch, lib, x)
        base = _rss_mb()
        with torch.no_grad():
            result["times"] = _time(fn, runs)
    elif workload in ("fwdbwd", "lora"):
        x = torch.randn(8192, 4096, requires_grad=True)
        g = torch.randn(8192, 4096)
        fwd, params = (_fwdbwd if workload == "fwdbwd" else _lora)(torch, lib)
        base = _rss_mb()

        def step():
            x.grad = None
            for p in params:
                p.grad = None
            fwd(x).backward(g)

        result["times"] = _time(step, runs)
        result["saved_mb"] = _saved_mb(torch, lambda: fwd(x))
    else:
        return _sweep(torch, lib, runs)
    result["peak_mb"] = _peak_rss_mb() - base
    return result


def _fwd64(torch, lib, x):
    from ttdecomp.contract import apply

    cores = _cores(torch, SHAPE8)
    if lib == "ttdecomp":
        return lambda: apply(cores, x)
    if lib == "ttdecomp-numpy":
        np_cores, np_x = [c.numpy() for c in cores], x.numpy()
        return lambda: apply(np_cores, np_x)
    if lib == "dense":
        w = torch.randn(4096, 4096)
        return lambda: x @ w.T
    if lib == "reconstruct":
        return lambda: x @ _full(torch, cores).T
    if lib == "tltorch":
        import tltorch

        layer = tltorch.FactorizedLinear(
            (8, 8, 8, 8),
            (8, 8, 8, 8),
            bias=False,
            factorization="blocktt",
            rank=16,
            implementation="factorized",
        )
        return lambda: layer(x)
    if lib == "torchtt":
        import torchtt

        ttm = torchtt.TT([c.clone() for c in cores])
        xt = x.reshape(64, 8, 8, 8, 8)
        return lambda: ttm @ xt
    if lib == "tntorch":
        import tntorch as tn

        ttm = tn.TTMatrix(
            [c.permute(0, 2, 1, 3).contiguous() for c in cores], [16] * 3, [8] * 4, [8] * 4
        )
        return lambda: tn.matrix.tt_multiply(ttm, x)
    raise ValueError(lib)


def _full(torch, cores):
    w = cores[0]
    for c in cores[1:]:
        w = torch.einsum("aijb,bklc->aikjlc", w, c)
        a, i, k, j, l, cc = w.shape
        w = w.reshape(a, i * k, j * l, cc)
    return w[0, :, :, 0]


def _fwdbwd(torch, lib):
    from ttdecomp.contract import apply

    if lib == "ttdecomp":
        cores = [c.requires_grad_() for c in _cores(torch, SHAPE8)]
        return (lambda x: apply(cores, x)), cores
    if lib == "dense":
        layer = torch.nn.Linear(4096, 4096, bias=False)
        return layer, list(layer.parameters())
    if lib == "tltorch":
        import tltorch

        layer = tltorch.FactorizedLinear(
            (8, 8, 8, 8),
            (8, 8, 8, 8),
            bias=False,
            factorization="blocktt",
            rank=16,
            implementation="factorized",
        )
        return layer, list(layer.parameters())
    raise ValueError(lib)


def _lora(torch, lib):
    from ttdecomp.contract import apply

    if lib == "ttdecomp":
        cores = [c.requires_grad_() for c in _cores(torch, (LORA_ROWS, LORA_COLS, LORA_RANKS))]
        return (lambda x: apply(cores, x)), cores
    if lib == "lora8":
        a = torch.nn.Linear(4096, 8, bias=False)
        b = torch.nn.Linear(8, 4096, bias=False)
        return (lambda x: b(a(x))), [a.weight, b.weight]
    raise ValueError(lib)


def _sweep(torch, lib, runs):
    from ttdecomp.contract import apply, contraction_plan

    shape = SHAPE8 if lib == "interleaved" else (LORA_ROWS, LORA_COLS, LORA_RANKS)
    cores = _cores(torch, shape)
    rows = {}
    with torch.no_grad():
        for batch in SWEEP_BATCHES:
            x = torch.randn(batch, math.prod(shape[1]))
            plan = contraction_plan(cores, batch)
            row = {"plan": f"{plan.order}" + ("" if plan.split is None else f"@{plan.split}")}
            forced = {
                "auto": {},
                "ltr": {"order": "ltr"},
                "rtl": {"order": "rtl"},
                "dense": {"order": "dense"},
            }
            for name in ("ltr", "rtl", "dense"):
                if plan.order == name:
                    # the plan *is* this order (same code path): timing it twice would
                    # only compare noise with noise; it gets auto's samples
                    del forced[name]
                    row["same"] = name
                    continue
                # An order the model puts at > SKIP_FACTOR x the plan's FLOPs is not timed
                # (right-to-left on a split layout forms a B·N·r·M outer product).
                flops = contraction_plan(cores, batch, order=name).cost.flops
                if flops > SKIP_FACTOR * plan.cost.flops:
                    del forced[name]
                    row[name] = None
                    row[name + "_gflop"] = flops / 1e9
            samples = {k: [] for k in forced}
            n = max(runs, 5) if batch >= 1024 else max(runs, 15 if batch >= 64 else 41)
            for kwargs in forced.values():
                apply(cores, x, **kwargs)  # warm-up
            for _ in range(n):  # interleaved, so load hits all orders alike
                for name, kwargs in forced.items():
                    t0 = time.perf_counter()
                    apply(cores, x, **kwargs)
                    samples[name].append(time.perf_counter() - t0)
            row.update({k: statistics.median(v) for k, v in samples.items()})
            if "same" in row:
                row[row["same"]] = row["auto"]
            rows[batch] = row
    return {"rows": rows}


# --------------------------------------------------------------------------- driver side
def run_worker(workload: str, lib: str, args) -> dict | None:
    env = dict(os.environ)
    threads = str(args.threads)
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(ROOT),
    )
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        workload,
        lib,
        "--runs",
        str(args.runs),
        "--threads",
        threads,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        print(f"  [{workload}/{lib} failed: {' '.join(tail)}]", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(title: str, ref: str, results: dict, with_mem: bool) -> None:
    print(f"\n{title}")
    head = f"  {'library':<16}{'median ms':>12}{'ratio':>10}"
    if with_mem:
        head += f"{'peak MB':>12}{'saved MB':>11}"
    print(head)
    ref_t = results.get(ref, {}).get("t")
    for lib, r in results.items():
        if r is None:
            print(f"  {lib:<16}{'failed':>12}")
            continue
        ratio = f"{r['t'] / ref_t:.2f}x" if ref_t else "-"
        line = f"  {lib:<16}{r['t'] * 1e3:>12.1f}{ratio:>10}"
        if with_mem:
            line += f"{r['peak_mb']:>12.0f}{r.get('saved_mb', float('nan')):>11.1f}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "LIB"))
    ap.add_argument("--only", default="fwd64,fwdbwd,lora,sweep")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(*args.worker, args.runs)))
        return

    import torch

    print(
        f"bench_contract: torch {torch.__version__}, float32, {args.threads} threads, "
        f"median of {args.runs} after one warm-up, {args.rounds} interleaved rounds, "
        "one subprocess per measurement"
    )
    sys.stdout.reconfigure(line_buffering=True)
    for workload in args.only.split(","):
        if workload == "sweep":
            continue
        samples: dict[str, list] = {lib: [] for lib in WORKERS[workload]}
        for _ in range(args.rounds):
            for lib in WORKERS[workload]:
                samples[lib].append(run_worker(workload, lib, args))
        results = {}
        for lib, rs in samples.items():
            rs = [r for r in rs if r is not None]
            results[lib] = (
                None
                if not rs
                else {
                    "t": statistics.median(statistics.median(r["times"]) for r in rs),
                    "peak_mb": max(r["peak_mb"] for r in rs),
                    "saved_mb": rs[0].get("saved_mb", float("nan")),
                }
            )
        if workload == "fwd64":
            table(
                "fwd64: 64 vectors, (8,8,8,8)^2 rank 16, forward (ratio vs dense x @ W.T)",
                "dense",
                results,
                with_mem=False,
            )
            _ratio_line(results, "ttdecomp", "tltorch", 0.65)
            _ratio_line(results, "ttdecomp", "dense", 0.6)
        elif workload == "fwdbwd":
            table(
                "fwdbwd: 8192 tokens, (8,8,8,8)^2 rank 16, forward+backward (ratio vs nn.Linear)",
                "dense",
                results,
                with_mem=True,
            )
            _ratio_line(results, "ttdecomp", "dense", 1.0)
            if results.get("ttdecomp"):
                ok = results["ttdecomp"]["peak_mb"] <= 1536
                print(
                    f"  target: ttdecomp peak memory <= 1536 MB: "
                    f"{results['ttdecomp']['peak_mb']:.0f} MB {'OK' if ok else 'MISSED'}"
                )
        elif workload == "lora":
            table(
                "lora: TT-LoRA split [16,4,4,4,2,2|2,2,4,4,4,16] r=10 vs LoRA r=8, 8192x4096, "
                "forward+backward (ratio vs LoRA)",
                "lora8",
                results,
                with_mem=True,
            )
            _ratio_line(results, "ttdecomp", "lora8", 1.5)
            if results.get("ttdecomp") and results.get("lora8"):
                a, b = results["ttdecomp"]["saved_mb"], results["lora8"]["saved_mb"]
                print(
                    f"  target: activation (saved) memory <= LoRA + 10%: {a:.1f} MB vs "
                    f"{b:.1f} MB -> {a / b:.3f}x {'OK' if a <= 1.1 * b else 'MISSED'}"
                )
    if "sweep" in args.only.split(","):
        for lib in WORKERS["sweep"]:
            r = run_worker("sweep", lib, args)
            if r is None:
                continue
            print(f"\nsweep ({lib}): forward ms per order; ratio = auto / min(dense, ltr, rtl)")
            print(
                f"  {'batch':>6}{'plan':>11}{'auto':>10}{'ltr':>10}{'rtl':>10}{'dense':>10}"
                f"{'ratio':>8}"
            )
            worst = 0.0
            for batch, row in r["rows"].items():
                best = min(row[k] for k in ("ltr", "rtl", "dense") if row[k] is not None)
                ratio = row["auto"] / best
                worst = max(worst, ratio)
                cells = [f"{row['auto'] * 1e3:>10.3f}"] + [
                    f"{'= auto':>10}"
                    if row.get("same") == k
                    else (f"{row[k] * 1e3:>10.3f}" if row[k] is not None else f"{'skip':>10}")
                    for k in ("ltr", "rtl", "dense")
                ]
                print(f"  {batch:>6}{row['plan']:>11}" + "".join(cells) + f"{ratio:>7.2f}x")
            print(
                f"  (skip: the cost model puts that order above {SKIP_FACTOR}x the plan's "
                "FLOPs, so it is not timed; = auto: the plan is that order, timed once)"
            )
            print(
                f"  target: auto never > 1.10x the better of dense and core-by-core: worst "
                f"{worst:.2f}x {'OK' if worst <= 1.10 else 'MISSED'}"
            )


def _ratio_line(results, a, b, target):
    if results.get(a) and results.get(b):
        ratio = results[a]["t"] / results[b]["t"]
        print(
            f"  target: {a} <= {target}x {b}: {ratio:.2f}x {'OK' if ratio <= target else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
