"""Core benchmark: ttdecomp's TT-SVD and rounding against tensorly, teneva, torchtt, tntorch.

Run from the repository root::

    python benchmarks/bench_core.py            # all libraries and workloads, 2 rounds x 5 runs
    python benchmarks/bench_core.py --runs 5 --libs ttdecomp,teneva --workloads a,b

Every library runs in its own subprocess (numpy's OpenBLAS pool and torch's OpenMP pool
contend on small machines, see DESIGN.md "Thread pools"), each with the same thread count
(``--threads``, default 2) and with ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` unset, so
OpenBLAS picks its native kernel; the kernel threadpoolctl reports is printed per library.
Each subprocess makes one warm-up call and ``--runs`` (≥ 5) timed calls per workload; the
libraries run ``--rounds`` times, interleaved, and the median over all timed calls is
reported (a burst of load from other processes then does not hit one library only). The
same data (built from fixed seeds with numpy) goes to every library. Workloads:

(a)  TT-SVD of a 4^10 tensor: a random rank-8 TT plus 1e-6 relative noise, max rank 8
(b)  the same tensor, eps = 1e-3 (no rank cap)
(c)  a random 1024 x 1024 matrix as a (4^5) x (4^5) interleaved TT-matrix, max rank 16
(d1) rounding the sum of two random d=12, n=4, rank-20 TTs to eps = 1e-8
(d2) the same sum rounded to max rank 10 (and eps = 1e-8)

The table shows each library's median time, its achieved relative Frobenius error
(computed densely after timing) and its time as a ratio to the fastest *peer* (ttdecomp
excluded) on that workload. Where a peer's API cannot express the requested truncation,
its nearest equivalent is used and the note column says so. The targets for ttdecomp
(issue 2): (a), (b) ≤ 0.15, (c) ≤ 0.5, (d) ≤ 1.0.
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

LIBS = ("ttdecomp", "tensorly", "teneva", "torchtt", "tntorch")
WORKLOADS = ("a", "b", "c", "d1", "d2")
TARGETS = {"a": 0.15, "b": 0.15, "c": 0.5, "d1": 1.0, "d2": 1.0}
TITLES = {
    "a": "TT-SVD 4^10, rank-8 TT + 1e-6 noise, max rank 8",
    "b": "TT-SVD 4^10, rank-8 TT + 1e-6 noise, eps=1e-3",
    "c": "TT-matrix 1024x1024 random, (4^5)x(4^5) interleaved, max rank 16",
    "d1": "round(X + Y), d=12 n=4 r=20 each, eps=1e-8",
    "d2": "round(X + Y), d=12 n=4 r=20 each, max rank 10 (eps=1e-8)",
}
D, N, R_TT, NOISE = 10, 4, 8, 1e-6
EPS_B = 1e-3
M_SHAPE = (4, 4, 4, 4, 4)
R_MAT = 16
DR, NR, RR, EPS_D, RMAX_D = 12, 4, 20, 1e-8, 10


# ----------------------------------------------------------------------- data (numpy)
def _np():
    import numpy as np

    return np


def full_from_cores(cores):
    """Dense tensor from 3-D numpy cores (r, n, r')."""
    np = _np()
    out = cores[0].reshape(-1, cores[0].shape[-1])
    shape = [cores[0].shape[1]]
    for c in cores[1:]:
        out = out @ c.reshape(c.shape[0], -1)
        out = out.reshape(-1, c.shape[-1])
        shape.append(c.shape[1])
    return np.ascontiguousarray(out.reshape(shape))


def matrix_from_cores(cores):
    """Dense (M, N) matrix from 4-D numpy cores (r, m, n, r')."""
    np = _np()
    d = len(cores)
    t = full_from_cores([c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores])
    t = t.reshape([s for c in cores for s in c.shape[1:3]])  # (m1, n1, ..., md, nd)
    t = np.transpose(t, [2 * k for k in range(d)] + [2 * k + 1 for k in range(d)])
    rows = math.prod(c.shape[1] for c in cores)
    return t.reshape(rows, -1)


def random_cores(rng, d, n, r, scale=True):
    ranks = [1] + [r] * (d - 1) + [1]
    cores = []
    for k in range(d):
        c = rng.standard_normal((ranks[k], n, ranks[k + 1]))
        if scale:
            c /= math.sqrt(n * ranks[k])
        cores.append(c)
    return cores


def make_tensor():
    """(a), (b): a random rank-8 TT of shape 4^10 plus 1e-6 relative Gaussian noise."""
    np = _np()
    rng = np.random.default_rng(20260101)
    t = full_from_cores(random_cores(rng, D, N, R_TT))
    noise = rng.standard_normal(t.shape)
    return t + NOISE * np.linalg.norm(t) / np.linalg.norm(noise) * noise


def make_matrix():
    np = _np()
    return np.random.default_rng(20260102).standard_normal((1024, 1024))


def make_pair():
    """(d): cores of two random d=12, n=4, rank-20 trains."""
    np = _np()
    rng = np.random.default_rng(20260103)
    return random_cores(rng, DR, NR, RR), random_cores(rng, DR, NR, RR)


def interleave(w, shape=M_SHAPE):
    """(M, N) → (m1 n1, ..., md nd), the classic TT-matrix tensorisation."""
    np = _np()
    d = len(shape)
    t = w.reshape(shape + shape)
    t = np.transpose(t, [i for k in range(d) for i in (k, d + k)])
    return t.reshape([m * m for m in shape])


# ----------------------------------------------------------------------- per-library calls
# Each returns {workload: (prepare() -> state, run(state) -> result, to_numpy(result), note)}.
# prepare() runs before every timed call, outside the timer (copies for in-place APIs).


def _np_cores(cores):
    np = _np()
    return [np.asarray(c.detach().cpu().numpy() if hasattr(c, "detach") else c) for c in cores]


def lib_ttdecomp():
    import ttdecomp as tt

    A = make_tensor()
    W = make_matrix()
    x, y = (tt.TensorTrain(c) for c in make_pair())
    s = x + y

    def res(r):
        return _np_cores(r.cores), getattr(r, "error_bound", None)

    return {
        "a": (lambda: A, lambda a: tt.tt_svd(a, R_TT), res, ""),
        "b": (lambda: A, lambda a: tt.tt_svd(a, eps=EPS_B), res, ""),
        "c": (
            lambda: W,
            lambda w: tt.tt_svd(w, R_MAT, row_shape=M_SHAPE, col_shape=M_SHAPE),
            res,
            "",
        ),
        "d1": (lambda: s, lambda v: tt.round(v, eps=EPS_D), res, ""),
        "d2": (lambda: s, lambda v: tt.round(v, RMAX_D, eps=EPS_D), res, ""),
    }


def lib_tensorly():
    import tensorly as tl
    from tensorly.decomposition import tensor_train, tensor_train_matrix

    tl.set_backend("numpy")
    A = make_tensor()
    W = make_matrix()
    ranks_a = [1] + [R_TT] * (D - 1) + [1]
    ranks_c = [1] + [R_MAT] * (len(M_SHAPE) - 1) + [1]

    def res(r):
        return _np_cores(r.factors), None

    return {
        "a": (lambda: A, lambda a: tensor_train(a, ranks_a), res, ""),
        "b": (
            lambda: A,
            lambda a: tensor_train(a, ranks_a),
            res,
            "no eps in tensorly: max rank 8 (the ranks eps=1e-3 gives)",
        ),
        "c": (
            lambda: W,
            lambda w: tensor_train_matrix(w.reshape(M_SHAPE + M_SHAPE), ranks_c),
            res,
            "",
        ),
    }


def lib_teneva():
    import teneva

    np = _np()
    A = make_tensor()
    W = make_matrix()
    x, y = make_pair()
    s = teneva.add(x, y)
    e_abs = EPS_B * float(np.linalg.norm(A)) / math.sqrt(D - 1)

    def res(r):
        return _np_cores(r), None

    def res_m(r):
        return [c.reshape(c.shape[0], M_SHAPE[k], M_SHAPE[k], c.shape[-1]) for k, c in
                enumerate(_np_cores(r))], None  # fmt: skip

    return {
        "a": (lambda: A, lambda a: teneva.svd(a, e=0.0, r=R_TT), res, ""),
        "b": (
            lambda: A,
            lambda a: teneva.svd(a, e=e_abs),
            res,
            "teneva.svd's e is absolute per step: e = eps*||A||/sqrt(d-1)",
        ),
        "c": (
            lambda: W,
            lambda w: teneva.svd(interleave(w), e=0.0, r=R_MAT),
            res_m,
            "interleaving by numpy transpose (svd_matrix is QTT-only)",
        ),
        "d1": (
            lambda: s,
            lambda v: teneva.truncate(v, e=EPS_D),
            res,
            "teneva.truncate (eigh-based)",
        ),
        "d2": (
            lambda: s,
            lambda v: teneva.truncate(v, e=EPS_D, r=RMAX_D),
            res,
            "teneva.truncate (eigh-based)",
        ),
    }


def lib_torchtt():
    import torch
    import torchtt

    A = torch.from_numpy(make_tensor())
    W = torch.from_numpy(make_matrix())
    x, y = (torchtt.TT([torch.from_numpy(c) for c in cs]) for cs in make_pair())
    s = x + y

    def res(r):
        return _np_cores(r.cores), None

    return {
        "a": (lambda: A, lambda a: torchtt.TT(a, eps=1e-14, rmax=R_TT), res, "eps=1e-14"),
        "b": (lambda: A, lambda a: torchtt.TT(a, eps=EPS_B), res, ""),
        "c": (
            lambda: W,
            lambda w: torchtt.TT(
                w.reshape(M_SHAPE + M_SHAPE), [(m, m) for m in M_SHAPE], eps=1e-14, rmax=R_MAT
            ),
            res,
            "eps=1e-14",
        ),
        "d1": (lambda: s, lambda v: v.round(EPS_D), res, ""),
        "d2": (lambda: s, lambda v: v.round(EPS_D, RMAX_D), res, ""),
    }


def lib_tntorch():
    import tntorch as tn
    import torch

    A = torch.from_numpy(make_tensor())
    W = torch.from_numpy(make_matrix())
    x, y = (tn.Tensor([torch.from_numpy(c) for c in cs]) for cs in make_pair())
    s = x + y

    def res(r):
        if isinstance(r, tn.Tensor):  # the eps path may leave Tucker factors: fold them in
            r = r.decompress_tucker_factors()
        return _np_cores(r.cores), None

    return {
        "a": (lambda: A, lambda a: tn.Tensor(a, ranks_tt=R_TT), res, ""),
        "b": (
            lambda: A,
            lambda a: tn.Tensor(a, eps=EPS_B),
            res,
            "eps path = full-rank TT then round (+ Tucker rounding)",
        ),
        "c": (
            lambda: W,
            lambda w: tn.TTMatrix(w, [R_MAT] * (len(M_SHAPE) - 1), list(M_SHAPE), list(M_SHAPE)),
            res,
            "",
        ),
        # round_tt works in place: a fresh clone per call, made outside the timer
        "d1": (lambda: s.clone(), lambda v: v.round_tt(EPS_D) or v, res, "round_tt"),
        "d2": (lambda: s.clone(), lambda v: v.round_tt(EPS_D, RMAX_D) or v, res, "round_tt"),
    }


# ----------------------------------------------------------------------- worker
def _reference(w):
    """Dense reference for the error of workload ``w`` (numpy)."""
    if w in ("a", "b"):
        return make_tensor()
    if w == "c":
        return make_matrix()
    x, y = make_pair()
    return full_from_cores(x) + full_from_cores(y)


def _blas_info():
    try:
        import threadpoolctl

        return [
            {k: p.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
            for p in threadpoolctl.threadpool_info()
        ]
    except Exception as exc:  # pragma: no cover - informational only
        return [{"error": repr(exc)}]


def worker(lib: str, workloads: list[str], runs: int, threads: int) -> dict:
    np = _np()
    if lib in ("torchtt", "tntorch"):
        import torch

        torch.set_num_threads(threads)
    table = globals()[f"lib_{lib}"]()
    out = {"lib": lib, "blas": _blas_info(), "results": {}}
    for w in workloads:
        if w not in table:
            continue
        prepare, run, to_np, note = table[w]
        state = prepare()
        result = run(state)  # warm-up
        times = []
        for _ in range(runs):
            state = prepare()
            t0 = time.perf_counter()
            result = run(state)
            times.append(time.perf_counter() - t0)
        cores, bound = to_np(result)
        ref = _reference(w)
        dense = matrix_from_cores(cores) if cores[0].ndim == 4 else full_from_cores(cores)
        err = float(np.linalg.norm(dense.reshape(ref.shape) - ref) / np.linalg.norm(ref))
        out["results"][w] = {
            "times": times,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "err": err,
            "bound": bound,
            "max_rank": max(int(c.shape[-1]) for c in cores),
            "note": note,
        }
    out["blas"] = _blas_info()  # after the libraries loaded theirs
    return out


# ----------------------------------------------------------------------- driver
def child_env(threads: int) -> dict:
    env = dict(os.environ)
    # the two together (see the environment notes): with them unset OpenBLAS picks its
    # native kernel for this CPU
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_lib(lib, workloads, runs, threads) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        lib,
        "--workloads",
        ",".join(workloads),
        "--runs",
        str(runs),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"lib": lib, "error": " | ".join(tail), "results": {}}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_rounds(outs: list[dict]) -> dict:
    """One library's rounds as one result: the median over every timed run of every round."""
    good = [o for o in outs if "error" not in o]
    if not good:
        return outs[0]
    merged = dict(good[-1], results={})
    for w in good[-1]["results"]:
        rs = [o["results"][w] for o in good if w in o["results"]]
        times = [t for r in rs for t in r["times"]]
        merged["results"][w] = dict(
            rs[-1], times=times, median_s=statistics.median(times), min_s=min(times)
        )
    return merged


def print_table(all_out: list[dict], workloads: list[str], runs: int, threads: int) -> None:
    print(f"ttdecomp core benchmark: median of {runs} timed runs (each subprocess warms up once),")
    print(f"{threads} threads per subprocess, one subprocess per library and round, rounds")
    print("interleaved; OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset. ttdecomp caps numpy's BLAS at")
    print("1 thread inside its small-factor sweeps (threadpoolctl, see ttdecomp._backend).")
    for o in all_out:
        if "error" in o:
            print(f"  {o['lib']:9s} FAILED: {o['error']}")
            continue
        kinds = ", ".join(
            f"{b.get('internal_api')} {b.get('architecture')} x{b.get('num_threads')}"
            for b in o["blas"]
        )
        print(f"  {o['lib']:9s} thread pools: {kinds}")
    verdicts = []
    for w in workloads:
        rows = [(o["lib"], o["results"][w]) for o in all_out if w in o.get("results", {})]
        peers = [r["median_s"] for lib, r in rows if lib != "ttdecomp"]
        best = min(peers) if peers else float("nan")
        print()
        print(f"({w}) {TITLES[w]}")
        print(f"  {'library':9s} {'median ms':>10s} {'rel. error':>11s} {'bound':>9s} "
              f"{'max r':>5s} {'/fastest peer':>13s}  note")  # fmt: skip
        for lib, r in rows:
            bound = "" if r["bound"] is None else f"{r['bound']:.2e}"
            print(
                f"  {lib:9s} {1e3 * r['median_s']:10.2f} {r['err']:11.2e} {bound:>9s} "
                f"{r['max_rank']:5d} {r['median_s'] / best:13.3f}  {r['note']}"
            )
            if lib == "ttdecomp":
                ratio = r["median_s"] / best
                verdict = "MET" if ratio <= TARGETS[w] else "MISSED"
                verdicts.append(f"({w}) ratio {ratio:.3f} vs target <= {TARGETS[w]}: {verdict}")
    print()
    print("ttdecomp targets (time / fastest peer):")
    for v in verdicts:
        print("  " + v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="subprocess rounds per library")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    if args.runs < 5 and not args.worker:
        p.error("--runs must be at least 5")
    if args.worker:
        print(json.dumps(worker(args.worker, workloads, args.runs, args.threads)))
        return 0
    libs = [lib for lib in args.libs.split(",") if lib]
    # rounds interleave the libraries in time, so that a burst of load from other
    # processes on a shared machine does not fall on one library only
    rounds = [
        [run_lib(lib, workloads, args.runs, args.threads) for lib in libs]
        for _ in range(args.rounds)
    ]
    all_out = [merge_rounds([rnd[i] for rnd in rounds]) for i in range(len(libs))]
    print_table(all_out, workloads, args.runs * args.rounds, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(all_out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
