"""Median times of the core benchmark, per workload and library (the benchmarks page's table).

The numbers are those ``python benchmarks/bench_core.py --threads 1 --rounds 1 --runs 5``
printed on 2026-12-02 05:49 UTC (2-core machine, one other job on the other core), the
1-thread rows of the benchmarks page's table; rerun the script to measure your machine.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

LIBS = ("ttdecomp", "tensorly", "teneva", "torchTT", "tntorch")
# workload -> median ms per library (None: the library has no such operation)
MS = {
    "(a) TT-SVD 4^10,\nmax rank 8": (21.42, 339.08, 294.53, 232.35, 893.83),
    "(b) TT-SVD 4^10,\neps=1e-3": (25.67, 313.12, 284.55, 237.16, 1223.80),
    "(c) TT-matrix\n1024x1024, rank 16": (44.20, 745.14, 712.47, 887.34, 288.05),
    "(d1) round(X+Y),\neps=1e-8": (6.22, None, 8.79, 18.89, 18.71),
    "(d2) round(X+Y),\nmax rank 10": (7.89, None, 8.32, 9.90, 11.87),
}


def main():
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.16
    x = np.arange(len(MS))
    for i, lib in enumerate(LIBS):
        values = [row[i] if row[i] is not None else np.nan for row in MS.values()]
        ax.bar(x + (i - 2) * width, values, width, label=lib)
    ax.set_yscale("log")
    ax.set_xticks(x, list(MS), fontsize=8)
    ax.set_ylabel("median time (ms, log scale)")
    ax.set_title("TT-SVD and rounding, one thread per library (lower is better)", fontsize=10)
    ax.legend(fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.subplots_adjust(left=0.09, right=0.99, top=0.9, bottom=0.3)
    return fig, None


if __name__ == "__main__":
    main()
    plt.show()
