"""Plan a TT compression before touching a weight: factorisation, ranks, cost, error.

:func:`plan` picks the TT-matrix factorisation and the (possibly non-uniform) ranks for
one ``(out_features, in_features)`` weight within a parameter budget or an error target;
:func:`plan_model` does it for every linear layer of a model under one global budget,
reading a ``.safetensors`` checkpoint one tensor at a time.

How it chooses
--------------
*With a weight* it minimises the TT-SVD error. For a fixed factorisation, the singular
values of every unfolding ``A_k`` of the reshaped weight bound the TT-SVD error
(Oseledets 2011, Thm. 2.2)::

    ‖W − TT‖²_F ≤ Σ_k tail_k(r_k)²,    tail_k(r)² = Σ_{i>r} σ_i(A_k)²,

and ``max_k tail_k(r_k)`` is a lower bound for any TT with those ranks. The planner
grows the ranks one bond at a time, always taking the step with the largest reduction of
this bound per added parameter, so the rank profile is non-uniform wherever the spectra
are. The path is the same whatever the budget, and the plan for a budget is the longest
prefix that fits: more budget gives elementwise larger ranks and a smaller bound. The
factorisation with the smallest bound wins; the achieved error is then measured with one
real :func:`~ttdecomp.tt_svd`.

*Without a weight* it maximises capacity, the sum of the ranks, growing the cheapest
bond first; FLOPs of ``apply()`` break ties. Sums of ranks are only comparable between
trains with the same number of bonds, so without a weight the core count is
:func:`~ttdecomp.shapes.tensorize`'s default unless ``n_cores`` is given; with a weight
fewer cores are searched too (for the split layout down to the two-core train, which is
the truncated SVD, i.e. LoRA-shaped). The bound is exact for two cores and pessimistic by
up to ``sqrt(d − 1)`` for ``d`` cores, so with a weight the planner leans towards few
cores; fix ``n_cores`` to compare like with like. With a weight the interleaved candidates
also hold every two-core shape ``(a, c) × (b, d)`` under which the weight is exactly
``kron(A, B)`` with ``A`` (a × b) and ``B`` (c × d), rectangular or not: each divisor pair is
screened by a few random 2 × 2 minors of the rearranged weight (microseconds), and a shape
that passes is planned at rank 1, ``a·b + c·d`` parameters, with round-off error.

Layout: :mod:`._records` (:class:`Plan`, :class:`ModelPlan`), :mod:`._checks` (argument
checks), :mod:`._budget` (:func:`parse_budget`), :mod:`._candidates` (factorisations),
:mod:`._ranks` (the rank greedies),
:mod:`._spectra` (unfolding spectra), :mod:`._plan` (:func:`plan`), :mod:`._checkpoint`
(reading checkpoints) and :mod:`._model_plan` (:func:`plan_model`).

Complexity: shapes only, ``O(C · S · d)`` for ``C`` candidate factorisations and ``S``
rank steps (milliseconds); with a weight, one Gram eigen-decomposition per distinct
unfolding, ``O(p · M · N)`` for an unfolding with ``p`` rows (its smaller side).
"""

from __future__ import annotations

from ._budget import parse_budget
from ._checkpoint import DEFAULT_EXCLUDE
from ._model_plan import plan_model
from ._plan import plan
from ._records import ModelPlan, Plan

__all__ = ["DEFAULT_EXCLUDE", "ModelPlan", "Plan", "parse_budget", "plan", "plan_model"]
