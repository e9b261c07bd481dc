"""Saving and loading compressed models: ``ttdecomp_compressed.json`` + ``.safetensors``.

The safetensors file holds the compressed model's whole state (TT cores in place of the
replaced weights; tensors shared between names, such as tied embeddings, stored once and
named in the JSON's ``aliases``). The JSON records the ttdecomp version, the model's class
and ``config.model_type``, every replaced layer with its shapes and ranks, each tensor's
shape, and the compression report. No pickle: loading runs no code from the files.

:func:`load_compressed` takes a fresh copy of the base architecture (e.g.
``AutoModel.from_pretrained(base)`` or ``from_config``), checks class, layers, tensor names
and shapes against the files **before** modifying it, then swaps in :class:`TTLinear` layers
and loads the state. Both files are written to temporary files and renamed into place (the
adapters' transactional writer); both carry one ``save_id``, so a pair from two saves is
refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import load_pair, save_pair
from ..counts import max_ranks
from ..errors import InvalidInputError
from ..nn.kinds import dense_weight, is_linear
from ..nn.linear import TTLinear
from .model import CompressionReport, refuse_save_pretrained

__all__ = [
    "COMPRESSED_CONFIG",
    "COMPRESSED_WEIGHTS",
    "CompressedFileError",
    "load_compressed",
    "save_compressed",
]

COMPRESSED_CONFIG = "ttdecomp_compressed.json"
COMPRESSED_WEIGHTS = "ttdecomp_compressed.safetensors"
FORMAT_VERSION = 1


class CompressedFileError(InvalidInputError):
    """A saved compressed model that is missing, corrupted, or does not fit the given model."""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ttdecomp")
    except metadata.PackageNotFoundError:
        return "unknown"


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def save_compressed(
    model: nn.Module, folder: str | Path, report: CompressionReport | None = None
) -> Path:
    """Write a compressed model (its state and its TT layers) to ``folder``, atomically.

    Parameters
    ----------
    model : nn.Module
        A model holding :class:`TTLinear` layers (from :func:`compress_model`).
    folder : str or Path
        Created if needed; the two files are replaced together.
    report : CompressionReport, optional
        Stored in the JSON for the record.

    Returns
    -------
    Path
        The folder.

    Examples
    --------
    >>> import tempfile, torch
    >>> from ttdecomp.compress import compress_model
    >>> net, _ = compress_model(torch.nn.Sequential(torch.nn.Linear(32, 32)), budget=0.5)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_compressed(net, d)
    ...     fresh = load_compressed(torch.nn.Sequential(torch.nn.Linear(32, 32)), d)
    ...     type(fresh[0]).__name__
    'TTLinear'
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TTLinear)}
    if not layers:
        raise InvalidInputError(
            "the model holds no TTLinear layer; compress it first (compress_model) or save it "
            "with its own save_pretrained."
        )
    state = model.state_dict()
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], str], str] = {}
    for key, t in state.items():
        ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), str(t.device))
        if t.numel() > 0 and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        kept[key] = t.detach().to("cpu").contiguous()
    record = {
        "format_version": FORMAT_VERSION,
        "ttdecomp_version": _version(),
        "model_class": type(model).__name__,
        "model_type": _model_type(model),
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None),
        "layers": {
            name: {
                "in_features": m.in_features,
                "out_features": m.out_features,
                "row_shape": list(m.row_shape),
                "col_shape": list(m.col_shape),
                "ranks": list(m.ranks),
                "bias": m.bias is not None,
                "dtype": str(m.cores[0].dtype).removeprefix("torch."),
            }
            for name, m in layers.items()
        },
        "tensors": {k: list(t.shape) for k, t in state.items()},
        "aliases": aliases,
        "report": None if report is None else report.to_dict(),
    }
    folder = Path(folder)
    save_pair(
        folder / COMPRESSED_WEIGHTS,
        folder / COMPRESSED_CONFIG,
        record,
        kept,
        error=CompressedFileError,
    )
    return folder


#: The keys of the JSON record, and of each layer's entry.
RECORD_KEYS = frozenset(
    {
        "format_version",
        "ttdecomp_version",
        "save_id",
        "model_class",
        "model_type",
        "base_model_name_or_path",
        "layers",
        "tensors",
        "aliases",
        "report",
    }
)
LAYER_KEYS = frozenset(
    {"in_features", "out_features", "row_shape", "col_shape", "ranks", "bias", "dtype"}
)
#: The dtypes a TT layer may be saved in.
LAYER_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _is_count(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _counts(value: Any, low: int = 1) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_count(v, low) for v in value)


