"""The torch floor under :mod:`ttdecomp.adapters` and :mod:`ttdecomp.compress`.

* :mod:`~ttdecomp.nn.kinds` — which modules are linear layers (:func:`is_linear`,
  :func:`is_conv1d`), their ``(out, in)`` weight (:func:`dense_weight`), their sizes
  (:func:`in_out_features`) and the model's output head (:func:`output_head`).
* :mod:`~ttdecomp.nn.selection` — :func:`select_modules`: names, suffixes, bounded regexes,
  ``"all-linear"`` and exclusions, every entry required to match.
* :mod:`~ttdecomp.nn.cores` — :class:`CoreList`, the light holder of a TT-matrix's cores, and
  their initialisations; :mod:`~ttdecomp.nn.fast` — :class:`TTForwardCache`, the cached
  forward fast path.
* :mod:`~ttdecomp.nn.whitened` — the output-aware (whitened) TT decomposition of a weight.
* :mod:`~ttdecomp.nn.linear` — :class:`TTLinear`, a linear layer whose weight is a TT-matrix.
* :mod:`~ttdecomp.nn.quantized` — quantized linear layers (bitsandbytes 4-bit / 8-bit, torchao
  int8 weight-only): their kind, dequantized weight, re-quantization; other quantized kinds
  named for clear errors.

Examples
--------
>>> import torch
>>> from ttdecomp.nn import TTLinear, select_modules
>>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
>>> list(select_modules(net, ["0"]))
['0']
>>> TTLinear.from_linear(net[0], ranks=2).ranks
(1, 2, 1)
"""

from __future__ import annotations

from .cores import CoreList
from .fast import TTForwardCache
from .kinds import dense_weight, in_out_features, is_conv1d, is_linear, output_head
from .linear import TTLinear
from .selection import TargetModulesError, check_regex, match_modules, select_modules

__all__ = [
    "CoreList",
    "TTForwardCache",
    "TTLinear",
    "TargetModulesError",
    "check_regex",
    "dense_weight",
    "in_out_features",
    "is_conv1d",
    "is_linear",
    "match_modules",
    "output_head",
    "select_modules",
]
