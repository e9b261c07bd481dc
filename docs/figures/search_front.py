"""The Pareto front of the benchmarks page: adapter parameters against validation accuracy.

The points are the 9 trials ``python benchmarks/bench_search.py --parts pareto`` ran on
2026-12-02 04:58-05:58 UTC (MiniLM, the packaged 1,000 / 300 / 600 tweets, 4 epochs, one
core): a grid of 8 TT-LoRA configurations and LoRA r=8, in one two-objective study. The
labels give the test accuracy of the re-trained front points and of LoRA's best; rerun the
script to measure your machine.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

# (configuration, adapter parameters, validation accuracy), in trial order
TRIALS = (
    ("tt-lora [8,6,8,8,6,8] r4 lr2e-2", 6144, 0.85),
    ("tt-lora [24,16,16,24] r4 lr1e-2", 8448, 0.8467),
    ("tt-lora [24,16,16,24] r1 lr2e-2", 960, 0.5167),
    ("tt-lora [8,6,8,8,6,8] r1 lr1e-2", 528, 0.81),
    ("lora r8 lr1e-3", 73728, 0.92),
    ("tt-lora [8,6,8,8,6,8] r4 lr1e-2", 6144, 0.92),
    ("tt-lora [24,16,16,24] r4 lr2e-2", 8448, 0.7367),
    ("tt-lora [24,16,16,24] r1 lr1e-2", 960, 0.6233),
    ("tt-lora [8,6,8,8,6,8] r1 lr2e-2", 528, 0.85),
)
FRONT = (8, 5)  # trial numbers on the front, fewest parameters first
TEST = {8: 0.8483, 5: 0.9100, 4: 0.9183}  # re-trained once, evaluated once on test


def main():
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for method, colour, name in (
        ("tt-lora", "tab:blue", "TT-LoRA"),
        ("lora", "tab:orange", "LoRA"),
    ):
        pts = [(p, 100 * v) for label, p, v in TRIALS if label.startswith(method + " ")]
        ax.scatter(*zip(*pts), color=colour, label=name, zorder=3)
    front = [(TRIALS[i][1], 100 * TRIALS[i][2]) for i in FRONT]
    ax.step(*zip(*front), where="post", color="tab:blue", alpha=0.5, label="Pareto front")
    for number, acc in TEST.items():
        _, p, v = TRIALS[number]
        ax.annotate(f"test {100 * acc:.1f}%", (p, 100 * v), textcoords="offset points",
                    xytext=(6, -12), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(300, 4e5)
    ax.set_xlabel("adapter parameters (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("ttdecomp search --pareto: MiniLM on tweets, 4 epochs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig, None


if __name__ == "__main__":
    main()
    plt.show()
