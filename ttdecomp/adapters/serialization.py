"""Saving and loading adapters: ``ttdecomp_config.json`` + ``ttdecomp_adapter.safetensors``.

The names differ from PEFT's on purpose (transformers auto-detects ``adapter_config.json`` and
would try to load our files as PEFT's). The JSON records the ttdecomp version, the method and its
config, the base model's name, the adapter dtype, and every adapted module with its TT shapes and
ranks. Loading reads both files completely and checks every tensor's name, shape and dtype against
what the config implies for the given model **before** the model is modified, and refuses
non-finite values.

Saving is transactional: every file of a save (all adapters of a ``save_pretrained`` call) is
written to a temporary file in its target folder and renamed into place only when all are
written, weights before configs. Both files of one adapter carry the same ``save_id``, so a
reader that meets a pair from two different saves (a rename interrupted by a kill) refuses it.
Nothing is ever written through a symbolic link.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _files
from ..errors import ShapeError
from .config import TTAdapterConfig, config_from_dict, load_config, save_config
from .config_file import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, AdapterFileError, version
from .inject import (
    build_adapter,
    build_packed,
    check_adapter_name,
    get_adapter_state_dict,
    inject_adapter_in_model,
    set_adapter_state_dict,
)
from .packed import Packed
from .quantized import base_quantization, reference_weight
from .targets import inspect_targets, logical_modules, module_tree, select_modules_to_save

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterFileError",
    "load_adapter",
    "load_adapter_weights",
    "load_config",
    "save_adapter",
    "save_adapters",
    "save_config",
]

_log = logging.getLogger(__name__)


def save_adapter(
    model: nn.Module, config: TTAdapterConfig, adapter_name: str, folder: str | Path
) -> None:
    """Write one adapter of ``model`` to ``folder`` (created if needed), transactionally.

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
    save_adapters(model, {adapter_name: (config, Path(folder))})


def save_adapters(model: nn.Module, adapters: dict[str, tuple[TTAdapterConfig, Path]]) -> None:
    """Write several adapters ``{name: (config, folder)}`` as one transaction.

    Every file is serialised in memory and written to a temporary file next to its target; the
    temporaries are renamed into place (weights, then configs) only when all are written. If
    anything fails before that, the previous files are left byte-identical and the temporaries
    are removed. Raises :class:`AdapterFileError` when a target is a symbolic link or a file, or
    cannot be written.
    """
    files: list[tuple[Path, bytes]] = []
    configs: list[tuple[Path, bytes]] = []
    for name, (config, folder) in adapters.items():
        weights, record = _serialise(model, config, name)
        files.append((Path(folder) / WEIGHTS_NAME, weights))
        configs.append((Path(folder) / CONFIG_NAME, record))
    write_files(files + configs)


