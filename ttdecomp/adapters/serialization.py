"""Saving and loading adapters: ``ttdecomp_config.json`` + ``ttdecomp_adapter.safetensors``.

The names differ from PEFT's on purpose (transformers auto-detects ``adapter_config.json`` and
would try to load our files as PEFT's). The JSON records the ttdecomp version, the method and its
config, the base model's name, the adapter dtype, and every adapted module with its TT shapes and
ranks. Loading reads both files completely and checks every tensor's name, shape and dtype against
what the config implies for the given model **before** the model is modified.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, ShapeError
from .config import TTAdapterConfig, config_from_dict
from .inject import (
    build_adapter,
    check_adapter_name,
    get_adapter_state_dict,
    inject_adapter_in_model,
    set_adapter_state_dict,
)
from .targets import inspect_targets, logical_modules, select_modules_to_save

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterFileError",
    "load_adapter",
    "load_adapter_weights",
    "save_adapter",
]

CONFIG_NAME = "ttdecomp_config.json"
WEIGHTS_NAME = "ttdecomp_adapter.safetensors"
FORMAT_VERSION = 1


class AdapterFileError(InvalidInputError):
    """A saved adapter that is missing, corrupted, truncated, or does not fit the model."""


def _version() -> str:
    try:
        return metadata.version("ttdecomp")
    except metadata.PackageNotFoundError:
        import ttdecomp

        return str(getattr(ttdecomp, "__version__", "unknown"))


def save_adapter(
    model: nn.Module, config: TTAdapterConfig, adapter_name: str, folder: str | Path
) -> None:
    """Write one adapter of ``model`` to ``folder`` (created if needed).

    Examples
    --------
    >>> import tempfile, torch
    >>> from ttdecomp.adapters import TTLoRAConfig, get_tt_model
    >>> m = get_tt_model(torch.nn.Sequential(torch.nn.Linear(16, 16)),
    ...                  TTLoRAConfig(target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     m.save_pretrained(d)
    ...     sorted(p.name for p in Path(d).iterdir())
    ['ttdecomp_adapter.safetensors', 'ttdecomp_config.json']
    """
    from safetensors.torch import save_file

    tensors = get_adapter_state_dict(model, adapter_name)
    infos = inspect_targets(model, config)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    record = {
        "format_version": FORMAT_VERSION,
        "ttdecomp_version": _version(),
        "method": config.method,
        "adapter_name": adapter_name,
        "base_model_name_or_path": config.base_model_name_or_path,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "config": config.to_dict(),
        "modules": {
            i.name: {
                "module_type": i.module_type,
                "out_features": i.out_features,
                "in_features": i.in_features,
                "tt_matrices": {
                    k: {kk: list(vv) for kk, vv in v.items()} for k, v in i.tt_matrices.items()
                },
                "n_params": i.n_params,
            }
            for i in infos
        },
        "modules_to_save": select_modules_to_save(model, config),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        str(folder / WEIGHTS_NAME),
        metadata={"format": "pt", "ttdecomp_version": _version(), "method": config.method},
    )
    (folder / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise AdapterFileError(
                f"{p} does not exist. An adapter folder written by save_pretrained holds "
                f"{CONFIG_NAME} and {WEIGHTS_NAME}."
            )
    try:
        record = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(
            f"{cfg_path} is not valid JSON ({exc}); the file is corrupted or truncated. "
            "Save the adapter again."
        ) from None
    version = record.get("format_version") if isinstance(record, dict) else None
    if version != FORMAT_VERSION:
        raise AdapterFileError(
            f"{cfg_path} has format_version {version!r}; this ttdecomp reads version "
            f"{FORMAT_VERSION}. Is it a {CONFIG_NAME} written by ttdecomp.adapters?"
        )
    try:
        tensors = load_file(str(w_path))
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError variants
        raise AdapterFileError(
            f"{w_path} could not be read ({type(exc).__name__}: {exc}); the file is corrupted or "
            "truncated. Save the adapter again."
        ) from None
    return record, tensors


def load_adapter(
    model: nn.Module, path: str | Path, adapter_name: str = "default"
) -> TTAdapterConfig:
    """Validate the adapter saved in ``path`` against ``model``, then inject and fill it.

    Returns the adapter's config. Raises :class:`AdapterFileError` / :class:`ShapeError` without
    touching ``model`` when the files are unreadable or any tensor's name, shape or dtype does not
    match what the config implies for this model.
    """
    check_adapter_name(adapter_name)
    folder = Path(path)
    record, tensors = _read(folder)
    try:
        config = config_from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFileError(
            f"{folder / CONFIG_NAME} has an invalid 'config' entry: {exc}"
        ) from None
    infos = {i.name: i for i in inspect_targets(model, config)}
    saved_modules = record.get("modules", {})
    if set(saved_modules) != set(infos):
        raise AdapterFileError(
            f"the adapter was saved for modules {sorted(saved_modules)[:4]}... but its config "
            f"selects {sorted(infos)[:4]}... in this model; is it the same architecture?"
        )
    for name, info in infos.items():
        saved = saved_modules[name]
        got = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in info.tt_matrices.items()}
        if (saved.get("out_features"), saved.get("in_features")) != (
            info.out_features,
            info.in_features,
        ) or saved.get("tt_matrices") != got:
            raise ShapeError(
                f"module {name!r}: the adapter was saved for a {saved.get('out_features')} x "
                f"{saved.get('in_features')} layer with TT shapes {saved.get('tt_matrices')}, but "
                f"this model's layer is {info.out_features} x {info.in_features} ({got})."
            )
    expected = _expected_tensors(model, config, infos)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(
            f"{folder / WEIGHTS_NAME} does not match the config: missing tensors {missing[:5]}, "
            f"unexpected tensors {unexpected[:5]}."
        )
    for key, (shape, dtype) in expected.items():
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise ShapeError(
                f"tensor {key!r} in {folder / WEIGHTS_NAME} has shape {tuple(t.shape)}; the model "
                f"expects {shape}."
            )
        if t.dtype != dtype:
            raise AdapterFileError(
                f"tensor {key!r} in {folder / WEIGHTS_NAME} has dtype {t.dtype}; this model's "
                f"adapter would be {dtype}. Load into a base model of the dtype the adapter was "
                "trained with (float32 adapters serve float16/bfloat16 bases too)."
            )
    inject_adapter_in_model(config, model, adapter_name, _init="zero")  # values come next
    set_adapter_state_dict(model, tensors, adapter_name)
    return config


def _expected_tensors(
    model: nn.Module, config: TTAdapterConfig, infos: dict[str, Any]
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes the adapter would have, built on the meta device (no memory)."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, info in infos.items():
        weight = model.get_submodule(name).weight
        meta_weight = torch.empty(0, dtype=weight.dtype, device="meta")
        adapter = build_adapter(config, info, meta_weight)
        for pname, p in adapter.named_parameters():
            out[f"{name}.{pname}"] = (tuple(p.shape), p.dtype)
    modules = dict(logical_modules(model))
    for name in select_modules_to_save(model, config):
        for pname, p in modules[name].named_parameters():
            out[f"{name}.{pname}"] = (tuple(p.shape), p.dtype)
        for bname, b in modules[name].named_buffers():
            out[f"{name}.{bname}"] = (tuple(b.shape), b.dtype)
    return out


def load_adapter_weights(model: nn.Module, path: str | Path, adapter_name: str = "default") -> None:
    """Copy the tensors saved in ``path`` into the existing adapter ``adapter_name`` of ``model``.

    Used to resume training: the adapter is already injected, only its values change. Every
    name, shape and dtype is checked before anything is copied.
    """
    _record, tensors = _read(Path(path))
    set_adapter_state_dict(model, tensors, adapter_name)
