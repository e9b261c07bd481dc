"""Where a fine-tuning run trains and what it costs: devices, precision, processes, memory.

:func:`resolve_device` turns ``--device auto`` into CUDA, then MPS, then the CPU (under
``torchrun``, each process its ``LOCAL_RANK``'s GPU); :func:`resolve_precision` turns
``--precision auto`` into bf16 on a GPU that supports it, else fp32; :func:`world_size` and
:func:`is_main_process` read the launcher's environment; :class:`PeakMemory` measures the
peak bytes a training step allocates, exactly, on the CPU. :mod:`ttdecomp.finetune.train`
re-exports them.
"""

from __future__ import annotations

import os
import weakref

import torch

from .._validation import check_choice
from ..errors import InvalidInputError

__all__ = [
    "PRECISIONS",
    "PeakMemory",
    "is_main_process",
    "resolve_device",
    "resolve_precision",
    "world_size",
]

#: ``precision``: ``auto`` is bf16 on a GPU that supports it, else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def world_size() -> int:
    """Processes in this run (``WORLD_SIZE`` set by ``torchrun`` / ``accelerate launch``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the process that writes files and prints (rank 0, or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(device: str = "auto") -> str:
    """The torch device a run trains on.

    ``"auto"``: CUDA when torch sees a GPU, else MPS (Apple silicon), else the CPU. Under
    ``torchrun`` (``WORLD_SIZE`` > 1), ``"auto"`` and ``"cuda"`` become ``cuda:LOCAL_RANK``:
    each process takes its own GPU. Other names are checked against what this machine has.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if not isinstance(device, str):
        raise InvalidInputError(f"device must be a string such as 'cpu'; got {device!r}.")
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            return "mps"
        else:
            return "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(
            f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps (--device)."
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"--device {device}: this machine has no CUDA GPU torch can use; use --device auto "
            "or cpu."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"--device {device}: MPS is not available; use --device auto.")
    if device == "cuda" and world_size() > 1 and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: the mixed precision a run on ``device`` uses.

    ``"auto"`` is bf16 on a CUDA GPU that supports it (Ampere and later), else fp32. fp16
    needs a GPU; bf16 asked for on a GPU without it is an error.

    Examples
    --------
    >>> resolve_precision("auto", "cpu")
    'fp32'
    """
    check_choice(precision, "precision", PRECISIONS)
    cuda = device.startswith("cuda")
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not (cuda or device == "mps"):
        raise InvalidInputError(
            f"--precision fp16 needs a GPU; the run is on {device}. Use --precision bf16 or "
            "fp32 there."
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InvalidInputError(
            f"--precision bf16: the GPU of {device} does not support bf16; use --precision "
            "fp16 or fp32."
        )
    return precision


class PeakMemory(torch.utils._python_dispatch.TorchDispatchMode):
    """Tracks the peak bytes of the tensor storages created while it is active (exact, CPU).

    Every storage an operator returns is counted from its creation until it is freed, so
    ``peak`` is the high-water mark of what the block allocated: activations saved for
    backward, gradients, temporaries. Storages that existed before (the weights) are not
    counted.

    Examples
    --------
    >>> with PeakMemory() as mem:
    ...     y = torch.ones(1024) * 2  # one float32 storage of 4 KiB (ones) and one for y
    >>> mem.peak
    8192
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: set[int] = set()
        self.current = 0
        self.peak = 0

    def _free(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self.live.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    self.live.add(key)
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out