def check_record(record: Any, where: str) -> None:
    """Refuse a record that :func:`save_compressed` cannot have written: unknown or missing
    keys, layer sizes that are not positive ints, shapes that do not multiply to the layer's
    sizes, ranks without boundary ones or above the attainable, a non-bool ``bias``, a dtype
    outside :data:`LAYER_DTYPES`, tensor shapes that are not lists of ints, dangling aliases."""

    def bad(what: str) -> CompressedFileError:
        return CompressedFileError(
            f"{where}: {what}; the file was not written by save_compressed or was edited. "
            "Save the compressed model again."
        )

    unknown = sorted(set(record) - RECORD_KEYS)
    missing = sorted({"save_id", "model_class", "layers", "tensors", "aliases"} - set(record))
    if unknown or missing:
        raise bad(f"the record has unknown keys {unknown} or lacks {missing}")
    layers, tensors, aliases = record["layers"], record["tensors"], record["aliases"]
    if not isinstance(layers, dict) or not layers:
        raise bad(f"'layers' is {layers!r}, not a non-empty mapping")
    for name, spec in layers.items():
        if not isinstance(spec, dict) or set(spec) != LAYER_KEYS:
            got = sorted(spec) if isinstance(spec, dict) else spec
            raise bad(f"layer {name!r} has entries {got!r}, expected {sorted(LAYER_KEYS)}")
        n_in, n_out = spec["in_features"], spec["out_features"]
        rows, cols, ranks = spec["row_shape"], spec["col_shape"], spec["ranks"]
        if not (_is_count(n_in) and _is_count(n_out) and _counts(rows) and _counts(cols)):
            raise bad(f"layer {name!r}: sizes and shapes must be positive ints, got {spec!r}")
        if len(rows) != len(cols) or math.prod(rows) != n_out or math.prod(cols) != n_in:
            raise bad(
                f"layer {name!r}: row_shape {rows} and col_shape {cols} do not factor its "
                f"{n_out} x {n_in} weight"
            )
        top = max_ranks(rows, cols)
        if (
            not _counts(ranks)
            or len(ranks) != len(rows) + 1
            or ranks[0] != 1
            or ranks[-1] != 1
            or any(r > t for r, t in zip(ranks, top))
        ):
            raise bad(
                f"layer {name!r}: ranks {ranks!r} are not {len(rows) + 1} positive ints with "
                f"boundary ones within the attainable {list(top)}"
            )
        if not isinstance(spec["bias"], bool):
            raise bad(f"layer {name!r}: bias is {spec['bias']!r}, not true or false")
        if spec["dtype"] not in LAYER_DTYPES:
            raise bad(
                f"layer {name!r}: dtype {spec['dtype']!r} is not one of {sorted(LAYER_DTYPES)}"
            )
    if not isinstance(tensors, dict) or not all(
        isinstance(v, list) and all(_is_count(d, 0) for d in v) for v in tensors.values()
    ):
        raise bad("'tensors' must map each state name to its shape, a list of ints >= 0")
    if not isinstance(aliases, dict) or not all(
        isinstance(v, str) and v in tensors and v not in aliases for v in aliases.values()
    ):
        raise bad("'aliases' must map state names to other saved state names")


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg_path = folder / COMPRESSED_CONFIG
    record, tensors = load_pair(
        cfg_path,
        folder / COMPRESSED_WEIGHTS,
        format_version=FORMAT_VERSION,
        error=CompressedFileError,
        what="a compressed model written by save_compressed",
    )
    check_record(record, str(cfg_path))
    return record, tensors


