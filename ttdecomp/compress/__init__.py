"""Model compression with TT-matrices: ``TTLinear``, ``compress_model``, saving, healing.

Sits above :mod:`ttdecomp.adapters` (beside :mod:`ttdecomp.finetune`) and below the command
line; it needs torch.

* :class:`TTLinear` (from :mod:`ttdecomp.nn`) — a linear layer whose weight is a
  TT-matrix (``from_linear`` for ``nn.Linear`` and GPT-2 ``Conv1D``, ``to_linear``).
* :mod:`~ttdecomp.compress.calibration` — the Grams ``XᵀX`` of a model's layers on the
  calibration inputs; the output-aware decomposition they feed (whitening by the Cholesky
  factor, TT-SVD, exact un-whitening or rounding plus refinement) is
  :mod:`ttdecomp.nn.whitened`, re-exported there.
* :mod:`~ttdecomp.compress.model` — :func:`compress_model` and its report.
* :mod:`~ttdecomp.compress.serialization` — :func:`save_compressed`, :func:`load_compressed`.
* :mod:`~ttdecomp.compress.job` — :class:`CompressConfig` and :func:`run_compress`, what
  ``ttdecomp compress`` does (the command is a parser plus one call).
* :mod:`~ttdecomp.compress.heal` — :func:`heal`, a short distillation into the TT cores.
* :mod:`~ttdecomp.compress.layerwise` — :func:`refit_layers`, each TT layer refitted in
  forward order to the original's layer outputs on the compressed model's own inputs.

Examples
--------
>>> import torch
>>> from ttdecomp.compress import compress_model
>>> torch.manual_seed(0) is not None
True
>>> net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
>>> small, report = compress_model(net, budget=0.25)
>>> report.n_params <= 0.25 * 2 * 64 * 256
True
"""

from __future__ import annotations

from ..nn.linear import TTLinear
from .calibration import WhitenedResult, collect_grams, decompose_whitened, output_error
from .heal import HealReport, heal
from .job import CompressConfig, run_compress
from .layerwise import LayerRefit, RefitReport, refit_layers
from .model import DEFAULT_SKIP, CompressionReport, LayerReport, compress_model, select_layers
from .serialization import (
    COMPRESSED_CONFIG,
    COMPRESSED_WEIGHTS,
    CompressedFileError,
    load_compressed,
    save_compressed,
)

__all__ = [
    "COMPRESSED_CONFIG",
    "COMPRESSED_WEIGHTS",
    "DEFAULT_SKIP",
    "CompressConfig",
    "CompressedFileError",
    "CompressionReport",
    "HealReport",
    "LayerRefit",
    "LayerReport",
    "RefitReport",
    "TTLinear",
    "WhitenedResult",
    "collect_grams",
    "compress_model",
    "decompose_whitened",
    "heal",
    "load_compressed",
    "output_error",
    "refit_layers",
    "run_compress",
    "save_compressed",
    "select_layers",
]
