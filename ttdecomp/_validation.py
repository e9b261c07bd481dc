"""Argument checks shared by the core modules: ranks, tolerances, cores.

Every check raises before any work is done, with a message that says what was given,
what was expected and how to fix it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence, Set
from typing import Any

import array_api_compat

from ._backend import get_namespace
from .errors import (
    BackendMismatchError,
    InvalidInputError,
    RankClippedWarning,
    RankError,
    ShapeError,
    TTWarning,
)

__all__ = [
    "attainable_ranks",
    "check_bool",
    "check_choice",
    "check_cores",
    "check_eps",
    "check_error_bound",
    "check_finite_cores",
    "check_int",
    "check_lapack_dtype",
    "check_matrix_shape",
    "check_operands",
    "check_real",
    "clip_ranks",
    "matrix_cores",
    "matrix_shapes",
    "normalize_ranks",
    "require_packages",
    "warn_unmet_eps",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def attainable_ranks(shape: Sequence[int]) -> tuple[int, ...]:
    """Largest possible TT ranks for a tensor of ``shape``: ``min(∏ left modes, ∏ right modes)``.

    Returns ``d + 1`` values including the boundary ones.

    Examples
    --------
    >>> attainable_ranks((4, 4, 4, 4))
    (1, 4, 16, 4, 1)
    """
    left, right = [1], [1]  # running products from each end: linear in d
    for m, n in zip(shape[:-1], reversed(shape[1:])):
        left.append(left[-1] * m)
        right.append(right[-1] * n)
    interior = [min(a, b) for a, b in zip(left[1:], reversed(right[1:]))]
    return (1, *interior, 1)


def normalize_ranks(ranks: Any, d: int, *, name: str = "ranks") -> tuple[int, ...] | None:
    """Turn a user's ``ranks`` into a tuple of ``d + 1`` ints with boundary ones.

    Accepted forms: ``None`` (no rank cap), a positive int (the same cap on every
    interior bond), a sequence of ``d + 1`` positive ints whose first and last entries
    are 1, or a sequence of ``d - 1`` interior ranks.
    """
    if ranks is None:
        return None
    if _is_int(ranks):
        if ranks < 1:
            raise RankError(
                f"{name} must be a positive integer, got {ranks}. Use ranks=1 for the "
                "smallest train, or eps=... to let the tolerance choose."
            )
        return (1,) + (int(ranks),) * (d - 1) + (1,)
    if isinstance(ranks, (str, bytes, Set, Mapping)) or not (
        isinstance(ranks, Sequence) or getattr(ranks, "ndim", None) == 1
    ):
        raise RankError(
            f"{name} must be an int or an ordered sequence of ints (list, tuple or 1-D array), "
            f"got {type(ranks).__name__} {ranks!r}; sets and mappings have no order and a "
            "string is not a list of numbers."
        )
    if not isinstance(ranks, Sequence):  # a 1-D array: its integral values
        try:
            ranks = [int(r) if float(r) == int(r) else r for r in ranks]
        except TypeError:
            raise RankError(
                f"{name} must be an int or a sequence of ints, got {type(ranks).__name__}."
            ) from None
    ranks = list(ranks)
    bad = [r for r in ranks if not _is_int(r)]
    if bad:
        raise RankError(f"{name} must contain integers only, got {bad!r} in {ranks!r}.")
    if len(ranks) == d - 1:
        ranks = [1, *ranks, 1]
    elif len(ranks) != d + 1:
        raise RankError(
            f"{name} has {len(ranks)} entries for a train of {d} cores; expected {d + 1} "
            f"(with boundary ones) or {d - 1} interior ranks, e.g. "
            f"{[1] + [2] * (d - 1) + [1]}."
        )
    elif ranks[0] != 1 or ranks[-1] != 1:
        raise RankError(
            f"{name} {ranks!r} must start and end with 1 (the boundary ranks of a tensor "
            "train); pass the d - 1 interior ranks alone if you prefer."
        )
    nonpos = [(k, r) for k, r in enumerate(ranks) if r < 1]
    if nonpos:
        k, r = nonpos[0]
        raise RankError(f"{name}[{k}] = {r} in {ranks!r}; every rank must be at least 1.")
    return tuple(int(r) for r in ranks)


def clip_ranks(
    ranks: tuple[int, ...] | None,
    shape: Sequence[int],
    *,
    warn: bool,
    stacklevel: int = 3,
) -> tuple[int, ...]:
    """Clip ``ranks`` to :func:`attainable_ranks` of ``shape``.

    With ``warn=True`` a :class:`~ttdecomp.errors.RankClippedWarning` lists every bond
    that was reduced. ``None`` means "no cap" and returns the attainable ranks.
    """
    top = attainable_ranks(shape)
    if ranks is None:
        return top
    clipped = tuple(min(r, t) for r, t in zip(ranks, top))
    if warn and clipped != ranks:
        bonds = [f"bond {k}: {r} -> {c}" for k, (r, c) in enumerate(zip(ranks, clipped)) if r != c]
        warnings.warn(
            f"requested ranks {list(ranks)} exceed the attainable maximum "
            f"{list(top)} for mode sizes {list(shape)}; clipped ({'; '.join(bonds)}).",
            RankClippedWarning,
            stacklevel=stacklevel,
        )
    return clipped


def check_error_bound(bound: Any) -> float | None:
    """``None`` or a non-negative real (``inf`` allowed): a container's ``error_bound``."""
    if bound is None:
        return None
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not bound >= 0:
        raise InvalidInputError(
            f"error_bound must be None or a non-negative number (a relative Frobenius error), "
            f"got {bound!r}."
        )
    return float(bound)


