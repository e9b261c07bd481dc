"""A whole model under one budget: :func:`plan_model`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .. import counts
from .._validation import check_eps
from ..errors import InvalidInputError, ShapeError, TTError
from ..shapes import MAX_PRIME
from ._candidates import Candidate, candidates, extra_candidates, min_tt
from ._checkpoint import Source
from ._checks import check_budget, check_opt_int, check_plan_layout, check_shape
from ._plan import Choice, build_plan, choose, with_achieved
from ._ranks import global_greedy
from ._records import ModelPlan, Plan
from ._spectra import Spectra, kronecker_shapes

__all__ = ["plan_model"]


def _progress(items: list[Any], enabled: bool, desc: str) -> Iterator[Any]:
    if not enabled:
        return iter(items)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return iter(tqdm(items, desc=desc, unit="layer", leave=False))


def plan_model(
    layers: Mapping[str, Any] | str | os.PathLike,
    budget: int | float | None = None,
    *,
    eps: float | None = None,
    pattern: str | None = None,
    layout: str | None = None,
    n_cores: int | None = None,
    max_rank: int | None = None,
    batch: int | None = None,
    lora_rank: int = 8,
    use_weights: bool = True,
    verify: bool = True,
    pad: bool = False,
    max_prime: int = MAX_PRIME,
    progress: bool = False,
    allocation: str = "global",
) -> ModelPlan:
    """Plan every layer of a model under one global budget.

    Parameters
    ----------
    layers : mapping or path
        ``name -> (out_features, in_features)`` or ``name -> weight``, or a path to a
        ``.safetensors`` file or a folder of shards. Checkpoints are read one tensor at a
        time, so a model larger than memory works; by default every 2-D floating tensor
        except embeddings and the LM head (:data:`DEFAULT_EXCLUDE`) is planned.
    budget : int or float, optional
        Global parameter budget (int), or a fraction of the planned layers' total dense size
        (float in ``(0, 1)``).
    eps : float, optional
        Per-layer relative error target (with weights) instead of, or within, the budget.
    pattern : str, optional
        Regex (``re.search``) selecting layer names, e.g. ``"q_proj|v_proj"``; a pattern
        that selects nothing is an error.
    layout, n_cores, max_rank, batch, lora_rank, pad, max_prime
        As in :func:`plan`, for every layer (``layout`` defaults to ``"auto"`` with weights,
        where each layer gets the factorisation with the smallest bound for its share, and
        ``"split"`` by shapes alone).
    use_weights : bool
        Minimise the TT-SVD error using the weights (default). ``False`` plans by shapes
        alone (capacity), reading only the checkpoint's header.
    verify : bool
        With weights, run one TT-SVD per layer to measure the achieved error.
    progress : bool
        Show a tqdm progress bar on stderr (needs tqdm). Off by default.
    allocation : {"global", "proportional"}
        With weights and a budget: ``"global"`` (default) moves parameters between layers by
        one greedy on the summed squared relative error bounds; ``"proportional"`` gives
        every layer its share of the budget in proportion to its dense size (the same
        fraction everywhere) and plans each layer within it. The global greedy starves
        layers whose spectra are flat, which can cost more at the model's output than it
        saves elsewhere (see the compression guide).

    Returns
    -------
    ModelPlan
        ``n_params ≤ budget``. With weights, the budget goes wherever it reduces the sum of
        the layers' squared relative error bounds most per parameter (one greedy over all
        layers, on each layer's best factorisation for its proportional share); by shapes
        alone, each layer gets its share of the budget in proportion to its dense size.

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    InvalidInputError
        A file that is not a readable safetensors checkpoint, a pattern that selects
        nothing, a budget below the sum of the smallest TT-matrices (the message says the
        minimum), and the errors of :func:`plan`.

    Examples
    --------
    >>> mp = plan_model({"q": (768, 768), "ffn": (3072, 768)}, budget=0.01)
    >>> mp.n_params <= 0.01 * (768 * 768 + 3072 * 768)
    True
    >>> [r["layer"] for r in mp.records()]
    ['q', 'ffn']
    """
    eps = check_eps(eps)
    max_rank = check_opt_int(max_rank, "max_rank")
    batch_n = check_opt_int(batch, "batch") or 1
    lora_rank = check_opt_int(lora_rank, "lora_rank") or 8
    src = Source(layers, pattern)
    with_weights = use_weights and all(has_w for _, (_, has_w) in src.entries)
    layout = check_plan_layout(layout, with_weights)
    if allocation not in ("global", "proportional"):
        raise InvalidInputError(
            f"allocation must be 'global' or 'proportional', got {allocation!r}."
        )
    if eps is not None and not with_weights:
        raise InvalidInputError(
            "eps is a target for the TT-SVD error and needs the weights; pass weights (or a "
            "checkpoint with use_weights=True), or a budget to plan by shapes alone."
        )
    # shapes and candidates of every layer first: all checks before any work
    shapes: dict[str, tuple[int, int]] = {}
    cands: dict[str, list[Candidate]] = {}
    by_shape: dict[tuple[int, int], list[Candidate]] = {}  # models repeat a few shapes
    for name, (shape, _) in src.entries:
        try:
            m, n = check_shape(shape)
            if (m, n) not in by_shape:
                by_shape[m, n] = candidates(
                    m, n, layout, n_cores, with_weights, max_rank, pad, max_prime
                )
            cands[name] = by_shape[m, n]
        except TTError as exc:
            raise type(exc)(f"layer {name!r}: {exc}") from None
        shapes[name] = (m, n)
    dense_total = sum(m * n for m, n in shapes.values())
    budget_n = check_budget(budget, dense_total, "the planned layers")
    if budget_n is None and eps is None:
        raise InvalidInputError("give a global budget, or eps=... with weights.")
    need = sum(min_tt(c).min_params for c in cands.values())
    if budget_n is not None and need > budget_n:
        each = {name: min_tt(c).min_params for name, c in cands.items()}
        listed = ", ".join(f"{name} {n:,}" for name, n in list(each.items())[:6])
        more = f" and {len(each) - 6} more" if len(each) > 6 else ""
        raise InvalidInputError(
            f"budget {budget_n:,} is below {need:,}, the sum of the smallest TT-matrices "
            f"(all ranks 1) of the {len(shapes)} selected layers (each layer's minimum: "
            f"{listed}{more}); raise the budget to at least {need:,} or select fewer layers "
            "(pattern=...)."
        )

    def share(name: str) -> int | None:
        """The layer's smallest TT plus its part of the rest, by dense size (sums to <= budget)."""
        if budget_n is None:
            return None
        m, n = shapes[name]
        return min_tt(cands[name]).min_params + (budget_n - need) * m * n // dense_total

    names = list(shapes)
    if not with_weights:
        result = ModelPlan(budget=budget_n, eps=eps)
        memo: dict[tuple[int, int, int | None], Plan] = {}
        for name in _progress(names, progress, "planning"):
            key = (*shapes[name], share(name))
            if key not in memo:
                choice = choose(cands[name], key[2], None, None, batch_n)
                memo[key] = build_plan(
                    shapes[name], choice, key[2], None, batch_n, lora_rank, False
                )
            result.plans[name] = memo[key]
        return result

    # with weights: each layer's factorisation for its share, then one global greedy
    chosen: dict[str, Choice] = {}
    gains: dict[str, list[np.ndarray]] = {}
    for name in _progress(names, progress, "spectra"):
        w = src.weight(name)
        _check_weight(w, name, shapes[name])
        c0 = cands[name][0]
        padded = (math.prod(c0.row_shape), math.prod(c0.col_shape))
        layer_cands = cands[name]
        if padded != shapes[name]:
            w = np.pad(w, ((0, padded[0] - w.shape[0]), (0, padded[1] - w.shape[1])))
        elif layout != "split" and n_cores in (None, 2):  # exact Kronecker factors, as in plan
            layer_cands = extra_candidates(layer_cands, kronecker_shapes(w), max_rank)
        spectra = Spectra(w)
        chosen[name] = choose(layer_cands, share(name), eps, spectra, batch_n)
        gains[name] = spectra.gains(chosen[name].cand)
        del w, spectra
    if budget_n is not None and eps is None and allocation == "global":
        ranks = global_greedy({k: chosen[k].cand for k in names}, gains, budget_n)
        for name in names:
            c = chosen[name].cand
            r = ranks[name]
            bound = sum(float(g[rk:].sum()) for g, rk in zip(gains[name], r[1:-1]))
            chosen[name] = Choice(c, r, counts.tt_n_params(c.modes, list(r)), bound)
    result = ModelPlan(budget=budget_n, eps=eps)
    for name in _progress(names, progress and verify, "verifying"):
        p = build_plan(shapes[name], chosen[name], budget_n, eps, batch_n, lora_rank, True)
        if verify:
            w = src.weight(name)
            p = with_achieved(p, p.decompose(w), w)
        result.plans[name] = p
    return result


def _check_weight(w: np.ndarray, name: str, shape: tuple[int, int]) -> None:
    if w.shape != shape:
        raise ShapeError(f"layer {name!r}: weight has shape {w.shape}, expected {shape}.")
    if not np.all(np.isfinite(w)):
        raise InvalidInputError(f"layer {name!r}: the weight contains NaN or Inf.")