def load_compressed(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a compressed model saved by :func:`save_compressed` into ``model`` (in place).

    Parameters
    ----------
    model : nn.Module
        A fresh copy of the base architecture the compressed model was made from (its
        weights are overwritten by the saved state).
    folder : str or Path

    Returns
    -------
    nn.Module
        ``model``, with the saved :class:`TTLinear` layers and state.

    Raises
    ------
    CompressedFileError
        Missing or corrupted files; a model of another class or ``model_type``; a saved
        layer missing from ``model`` or of another shape; tensors whose names or shapes
        differ. Nothing is modified when it raises.
    """
    folder = Path(folder)
    record, tensors = _read(folder)
    where = f"the compressed model in {folder}"
    saved_class, cls = record.get("model_class"), type(model).__name__
    if saved_class != cls or record.get("model_type") != _model_type(model):
        raise CompressedFileError(
            f"{where} was saved from a {saved_class} (model_type {record.get('model_type')!r}) "
            f"but the given model is a {cls} (model_type {_model_type(model)!r}); load it into "
            "a fresh copy of the architecture it was compressed from."
        )
    modules = dict(model.named_modules())
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, spec in record["layers"].items():
        module = modules.get(name)
        if module is None:
            raise CompressedFileError(f"{where} has a TT layer {name!r} the given model lacks.")
        shape = (spec["out_features"], spec["in_features"])
        if isinstance(module, TTLinear):
            have = (module.out_features, module.in_features)
        elif is_linear(module):
            have = tuple(dense_weight(module).shape)
        else:
            raise CompressedFileError(
                f"{where}: layer {name!r} is a {type(module).__name__} in the given model, not "
                "a linear layer; this is another architecture."
            )
        if have != shape:
            raise CompressedFileError(
                f"{where}: layer {name!r} is {shape[0]}x{shape[1]} in the files but "
                f"{have[0]}x{have[1]} in the given model; this is another architecture "
                "(or another size of it)."
            )
        for key in [k for k in expected if k.startswith(name + ".")]:
            del expected[key]
        d = len(spec["row_shape"])
        for k in range(d):
            r0, r1 = spec["ranks"][k], spec["ranks"][k + 1]
            expected[f"{name}.cores.{k}"] = (r0, spec["row_shape"][k], spec["col_shape"][k], r1)
        if spec["bias"]:
            expected[f"{name}.bias"] = (spec["out_features"],)
    saved = {k: tuple(v) for k, v in record["tensors"].items()}
    if saved != expected:
        missing = sorted(set(expected) - set(saved))[:5]
        extra = sorted(set(saved) - set(expected))[:5]
        shapes = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])[:5]
        raise CompressedFileError(
            f"{where} does not fit the given model: tensors missing from the files {missing}, "
            f"unknown to the model {extra}, with other shapes {shapes}. Load it into a fresh "
            "copy of the architecture it was compressed from."
        )
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    tt_keys = set()
    for name, spec in record["layers"].items():
        for key in [k for k in saved if k.startswith(name + ".")]:
            dtypes[key] = LAYER_DTYPES[spec["dtype"]]
            tt_keys.add(key)
    unknown_tensors = sorted(set(tensors) - set(saved))
    if unknown_tensors:
        raise CompressedFileError(
            f"{where}: the weights file holds tensors the record does not list "
            f"{unknown_tensors[:5]}; save the compressed model again."
        )
    for key in saved:
        src = record["aliases"].get(key, key)
        if src not in tensors or tuple(tensors[src].shape) != saved[key]:
            raise CompressedFileError(f"{where}: tensor {key!r} is missing or of another shape.")
        if tensors[src].dtype != dtypes[key]:
            raise CompressedFileError(
                f"{where}: tensor {key!r} is {tensors[src].dtype} in the files but the "
                f"{'TT layer' if key in tt_keys else 'model'} holds "
                f"{dtypes[key]}; it would be cast silently. Load into a model of the dtype "
                f"it was saved from (model.to({tensors[src].dtype})), or save it again."
            )
        if tensors[src].is_floating_point() and not bool(torch.isfinite(tensors[src]).all()):
            raise CompressedFileError(f"{where}: tensor {key!r} holds NaN or Inf.")
    for name, spec in record["layers"].items():
        module = modules[name]
        ref = next(module.parameters())
        dtype = LAYER_DTYPES[spec["dtype"]]
        layer = TTLinear(
            spec["in_features"],
            spec["out_features"],
            spec["row_shape"],
            spec["col_shape"],
            spec["ranks"],
            spec["bias"],
            dtype=dtype,
            device=ref.device,
        )
        layer.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    state = {key: tensors[record["aliases"].get(key, key)] for key in saved}
    model.load_state_dict(state, strict=True)
    refuse_save_pretrained(model)
    return model