def check_eps(eps: Any) -> float | None:
    """Validate a relative tolerance: ``None`` or a float in ``(0, 1)``."""
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise InvalidInputError(f"eps must be a float in (0, 1), got {eps!r}.")
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0 or eps >= 1:
        raise InvalidInputError(
            f"eps is the relative Frobenius error and must lie in (0, 1), got {eps}. "
            "For an exact decomposition leave eps=None (and ranks=None); eps >= 1 would "
            "allow the zero train."
        )
    return eps


def check_cores(cores: Any, ndim: int, kind: str) -> tuple[list[Any], Any]:
    """Validate a list of TT cores and return ``(cores, namespace)``.

    Checks: a non-empty sequence of arrays of one library, dtype and device, each with
    ``ndim`` axes, boundary ranks 1, and matching ranks between neighbours.
    """
    if isinstance(cores, (str, bytes)) or not isinstance(cores, Sequence):
        raise ShapeError(
            f"{kind} needs a list of {ndim}-D cores, got {type(cores).__name__}. "
            f"Pass e.g. [core_1, ..., core_d] with core_k of shape "
            f"{'(r_{k-1}, n_k, r_k)' if ndim == 3 else '(r_{k-1}, m_k, n_k, r_k)'}."
        )
    cores = list(cores)
    if not cores:
        raise ShapeError(f"{kind} needs at least one core, got an empty list.")
    xp = get_namespace(*cores)
    layout = "(r_{k-1}, n_k, r_k)" if ndim == 3 else "(r_{k-1}, m_k, n_k, r_k)"
    dtype = cores[0].dtype
    device = array_api_compat.device(cores[0])
    for k, core in enumerate(cores):
        if core.ndim != ndim:
            raise ShapeError(
                f"{kind} core {k} has {core.ndim} axes (shape {tuple(core.shape)}); "
                f"expected {ndim} axes {layout}."
            )
        if core.dtype != dtype:
            raise BackendMismatchError(
                f"{kind} core {k} has dtype {core.dtype} but core 0 has {dtype}; cast all "
                "cores to one dtype."
            )
        if array_api_compat.device(core) != device:
            raise BackendMismatchError(
                f"{kind} core {k} is on device {array_api_compat.device(core)} but core 0 "
                f"is on {device}; move all cores to one device."
            )
        if not xp.isdtype(core.dtype, ("real floating", "complex floating")):
            raise BackendMismatchError(
                f"{kind} cores have dtype {core.dtype}; expected a floating or complex dtype."
            )
        if any(s < 1 for s in core.shape):
            raise ShapeError(f"{kind} core {k} has an empty axis (shape {tuple(core.shape)}).")
    if cores[0].shape[0] != 1:
        raise ShapeError(
            f"{kind} core 0 has left rank {cores[0].shape[0]}; the first core's left rank "
            "must be 1."
        )
    if cores[-1].shape[-1] != 1:
        raise ShapeError(
            f"{kind} core {len(cores) - 1} has right rank {cores[-1].shape[-1]}; the last "
            "core's right rank must be 1."
        )
    for k in range(1, len(cores)):
        if cores[k].shape[0] != cores[k - 1].shape[-1]:
            raise ShapeError(
                f"{kind} core {k} has left rank {cores[k].shape[0]} but core {k - 1} has "
                f"right rank {cores[k - 1].shape[-1]}; neighbouring ranks must match."
            )
    return cores, xp


