"""Reading the layers to plan: a mapping of shapes or weights, or a ``.safetensors`` checkpoint
(a file or a folder of shards) read one tensor at a time, so a model larger than memory works."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError, TTWarning
from ._checks import check_shape
from ._spectra import as_numpy

__all__ = ["DEFAULT_EXCLUDE", "Source"]


DEFAULT_EXCLUDE = r"embed|lm_head|\bwte\b|\bwpe\b"
"""Tensors :func:`~ttdecomp.plan_model` skips in a checkpoint when no ``pattern`` is given."""


class Source:
    """Uniform access to a mapping or a safetensors file / folder of shards."""

    def __init__(self, layers: Any, pattern: str | None) -> None:
        self.files: dict[str, str] = {}
        self.mapping: Mapping[str, Any] | None = None
        if isinstance(layers, (str, os.PathLike)):
            self._open_path(os.fspath(layers))
        elif isinstance(layers, Mapping):
            self.mapping = layers
        else:
            raise InvalidInputError(
                f"layers must be a mapping name -> shape or weight, or a path to a .safetensors "
                f"file or a folder of them, got {type(layers).__name__}."
            )
        try:
            regex = None if pattern is None else re.compile(pattern)
        except re.error as exc:
            raise InvalidInputError(f"pattern {pattern!r} is not a valid regex: {exc}.") from None
        self.entries = self._select(regex, pattern)

    def _open_path(self, path: str) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path!r} does not exist; give a .safetensors file, a folder of shards, or a "
                "shape such as 4096x4096."
            )
        if os.path.isdir(path):
            shards = sorted(
                os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")
            )
            if not shards:
                raise InvalidInputError(f"folder {path!r} holds no .safetensors files.")
        else:
            shards = [path]
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError(
                "reading checkpoints needs the safetensors package: pip install safetensors"
            ) from None
        self._safe_open = safe_open
        self.headers: dict[str, tuple[tuple[int, ...], str]] = {}
        for shard in shards:
            try:
                with safe_open(shard, framework="numpy") as f:
                    for key in f.keys():
                        s = f.get_slice(key)
                        self.headers[key] = (tuple(s.get_shape()), s.get_dtype())
                        self.files[key] = shard
            except Exception as exc:  # safetensors raises its own error types
                raise InvalidInputError(
                    f"could not read {shard!r} as a safetensors file ({exc}); is it complete "
                    "and really a .safetensors checkpoint?"
                ) from None

    def _select(self, regex: re.Pattern | None, pattern: str | None) -> list[tuple[str, Any]]:
        out = []
        if self.mapping is not None:
            for name, value in self.mapping.items():
                if regex is not None and not regex.search(str(name)):
                    continue
                if hasattr(value, "shape") and hasattr(value, "dtype"):
                    out.append((str(name), (tuple(int(s) for s in value.shape), True)))
                else:
                    out.append((str(name), (check_shape(value), False)))
        else:
            floating = {"F16", "BF16", "F32", "F64", "C64", "C128"}
            exclude = re.compile(DEFAULT_EXCLUDE, re.IGNORECASE)
            skipped: dict[str, list[str]] = {}
            for name, (shape, dtype) in sorted(self.headers.items()):  # shard-independent
                if len(shape) != 2:
                    continue
                if regex is None and exclude.search(name):
                    continue
                if regex is not None and not regex.search(name):
                    continue
                if dtype not in floating:
                    skipped.setdefault(dtype, []).append(name)
                    continue
                out.append((name, (shape, True)))
            if skipped:
                kinds = ", ".join(f"{len(v)} in {k}" for k, v in sorted(skipped.items()))
                first = next(iter(sorted(skipped.items())))[1][0]
                warnings.warn(
                    f"skipped the 2-D tensors stored in a dtype that cannot be planned ({kinds}; "
                    f"e.g. {first!r}): float8 and integer (quantized) weights are not read. "
                    "Dequantize the checkpoint to bfloat16 or float32 to plan those layers.",
                    TTWarning,
                    stacklevel=4,
                )
        if not out:
            what = "all entries" if pattern is None else f"pattern {pattern!r}"
            raise InvalidInputError(
                f"no 2-D floating-point layer selected by {what}; check the names "
                "(e.g. 'q_proj|v_proj') or pass a mapping name -> (out, in)."
            )
        return out

    def weight(self, name: str) -> np.ndarray:
        if self.mapping is not None:
            return as_numpy(self.mapping[name])
        dtype = self.headers[name][1]
        framework = "pt" if dtype == "BF16" else "numpy"
        if framework == "pt":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise ImportError(
                    f"{name!r} is stored as bfloat16, which numpy cannot read; install torch."
                ) from None
        with self._safe_open(self.files[name], framework=framework) as f:
            return as_numpy(f.get_tensor(name))
