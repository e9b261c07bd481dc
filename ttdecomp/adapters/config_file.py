"""The config's JSON file: its name, format version and record, and the error of a bad save.

An adapter config is saved alone (``TTAdapterConfig.save_pretrained``) or with the adapter
weights (``TTAdapterModel.save_pretrained``, :mod:`ttdecomp.adapters.serialization`) as
:data:`CONFIG_NAME`: a record of the format version, the ttdecomp version that wrote it, the
method, the base model and the config's ``to_dict()``. This module writes and reads that
record; :func:`ttdecomp.adapters.config.load_config` turns its ``config`` entry back into a
config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .._files import write_files
from ..errors import InvalidInputError

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "AdapterFileError",
    "read_config_file",
    "version",
    "write_config_file",
]

CONFIG_NAME = "ttdecomp_config.json"
WEIGHTS_NAME = "ttdecomp_adapter.safetensors"
FORMAT_VERSION = 1


class AdapterFileError(InvalidInputError):
    """A saved adapter that is missing, corrupted, truncated, or does not fit the model.

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from ttdecomp.adapters import AdapterFileError, TTAdapterModel
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8))
    >>> try:
    ...     TTAdapterModel.from_pretrained(net, tempfile.mkdtemp())  # an empty folder
    ... except AdapterFileError:
    ...     print("refused")
    refused
    """


def version() -> str:
    """The installed ttdecomp's version, recorded in every saved file.

    Examples
    --------
    >>> isinstance(version(), str)
    True
    """
    try:
        return metadata.version("ttdecomp")
    except metadata.PackageNotFoundError:
        import ttdecomp

        return str(getattr(ttdecomp, "__version__", "unknown"))


def write_config_file(folder: str | Path, config: Mapping[str, Any]) -> None:
    """Write ``config`` (a config's ``to_dict()``) as :data:`CONFIG_NAME` in ``folder``
    (atomically, no links), in its versioned record.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_config_file(folder, {"method": "tt-lora", "tt_rank": 4})
    >>> read_config_file(folder)[1]
    {'method': 'tt-lora', 'tt_rank': 4}
    """
    record = {
        "format_version": FORMAT_VERSION,
        "ttdecomp_version": version(),
        "method": config["method"],
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "config": dict(config),
    }
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    write_files([(Path(folder) / CONFIG_NAME, data)], error=AdapterFileError)


def read_config_file(folder: str | Path) -> tuple[Path, Any]:
    """The path of ``folder``'s :data:`CONFIG_NAME` (``folder`` may be that file) and the
    ``config`` entry of its record, or :class:`AdapterFileError` for a missing file, one that
    is not JSON, or a record of another format version.

    Examples
    --------
    >>> import tempfile
    >>> read_config_file(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ttdecomp.adapters.config_file.AdapterFileError: ...ttdecomp_config.json does not exist; ...
    """
    path = Path(folder)
    if path.is_file() and path.name == CONFIG_NAME:
        path = path.parent
    cfg_path = path / CONFIG_NAME
    if not path.is_dir():
        raise AdapterFileError(
            f"{folder} is not a folder; from_pretrained reads a local folder holding "
            f"{CONFIG_NAME}. For a Hub repository, download it first, e.g. with "
            "huggingface_hub.snapshot_download(repo_id)."
        )
    if not cfg_path.is_file():
        raise AdapterFileError(
            f"{cfg_path} does not exist; a folder written by save_pretrained holds {CONFIG_NAME}."
        )
    try:
        record = json.loads(cfg_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise AdapterFileError(
            f"{cfg_path} could not be read as JSON ({exc}); the file is corrupted or truncated."
        ) from None
    version = record.get("format_version") if isinstance(record, dict) else None
    if version != FORMAT_VERSION or "config" not in record:
        raise AdapterFileError(
            f"{cfg_path} has format_version {version!r} (this ttdecomp reads "
            f"{FORMAT_VERSION}) or no 'config' entry; is it a {CONFIG_NAME} written by "
            "ttdecomp.adapters?"
        )
    return cfg_path, record["config"]