def check_lapack_dtype(xp: Any, dtype: Any, what: str) -> None:
    """Refuse half-precision dtypes (float16, bfloat16) before any factorisation.

    LAPACK has no half-precision SVD/QR; the failure would otherwise come from deep inside it.
    """
    if xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits < 32:
        raise BackendMismatchError(
            f"{what} has dtype {dtype}; TT-SVD and rounding need float32 or float64 (LAPACK has "
            "no half-precision factorisations). Cast it first, e.g. x.astype(np.float32) or "
            "x.float(), and cast the cores back afterwards if you need to."
        )


def warn_unmet_eps(bound: float, eps: float | None, ranks: Any, stacklevel: int = 3) -> None:
    """Warn when rank caps kept a result from meeting ``eps`` (the bound says what it met)."""
    if eps is not None and ranks is not None and bound > eps:
        warnings.warn(
            f"eps={eps} is not met: the rank caps {ranks!r} allow a relative error of "
            f"{bound:.4g} at best (error_bound of the result). Raise the ranks or drop them to "
            "let eps choose.",
            TTWarning,
            stacklevel=stacklevel,
        )


def check_finite_cores(cores: Sequence[Any], what: str) -> None:
    """Refuse cores holding NaN or Inf, naming the first such core (one pass over the data).

    Core algorithms (rounding, contraction) would otherwise turn them into finite garbage or
    fail deep inside LAPACK.
    """
    for k, core in enumerate(cores):
        if getattr(core, "is_meta", False):  # shapes only, no data to check
            continue
        if hasattr(core, "requires_grad"):  # torch: a check, not part of the autograd graph
            core = core.detach()
        xp = get_namespace(core)
        bad = ~xp.isfinite(core)
        if bool(xp.any(bad)):
            n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
            raise InvalidInputError(
                f"{what}: core {k} (shape {tuple(core.shape)}) holds {n_bad} NaN or Inf "
                f"entr{'y' if n_bad == 1 else 'ies'}; the train is not a finite tensor. Find "
                "where it diverged (e.g. a training step), or rebuild it from finite data."
            )


