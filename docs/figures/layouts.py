"""The two TT-matrix layouts of a 512 x 512 weight, drawn as tensor networks.

Run by the ``plot`` directive of ``docs/concepts.md`` when the docs are built (and on its own:
``python docs/figures/layouts.py`` shows it). Each core is a box; a horizontal line between two
boxes is a TT bond (rank r); a line going up is an output (row) factor m_k, a line going down an
input (column) factor n_k. Parameter counts are computed with ttdecomp's own calculator.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

import ttdecomp as tt

RANK = 8


def draw(ax, cores, title):
    """``cores``: one ``(m_k, n_k)`` pair per core; 1 means the leg is absent."""
    for k, (m, n) in enumerate(cores):
        x = 1.6 * k
        ax.add_patch(plt.Rectangle((x - 0.4, -0.4), 0.8, 0.8, fc="#dbe8f7", ec="#1f4e8c", lw=1.5))
        ax.text(x, 0, f"G{k + 1}", ha="center", va="center", fontsize=10)
        if m > 1:
            ax.plot([x, x], [0.4, 1.1], color="#c0392b", lw=2)
            ax.text(x, 1.25, f"m={m}", ha="center", va="bottom", color="#c0392b", fontsize=9)
        if n > 1:
            ax.plot([x, x], [-0.4, -1.1], color="#1e8449", lw=2)
            ax.text(x, -1.25, f"n={n}", ha="center", va="top", color="#1e8449", fontsize=9)
        if k:
            ax.plot([x - 1.2, x - 0.4], [0, 0], color="0.3", lw=1.5)
            ax.text(x - 0.8, 0.1, f"r={RANK}", ha="center", va="bottom", fontsize=8, color="0.3")
    ranks = [1] + [RANK] * (len(cores) - 1) + [1]
    n_params = sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(cores))
    ax.set_title(f"{title}: {len(cores)} cores, {n_params:,} parameters", fontsize=11)
    ax.set_xlim(-0.9, 1.6 * 6 - 0.7)
    ax.set_ylim(-1.9, 1.9)
    ax.set_aspect("equal")
    ax.axis("off")
    return n_params


def main():
    row, col = (8, 8, 8), (8, 8, 8)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.2))
    interleaved = draw(axes[0], list(zip(row, col)), "interleaved (classic TT-matrix)")
    split = draw(
        axes[1],
        [(1, n) for n in col] + [(m, 1) for m in row],
        "split (TT-LoRA): input factors first, output factors after",
    )
    # the same numbers from the library's calculator
    assert interleaved == tt.tt_matrix_n_params(row, col, RANK)
    assert split == tt.tt_matrix_n_params((1, 1, 1, *row), (*col, 1, 1, 1), RANK)
    fig.text(
        0.5,
        0.01,
        "red: output (row) factors m_k   green: input (column) factors n_k   "
        f"grey: TT bonds; W is {8**3} x {8**3} = {8**6:,} entries",
        ha="center",
        fontsize=9,
    )
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.06, hspace=0.35)
    return fig, split


if __name__ == "__main__":
    main()
    plt.show()
