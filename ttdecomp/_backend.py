"""Array-namespace dispatch and the linear-algebra drivers every algorithm uses.

Nothing here holds state: the namespace is read off the input arrays on every call
(``array_api_compat.array_namespace``), so numpy in gives numpy out, torch in gives
torch out on the same device and dtype with autograd intact, and any array-API
library (``array_api_strict`` in the tests) works through the standard alone.

The SVD driver has an explicit fallback on non-convergence (LAPACK ``gesdd`` →
``gesvd`` for numpy, float64 retry for torch) and two cheaper paths for very wide or
very tall matrices:

* ``"qr"``: QR-first. A wide ``m × n`` matrix (``n ≫ m``) is reduced to its ``m × m``
  triangular factor, whose SVD gives the left singular vectors and the singular values
  to full backward-stable accuracy at ``O(n m²)`` cost.
* ``"gram"``: eigen-decomposition of the ``m × m`` Gram matrix ``A Aᴴ``. Fastest, but it
  squares the condition number: singular values below ``√u · σ_max`` (``u`` the unit
  round-off, ~1.5e-8 in float64, ~3.5e-4 in float32) are lost. Use it only when the
  tolerance you ask for is well above that.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import array_api_compat
import numpy as np

from .errors import BackendMismatchError, InvalidInputError, TTWarning

__all__ = [
    "SVD_METHODS",
    "check_array",
    "conj_transpose",
    "eigh_desc",
    "get_namespace",
    "hermitian_trace",
    "host_floats",
    "is_complex",
    "is_numpy",
    "is_torch",
    "left_svd",
    "qr",
    "real_dtype",
    "residual_sq",
    "svd",
    "to_float",
]

SVD_METHODS = ("auto", "svd", "qr", "gram")

# A matrix is "wide" (or "tall") for the QR-first path when one side is this many
# times the other; below it a plain LAPACK SVD is as fast.
_QR_FIRST_RATIO = 4


def is_torch(x: Any) -> bool:
    """True when ``x`` is a torch tensor (without importing torch)."""
    return array_api_compat.is_torch_array(x)


def is_numpy(x: Any) -> bool:
    """True when ``x`` is a numpy array."""
    if type(x) is np.ndarray and x.dtype.kind in "fcbiu":  # fast path, same answer
        return True
    return array_api_compat.is_numpy_array(x)


def get_namespace(*arrays: Any) -> Any:
    """Return the array-API namespace shared by ``arrays``.

    Raises
    ------
    BackendMismatchError
        When the arrays come from different libraries (e.g. numpy and torch), or one is
        not an array at all.
    """
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise BackendMismatchError(
            f"expected arrays from one array library, got {', '.join(kinds)}. "
            "Convert every operand to the same library (e.g. torch.as_tensor or np.asarray) "
            "before calling."
        ) from exc


def is_complex(xp: Any, dtype: Any) -> bool:
    """True for complex floating dtypes."""
    if isinstance(dtype, np.dtype):  # the common case, without the dispatch
        return dtype.kind == "c"
    return bool(xp.isdtype(dtype, "complex floating"))


def real_dtype(xp: Any, dtype: Any) -> Any:
    """The real dtype matching ``dtype`` (``complex128`` → ``float64``)."""
    if is_complex(xp, dtype):
        return xp.float64 if dtype == xp.complex128 else xp.float32
    return dtype


def check_array(x: Any, name: str = "input", *, finite: bool = True) -> Any:
    """Validate that ``x`` is a floating or complex array with only finite entries.

    Parameters
    ----------
    x : array
        The array to check.
    name : str
        How the array is called in the error message.
    finite : bool
        Also reject NaN and Inf entries.

    Returns
    -------
    namespace
        The array-API namespace of ``x``.

    Raises
    ------
    BackendMismatchError
        ``x`` is not an array, or has an integer or boolean dtype.
    InvalidInputError
        ``x`` holds NaN or Inf.
    """
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError as exc:
        raise BackendMismatchError(
            f"{name} must be an array (numpy, torch or another array-API library), got "
            f"{type(x).__name__}. Wrap it with np.asarray(...) or torch.as_tensor(...)."
        ) from exc
    if not xp.isdtype(x.dtype, ("real floating", "complex floating")):
        raise BackendMismatchError(
            f"{name} has dtype {x.dtype}; expected a floating or complex dtype "
            "(float32, float64, complex64, complex128). Cast it explicitly, e.g. "
            "x.astype(np.float64) or x.double(); ttdecomp never casts silently."
        )
    if finite and math.prod(x.shape) > 0:
        bad = ~xp.isfinite(x)
        if bool(xp.any(bad)):
            n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
            raise InvalidInputError(
                f"{name} contains {n_bad} NaN or Inf entr{'y' if n_bad == 1 else 'ies'} "
                f"(shape {tuple(x.shape)}); TT decompositions need finite input. Clean or "
                "mask the array before decomposing."
            )
    return xp


def conj_transpose(xp: Any, a: Any) -> Any:
    """Conjugate transpose of the last two axes (plain transpose for real dtypes)."""
    at = xp.matrix_transpose(a)
    return xp.conj(at) if is_complex(xp, a.dtype) else at


def to_float(x: Any) -> float:
    """A 0-d real array (any backend, any device) as a Python float, outside autograd."""
    if is_torch(x):
        return float(x.detach())
    return float(x)


def _numpy_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import scipy.linalg

    try:
        return scipy.linalg.svd(a, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:
        warnings.warn(
            f"LAPACK gesdd did not converge on a {a.shape[0]}x{a.shape[1]} matrix; "
            "retrying with the slower, more robust gesvd.",
            TTWarning,
            stacklevel=3,
        )
        return scipy.linalg.svd(a, full_matrices=False, check_finite=False, lapack_driver="gesvd")


def _torch_svd(a: Any) -> tuple[Any, Any, Any]:
    import torch

    try:
        return torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:
        if a.is_cuda:
            warnings.warn(
                "torch.linalg.svd did not converge; retrying with driver='gesvd'.",
                TTWarning,
                stacklevel=3,
            )
            return torch.linalg.svd(a, full_matrices=False, driver="gesvd")
        if a.dtype in (torch.float64, torch.complex128):
            raise
        warnings.warn(
            f"torch.linalg.svd did not converge in {a.dtype}; retrying in double precision.",
            TTWarning,
            stacklevel=3,
        )
        wide = torch.complex128 if a.is_complex() else torch.float64
        u, s, vh = torch.linalg.svd(a.to(wide), full_matrices=False)
        return u.to(a.dtype), s.to(a.real.dtype if a.is_complex() else a.dtype), vh.to(a.dtype)


def svd(a: Any) -> tuple[Any, Any, Any]:
    """Thin SVD ``a = U @ diag(S) @ Vh`` (``full_matrices=False``) with a fallback driver.

    Singular values come in descending order. numpy arrays use LAPACK ``gesdd`` and fall
    back to ``gesvd`` (with a warning) when it fails to converge; torch tensors retry in
    double precision on the CPU or with ``driver='gesvd'`` on CUDA; other array-API
    libraries use ``xp.linalg.svd``.
    """
    if is_numpy(a):
        return _numpy_svd(a)
    if is_torch(a):
        return _torch_svd(a)
    xp = get_namespace(a)
    return xp.linalg.svd(a, full_matrices=False)


def qr(a: Any) -> tuple[Any, Any]:
    """Reduced QR decomposition ``a = Q @ R``."""
    if is_numpy(a):
        return np.linalg.qr(a, mode="reduced")
    if is_torch(a):
        import torch

        return torch.linalg.qr(a, mode="reduced")
    xp = get_namespace(a)
    return xp.linalg.qr(a, mode="reduced")


def _r_factor(a: Any) -> Any:
    """The triangular factor of a (tall) QR without forming Q where the backend allows."""
    if is_numpy(a):
        return np.linalg.qr(a, mode="r")
    if is_torch(a):
        import torch

        # mode="r" has no derivative; keep Q when autograd needs it
        return torch.linalg.qr(a, mode="reduced" if a.requires_grad else "r")[1]
    return qr(a)[1]


def _gram_left(xp: Any, a: Any) -> tuple[Any, Any]:
    g = a @ conj_transpose(xp, a)
    if is_torch(a):
        import torch

        lam, u = torch.linalg.eigh(g)
    else:
        lam, u = xp.linalg.eigh(g)
    lam = xp.flip(lam, axis=0)
    u = xp.flip(u, axis=1)
    s = xp.sqrt(xp.clip(lam, min=0.0)) if not is_torch(a) else lam.clamp(min=0).sqrt()
    return u, s


def eigh_desc(g: Any, k: int | None = None) -> tuple[Any, Any]:
    """Eigenpairs of a Hermitian matrix ``g``, eigenvalues descending; the top ``k`` when given.

    numpy computes only the top ``k`` pairs of a large matrix (LAPACK ``syevr`` with an
    index range); torch and other array-API libraries compute all and slice. Raises the
    backend's linear-algebra error when LAPACK fails to converge.
    """
    m = g.shape[0]
    k = m if k is None else min(k, m)
    if is_numpy(g):
        if k < m and m >= 64:
            import scipy.linalg

            lam, v = scipy.linalg.eigh(
                g, subset_by_index=[m - k, m - 1], driver="evr", check_finite=False
            )
        else:
            lam, v = np.linalg.eigh(g)
        # contiguous copies: BLAS (and so matmul's fast path) needs positive strides
        return np.ascontiguousarray(lam[::-1][:k]), np.ascontiguousarray(v[:, ::-1][:, :k])
    if is_torch(g):
        import torch

        lam, v = torch.linalg.eigh(g)
    else:
        lam, v = get_namespace(g).linalg.eigh(g)
    xp = get_namespace(g)
    return xp.flip(lam, axis=0)[:k], xp.flip(v, axis=1)[:, :k]


def host_floats(x: Any) -> list[float]:
    """A short 1-D real array (any backend, any device) as a list of Python floats."""
    if is_numpy(x):
        return x.tolist()
    if is_torch(x):
        return x.detach().cpu().tolist()
    return [float(x[i]) for i in range(x.shape[0])]


def hermitian_trace(g: Any) -> float:
    """The (real) trace of a Hermitian matrix, as a Python float."""
    if is_numpy(g):
        return float(g.trace().real)
    xp = get_namespace(g)
    diag = xp.linalg.diagonal(g)
    if is_complex(xp, g.dtype):
        diag = xp.real(diag)
    return to_float(xp.sum(diag))


def residual_sq(a: Any, left: Any, right: Any) -> float:
    """``‖a − left @ right‖²_F`` as a Python float, computed outside autograd."""
    if is_numpy(a):
        r = left @ right
        np.subtract(a, r, out=r)
        r = r.ravel()
        return float(np.vdot(r, r).real)
    if is_torch(a):
        a, left, right = a.detach(), left.detach(), right.detach()
    xp = get_namespace(a)
    return to_float(xp.linalg.vector_norm(a - left @ right)) ** 2


def left_svd(a: Any, method: str = "auto") -> tuple[Any, Any]:
    """Left singular vectors and singular values of ``a`` (``m × n``), descending.

    Returns ``(U, S)`` with ``U`` of shape ``(m, k)``, ``k = min(m, n)``. The right
    factor is not formed: callers get it as ``Uᴴ a`` (one GEMM), which is what a
    TT-SVD sweep needs anyway.

    ``method``: ``"svd"`` (LAPACK thin SVD), ``"qr"`` (QR-first, exact to working
    precision, fast for wide matrices), ``"gram"`` (eigh of ``A Aᴴ``, fastest, loses
    singular values below ``√u·σ_max``), or ``"auto"`` (``"qr"`` when ``n ≥ 4 m``,
    else ``"svd"``).
    """
    if method not in SVD_METHODS:
        raise InvalidInputError(f"svd method must be one of {SVD_METHODS}, got {method!r}.")
    xp = get_namespace(a)
    m, n = a.shape
    if method == "auto":
        method = "qr" if n >= _QR_FIRST_RATIO * m else "svd"
    if method == "gram":
        return _gram_left(xp, a)
    if method == "qr" and n > m:
        r = _r_factor(conj_transpose(xp, a))  # (m, m): a = Rᴴ Qᴴ
        u, s, _ = svd(conj_transpose(xp, r))
        return u, s
    u, s, _ = svd(a)
    return u, s