def check_matrix_shape(
    row_shape: Sequence[int], col_shape: Sequence[int], ranks: Sequence[int], batch: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    """A TT-matrix's mode sizes, ranks and a batch size as ints, checked (no arrays)."""
    row_shape = tuple(int(s) for s in row_shape)
    col_shape = tuple(int(s) for s in col_shape)
    ranks = tuple(int(r) for r in ranks)
    d = len(row_shape)
    if d == 0 or len(col_shape) != d:
        raise ShapeError(
            f"row_shape {row_shape} and col_shape {col_shape} must be non-empty and of equal "
            "length (one entry per core)."
        )
    if len(ranks) != d + 1 or ranks[0] != 1 or ranks[-1] != 1:
        raise ShapeError(
            f"ranks must have d + 1 = {d + 1} entries with boundary ones, got {ranks}."
        )
    if min(row_shape + col_shape + ranks) < 1:
        raise ShapeError(
            f"mode sizes and ranks must be positive, got row_shape={row_shape}, "
            f"col_shape={col_shape}, ranks={ranks}."
        )
    if int(batch) < 0:
        raise ShapeError(f"batch must be a non-negative number of rows, got {batch}.")
    return row_shape, col_shape, ranks, int(batch)


def matrix_cores(ttm_or_cores: Any) -> list[Any]:
    """The 4-D cores of a TTMatrix or a sequence of cores, shape-checked (no data scans)."""
    cores = getattr(ttm_or_cores, "cores", ttm_or_cores)
    iterable = hasattr(cores, "__iter__") and not hasattr(cores, "shape")
    cores = list(cores) if iterable and not isinstance(cores, (str, bytes)) else []
    if not cores:
        raise ShapeError(
            f"expected a TTMatrix or a non-empty list of 4-D cores (r_{{k-1}}, m_k, n_k, r_k), "
            f"got {type(ttm_or_cores).__name__}."
        )
    prev = 1
    for k, core in enumerate(cores):
        shape = getattr(core, "shape", None)
        if shape is None or len(shape) != 4:
            raise ShapeError(
                f"core {k} has shape {None if shape is None else tuple(shape)}; TT-matrix cores "
                "are 4-D (r_{k-1}, m_k, n_k, r_k). For a 3-D TensorTrain core use "
                "core[:, :, None, :] to view it as a one-column TT-matrix."
            )
        if int(shape[0]) != prev:
            what = (
                "the first core's left rank must be 1"
                if k == 0
                else (f"core {k - 1} has right rank {prev}")
            )
            raise ShapeError(
                f"core {k} has left rank {int(shape[0])} but {what}; neighbouring ranks must match."
            )
        prev = int(shape[3])
    if prev != 1:
        raise ShapeError(
            f"core {len(cores) - 1} has right rank {prev}; the last core's right rank must be 1."
        )
    return cores


def matrix_shapes(cores: Sequence[Any]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    row_shape = tuple(int(c.shape[1]) for c in cores)
    col_shape = tuple(int(c.shape[2]) for c in cores)
    ranks = (1,) + tuple(int(c.shape[3]) for c in cores)
    return row_shape, col_shape, ranks


def check_operands(x: Any, cores: Sequence[Any], n_total: int, what: str = "x") -> Any:
    """Backend, dtype, device and last-axis checks; returns the namespace."""
    xp = get_namespace(x, *cores)
    dtype = cores[0].dtype
    if not xp.isdtype(x.dtype, ("real floating", "complex floating")):
        raise BackendMismatchError(
            f"{what} has dtype {x.dtype}; expected a floating or complex dtype matching the "
            f"cores ({dtype}). Cast it explicitly, e.g. x.astype(...) or x.to(...)."
        )
    for k, core in enumerate(cores):
        if core.dtype != x.dtype:
            kind = (
                "a complex/real mix"
                if xp.isdtype(core.dtype, "complex floating")
                != xp.isdtype(x.dtype, "complex floating")
                else "a dtype mismatch"
            )
            raise BackendMismatchError(
                f"{what} has dtype {x.dtype} but core {k} has dtype {core.dtype} ({kind}); "
                "ttdecomp does not promote silently. Cast one side, e.g. "
                f"x.astype(cores.dtype) / x.to(core.dtype), or the cores to {x.dtype}."
            )
    device = _device(x)
    for k, core in enumerate(cores):
        if _device(core) != device:
            raise BackendMismatchError(
                f"{what} is on device {device} but core {k} is on {_device(core)}; "
                "move one side (e.g. x.to(core.device)); ttdecomp never copies between "
                "devices silently."
            )
    if x.ndim < 1 or int(x.shape[-1]) != n_total:
        raise ShapeError(
            f"{what} has shape {tuple(x.shape)}; its last axis must be N = {n_total} (the "
            "TT-matrix's column count, ∏ col_shape). Reshape x to (..., N) or use W.T."
        )
    return xp


def _device(a: Any) -> Any:
    dev = getattr(a, "device", None)
    if dev is None:
        return None
    return array_api_compat.device(a)


def _range_text(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_int(
    value: Any,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> int | None:
    """An integer option in ``[low, high]`` (either bound may be ``None``); bools are refused.

    Raises :class:`~ttdecomp.errors.InvalidOptionError` naming the option ``name``.

    Examples
    --------
    >>> check_int(4, "epochs", low=1, high=1000)
    4
    >>> check_int(0, "epochs", low=1, high=1000)
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidOptionError: epochs must be an integer in [1, 1000]; got 0.
    >>> check_int(True, "epochs", low=1)
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidOptionError: epochs must be an integer >= 1; got True.
    """
    from .errors import InvalidOptionError

    if value is None and optional:
        return None
    bad = not _is_int(value)
    if not bad:
        bad = (low is not None and value < low) or (high is not None and value > high)
    if bad:
        wanted = " ".join(["an integer", _range_text(low, high, False, False)]).strip()
        raise InvalidOptionError(f"{name} must be {wanted}; got {value!r}.", option=name)
    return int(value)


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """A finite real option in the range given (open or closed ends); bools are refused.

    Examples
    --------
    >>> check_real(0.01, "weight_decay", low=0, high=1, high_open=True)
    0.01
    >>> check_real(float("nan"), "epoch_budget", low=0, low_open=True)
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidOptionError: epoch_budget must be a finite number > 0; got nan.
    """
    from .errors import InvalidOptionError

    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        wanted = " ".join(["a finite number", _range_text(low, high, low_open, high_open)]).strip()
        raise InvalidOptionError(f"{name} must be {wanted}; got {value!r}.", option=name)
    return float(value)


def check_choice(value: Any, name: str, choices: Sequence[Any], *, optional: bool = False) -> Any:
    """One of ``choices`` (compared by equality; a bool never stands for 0 or 1).

    Examples
    --------
    >>> check_choice("bf16", "precision", ("auto", "fp32", "bf16", "fp16"))
    'bf16'
    >>> check_choice("fp8", "precision", ("auto", "fp32", "bf16", "fp16"))
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidOptionError: precision must be one of auto, fp32, bf16, fp16; got 'fp8'.
    """
    from .errors import InvalidOptionError

    if value is None and optional:
        return None
    if isinstance(value, bool) or not any(value == c and type(value) is type(c) for c in choices):
        listed = ", ".join(str(c) for c in choices)
        raise InvalidOptionError(f"{name} must be one of {listed}; got {value!r}.", option=name)
    return value


def check_bool(value: Any, name: str) -> bool:
    """``True`` or ``False`` exactly (not 0, 1, ``"yes"`` or ``None``).

    Examples
    --------
    >>> check_bool(1, "quick")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidOptionError: quick must be True or False; got 1.
    """
    from .errors import InvalidOptionError

    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be True or False; got {value!r}.", option=name)
    return value


def require_packages(packages: Sequence[str], extra: str, what: str) -> None:
    """Raise an ``ImportError`` naming the ``pip install`` when one of ``packages`` is missing.

    Only looks the packages up (``importlib.util.find_spec``): nothing is imported, so a
    package that is slow to import costs nothing here. ``extra`` is the ttdecomp extra
    (``"torch"``, ``"finetune"``, ``"search"``); ``what`` is what needs them
    (``"ttdecomp.adapters"``). The error's ``name`` is the missing package.

    Examples
    --------
    >>> require_packages(["numpy"], "torch", "this example")
    >>> require_packages(["no_such_package_here"], "torch", "this example")
    Traceback (most recent call last):
    ...
    ImportError: this example needs no_such_package_here, which is not installed; install it with
        pip install "ttdecomp[torch]"
    """
    import importlib.util

    for package in packages:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a finder that refuses it; a half-imported module
            found = False
        if not found:
            raise ImportError(
                f"{what} needs {package}, which is not installed; install it with\n"
                f'    pip install "ttdecomp[{extra}]"',
                name=package,
            )