def _serialise(model: nn.Module, config: TTAdapterConfig, adapter_name: str) -> tuple[bytes, bytes]:
    """The bytes of ``(weights file, config file)`` of one adapter, sharing one ``save_id``."""
    from safetensors.torch import save

    tensors = get_adapter_state_dict(model, adapter_name)
    tree = module_tree(model)
    infos = inspect_targets(model, config, modules=tree)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    save_id = uuid.uuid4().hex
    record = {
        "format_version": FORMAT_VERSION,
        "ttdecomp_version": version(),
        "save_id": save_id,
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
                # only for a quantized base: full-precision records stay as they were
                **(
                    {"base_quantization": base_quantization(tree[i.name])}
                    if base_quantization(tree[i.name]) != "none"
                    else {}
                ),
            }
            for i in infos
        },
        "modules_to_save": select_modules_to_save(model, config),
    }
    weights = save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        metadata={
            "format": "pt",
            "ttdecomp_version": version(),
            "method": config.method,
            "save_id": save_id,
        },
    )
    return weights, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def write_files(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write ``[(path, bytes), ...]`` all-or-nothing (:func:`ttdecomp._files.write_files`),
    raising :class:`AdapterFileError`."""
    _files.write_files(files, error=AdapterFileError)


def remove_stale_adapters(root: Path, keep: Sequence[str]) -> list[str]:
    """Remove adapter sub-folders of ``root`` left by an earlier save, for adapters not in ``keep``.

    A sub-folder is an adapter sub-folder when its config records its own folder name as the
    adapter name (what ``save_pretrained`` writes); other folders (trainer checkpoints, user
    data) and symbolic links are left alone. Only the two adapter files are deleted, then the
    folder if that left it empty. Returns the names removed.
    """
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for sub in sorted(root.iterdir()):
        cfg = sub / CONFIG_NAME
        if sub.is_symlink() or not sub.is_dir() or sub.name in keep or cfg.is_symlink():
            continue
        try:
            record = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("adapter_name") != sub.name:
            continue
        for name in (CONFIG_NAME, WEIGHTS_NAME):  # config first: never a config without weights
            with contextlib.suppress(FileNotFoundError):
                (sub / name).unlink()
        with contextlib.suppress(OSError):
            sub.rmdir()
        removed.append(sub.name)
    return removed


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (empty when absent or unreadable)."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
    except (struct.error, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load

    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise AdapterFileError(
                f"{p} does not exist. An adapter folder written by save_pretrained holds "
                f"{CONFIG_NAME} and {WEIGHTS_NAME}."
            )
    try:
        cfg_bytes, data = cfg_path.read_bytes(), w_path.read_bytes()
    except OSError as exc:
        raise AdapterFileError(
            f"{exc.filename or folder} could not be read ({exc.strerror or exc}). Check the "
            "file's permissions."
        ) from None
    try:
        record = json.loads(cfg_bytes.decode())
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
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError variants
        raise AdapterFileError(
            f"{w_path} could not be read ({type(exc).__name__}: {exc}); the file is corrupted or "
            "truncated. Save the adapter again."
        ) from None
    saved_id, weights_id = record.get("save_id"), _safetensors_metadata(data).get("save_id")
    if saved_id is not None and weights_id is not None and saved_id != weights_id:
        raise AdapterFileError(
            f"{cfg_path} and {w_path} come from different saves (save_id {saved_id} vs "
            f"{weights_id}); a save was interrupted while renaming its files. Save the adapter "
            "again."
        )
    floats = [t for t in tensors.values() if t.is_floating_point() or t.is_complex()]
    if floats and bool(torch.isfinite(torch.cat([t.reshape(-1) for t in floats])).all()):
        return record, tensors  # one check for all tensors; the loop below names the culprit
    for key, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise AdapterFileError(
                f"tensor {key!r} in {w_path} holds {n_bad} non-finite value(s) (NaN or Inf); "
                "the adapter diverged or the file was damaged. Use an earlier checkpoint."
            )
    return record, tensors


def load_adapter(
    model: nn.Module, path: str | Path, adapter_name: str = "default", *, activate: bool = True
) -> TTAdapterConfig:
    """Validate the adapter saved in ``path`` against ``model``, then inject and fill it.

    With ``activate`` the adapter becomes the active and only trainable one (as
    :func:`~ttdecomp.adapters.inject_adapter_in_model` leaves it); otherwise it is added
    frozen and inactive, touching nothing else (a TT-LoRA adapter is then held packed, one
    flat parameter per layer, until it is activated: see :mod:`ttdecomp.adapters.packed`).
    Returns the adapter's config. Raises
    :class:`AdapterFileError` / :class:`ShapeError` without touching ``model`` when the files
    are unreadable or any tensor's name, shape or dtype does not match what the config implies
    for this model.
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
    tree = module_tree(model)  # one walk of the model for every step below
    infos = {i.name: i for i in inspect_targets(model, config, modules=tree)}
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
    # the adapters are built once, uninitialised (the values come from the file): their
    # parameters are what the file must match, and then what is injected. Inactive TT-LoRA
    # adapters are held packed (one flat parameter per layer, no modules; see packed.py)
    built: dict[str, nn.Module | Packed] = {}
    for name, info in infos.items():
        weight = reference_weight(tree[name])
        packed = None if activate else build_packed(config, info, weight)
        built[name] = (
            packed if packed is not None else build_adapter(config, info, weight, init=None)
        )
    copies = select_modules_to_save(model, config, modules=tree)
    expected = _expected_tensors(model, built, copies, tree)
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
    # every name, shape and dtype is checked: the values go straight into the built adapters,
    # and into the modules-to-save copies once the model holds them
    with torch.no_grad():
        for name, adapter in built.items():
            if isinstance(adapter, Packed):
                n_cores = len(adapter.spec.core_shapes)
                cores = [tensors[f"{name}.cores.{k}"].reshape(-1) for k in range(n_cores)]
                adapter.flat.copy_(torch.cat(cores))
            else:
                for pname, p in adapter.named_parameters():
                    p.copy_(tensors[f"{name}.{pname}"])
    inject_adapter_in_model(
        config,
        model,
        adapter_name,
        _activate=activate,
        _prebuilt=(list(infos.values()), built),
        _modules=tree,
    )
    with torch.no_grad():
        for name in copies:
            copy_ = model.get_submodule(name).modules_to_save[adapter_name]
            for pname, t in [*copy_.named_parameters(), *copy_.named_buffers()]:
                t.copy_(tensors[f"{name}.{pname}"])
    _note_base_quantization(folder, saved_modules, tree)
    return config


def _note_base_quantization(
    folder: Path, saved_modules: dict[str, Any], tree: dict[str, nn.Module]
) -> None:
    """Log when the adapter was trained on a base quantized otherwise than this model's.

    It still loads (the cores do not depend on how the base is stored); what it learned partly
    corrects the quantization error of the base it was trained on. Files saved before this was
    recorded say nothing and are taken as trained on a full-precision base.
    """
    pairs = {
        (saved.get("base_quantization", "none"), base_quantization(tree[name]))
        for name, saved in saved_modules.items()
    }
    for trained, here in sorted(p for p in pairs if p[0] != p[1]):
        _log.info(
            "adapter %s was trained on a base with %s weights and is loaded on a base with %s "
            "weights: it loads and runs as saved, but it learned beside the weights it was "
            "trained on, so outputs differ from the trained model's by the difference between "
            "the two bases (the quantization error), not by anything in the adapter.",
            folder,
            "full-precision" if trained == "none" else trained,
            "full-precision" if here == "none" else here,
        )


def _expected_tensors(
    model: nn.Module,
    built: dict[str, nn.Module | Packed],
    copies: list[str],
    tree: dict[str, nn.Module],
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of the adapter's tensors (``built``: its adapters by target;
    ``copies``: its modules to save; ``tree``: the model's ``module_tree``)."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, adapter in built.items():
        if isinstance(adapter, Packed):
            for k, shape in enumerate(adapter.spec.core_shapes):
                out[f"{name}.cores.{k}"] = (shape, adapter.flat.dtype)
            continue
        for pname, p in adapter.named_parameters():
            out[f"{name}.{pname}"] = (tuple(p.shape), p.dtype)
    modules = dict(logical_modules(model, tree))
    for name in copies:
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
