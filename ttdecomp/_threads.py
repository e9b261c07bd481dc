"""The threadpoolctl cap on numpy's BLAS pools: the package's only process-wide state.

numpy's OpenBLAS and torch's OpenMP pools contend on small machines (DESIGN.md, "Thread
pools"): sweeps of many small factorisations gain nothing from BLAS threads and, on a
busy machine, stall waiting for them. :func:`small_blas` caps the pools at one thread
while such a sweep runs and restores them after; it is counted, so nested sweeps set
and restore the cap once, and it does nothing outside the main thread, for other
backends, or without threadpoolctl.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from ._backend import is_numpy

__all__ = ["small_blas"]

_BLAS_CONTROLLER: Any = None  # threadpoolctl controller, made on first use; False if absent
_SMALL_BLAS_SIZE = 1 << 22
_BLAS_LOCK = threading.Lock()
_BLAS_DEPTH = 0  # nesting depth of the cap
_BLAS_SAVED: list[int] = []


def _blas_controller() -> Any:
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is not None:
        return _BLAS_CONTROLLER
    with _BLAS_LOCK:  # one scan, never while a cap is on
        if _BLAS_CONTROLLER is not None or _BLAS_DEPTH:
            return _BLAS_CONTROLLER or False
        try:
            import scipy.linalg  # noqa: F401  (load scipy's BLAS before the scan)
            from threadpoolctl import ThreadpoolController

            ctl = ThreadpoolController().select(user_api="blas")
            _BLAS_CONTROLLER = ctl if ctl.lib_controllers else False
        except Exception:  # threadpoolctl missing or unable to inspect the process
            _BLAS_CONTROLLER = False
    return _BLAS_CONTROLLER


def small_blas(x: Any, size: int) -> Any:
    """Context: numpy's and scipy's BLAS pools at one thread while a sweep of small factors runs.

    Sweeps of many small QRs, SVDs and thin GEMMs gain nothing from OpenBLAS threads,
    and on a busy machine each call can stall for a scheduler tick waiting for its
    helper thread (measured: 10x slower TT-SVD on 2 loaded cores, see DESIGN.md
    "Thread pools"). For numpy inputs of at most ``2**22`` entries (``size``) this caps
    the BLAS pools at one thread for the duration and restores them after, using
    threadpoolctl when it is installed; otherwise, for other backends, and outside the
    main thread, it does nothing. The cap is process-wide while it lasts.
    """
    if not is_numpy(x) or size > _SMALL_BLAS_SIZE:
        return contextlib.nullcontext()
    if threading.current_thread() is not threading.main_thread():
        # OpenBLAS's thread count is not safely set from several threads: leave it be
        return contextlib.nullcontext()
    ctl = _blas_controller()
    if not ctl:
        return contextlib.nullcontext()
    return _one_blas_thread(ctl)


@contextlib.contextmanager
def _one_blas_thread(ctl: Any) -> Any:
    """The cap, counted: the outermost caller sets it and restores the saved counts."""
    global _BLAS_DEPTH, _BLAS_SAVED
    with _BLAS_LOCK:
        if _BLAS_DEPTH == 0:
            _BLAS_SAVED = [lib.num_threads for lib in ctl.lib_controllers]
            for lib in ctl.lib_controllers:
                lib.set_num_threads(1)
        _BLAS_DEPTH += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_DEPTH -= 1
            if _BLAS_DEPTH == 0:
                for lib, n in zip(ctl.lib_controllers, _BLAS_SAVED):
                    lib.set_num_threads(n)
