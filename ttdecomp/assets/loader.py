"""The one model loader: a packaged name, a local folder or a Hugging Face Hub id.

:func:`resolve_model` turns what the user gave (``--model``) into a local folder and its task,
reading nothing but the folder's ``config.json``; :func:`load_pretrained` loads the model for a
task (sequence classification, causal LM, or the bare encoder) and :func:`load_tokenizer` its
tokenizer. Every command and library path that loads a pretrained model goes through them, so a
GPT-2 folder is a causal LM to ``finetune`` and ``compress`` alike (:func:`model_task`).

A Hub id is fetched with ``huggingface_hub.snapshot_download`` into the Hub's own cache
(``$HF_HOME/hub``), at ``revision`` when given. Nothing here sets ``HF_HUB_OFFLINE``: when the
user's environment sets it, a model already in the cache loads and a missing one is an error
naming the id and the cache folder. Remote code in a Hub repository runs only with
``trust_remote_code=True``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .quantized import (
    apply_compute_dtype_,
    check_same_quantization,
    count_quantized_layers,
    describe_quantization,
    saved_kind,
)
from .registry import MODELS, canonical_model_name, model_path

__all__ = [
    "TASKS",
    "ModelSource",
    "check_model_folder",
    "check_tokenizer",
    "is_hub_id",
    "load_pretrained",
    "load_tokenizer",
    "model_task",
    "resolve_model",
]

#: What :func:`load_pretrained` can load a model as.
TASKS = ("classification", "causal", "encoder")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# files of other frameworks and original checkpoints that from_pretrained never reads
_HUB_IGNORE = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.gguf",
    "*.pth",
    "onnx/*",
    "openvino/*",
    "coreml/*",
    "original/*",
]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved to a local folder.

    Attributes
    ----------
    name : str
        What was given (a packaged name, a path or a Hub id).
    path : Path
        The folder ``from_pretrained`` reads (a packaged cache, the folder, a Hub snapshot).
    task : str
        ``"causal"`` or ``"classification"``, from the folder's config (:func:`model_task`).
    kind : str
        ``"packaged"``, ``"folder"`` or ``"hub"``.
    revision : str or None
        The Hub revision asked for (``None``: the default branch).
    """

    name: str
    path: Path
    task: str
    kind: str
    revision: str | None = None


def model_task(config: Mapping[str, Any]) -> str:
    """``"causal"`` or ``"classification"`` for a model's ``config.json`` (as a dict).

    A config whose ``architectures`` name a causal-LM class (``...ForCausalLM``,
    ``...LMHeadModel``: GPT-2's ``GPT2LMHeadModel`` too) is causal; one without architectures
    is causal when its ``model_type`` has a causal-LM class and no masked-LM class in
    transformers (GPT-2, Llama, ...; not BERT). Everything else is an encoder, fine-tuned as a
    sequence classifier.

    Examples
    --------
    >>> model_task({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    'causal'
    >>> model_task({"architectures": ["BertModel"], "model_type": "bert"})
    'classification'
    >>> model_task({"model_type": "llama"})
    'causal'
    """
    architectures = config.get("architectures") or []
    if any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal"
    if architectures:
        return "classification"
    model_type = config.get("model_type")
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:
        return "classification"
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "causal" if causal and not masked else "classification"


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repository id (``org/name`` or ``name``), and
    not of a path (``./x``, ``/x``, ``~/x``).

    Examples
    --------
    >>> is_hub_id("meta-llama/Llama-3.2-1B"), is_hub_id("./models/x"), is_hub_id("a/b/c")
    (True, False, False)
    """
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{path} is not a readable JSON config ({exc}); expected a folder written by "
            "save_pretrained."
        ) from None
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path} holds {type(config).__name__}, not a JSON object.")
    return config


def check_model_folder(folder: str | os.PathLike[str], *, weights: bool = True) -> dict[str, Any]:
    """Check that ``folder`` holds a config, PyTorch weights and tokenizer files; its config.

    Raises
    ------
    InvalidInputError
        Naming the folder and what is missing (a model folder without weights or without a
        tokenizer would otherwise load random weights or tokenize every word to ``[UNK]``).

    Examples
    --------
    >>> check_model_folder("/nonexistent")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: /nonexistent is not a model folder: it has no \
config.json. Give a packaged name, a folder written by save_pretrained, or a Hub id.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InvalidInputError(
            f"{folder} is not a model folder: it has no config.json. Give a packaged name, a "
            "folder written by save_pretrained, or a Hub id."
        )
    config = _read_config(folder)
    names = {p.name for p in folder.iterdir()}
    if weights and not (names & set(_WEIGHTS) or any(n.endswith(".safetensors") for n in names)):
        raise InvalidInputError(
            f"{folder} holds a config.json but no PyTorch weights (expected one of "
            f"{', '.join(_WEIGHTS)}); save the model with model.save_pretrained(folder), or "
            "convert TensorFlow/Flax weights first."
        )
    if not names & set(_TOKENIZER_FILES):
        raise InvalidInputError(
            f"{folder} holds no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)}); "
            "without them every word would be the unknown token. Save the tokenizer there with "
            "tokenizer.save_pretrained(folder)."
        )
    return config


def _hub_snapshot(repo_id: str, revision: str | None, trust_remote_code: bool) -> Path:
    """The local snapshot folder of a Hub model (downloaded into the Hub cache if needed)."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise InvalidInputError(
            f"--model {repo_id!r} is a Hub id, and loading from the Hub needs huggingface_hub: "
            'pip install "ttdecomp[hf]"'
        ) from None
    where = f"--model {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    ignore = list(_HUB_IGNORE) + ([] if trust_remote_code else ["*.py"])
    try:
        folder = snapshot_download(repo_id, revision=revision, ignore_patterns=ignore)
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise InvalidInputError(
            f"unknown model {repo_id!r}: not a packaged model ({', '.join(MODELS)}), not a "
            f"local folder, and, as a Hub id{' at ' + repr(revision) if revision else ''}, not "
            f"in the Hugging Face cache {constants.HF_HUB_CACHE} and not downloadable{offline}. "
            f"Download it once with a network (huggingface-cli download {repo_id}), point "
            "HF_HOME at the cache that holds it, or give a packaged name or a local folder."
        ) from None
    except GatedRepoError:
        raise InvalidInputError(
            f"{where} is gated on the Hub: accept its licence on huggingface.co/{repo_id} and "
            "log in (huggingface-cli login) first."
        ) from None
    except RevisionNotFoundError:
        raise InvalidInputError(f"{where}: no such revision on the Hub.") from None
    except RepositoryNotFoundError:
        raise InvalidInputError(
            f"{where}: no such model on the Hub (or it is private: log in with "
            "huggingface-cli login), no packaged model of that name "
            f"({', '.join(MODELS)}), and no such local folder."
        ) from None
    return Path(folder)


def _packaged_folder(key: str, progress: bool) -> Path:
    """The ``from_pretrained`` folder of a packaged model (assembled into the cache if needed)."""
    if key == "smollm2":
        from .smollm2 import smollm2_checkpoint

        return smollm2_checkpoint(progress=progress)
    if key == "mpnet":
        from .mpnet import mpnet_checkpoint

        return mpnet_checkpoint()
    return model_path(key)


def resolve_model(
    model: str | os.PathLike[str],
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> ModelSource:
    """Resolve ``--model`` to a local folder and its task, before any weights are read.

    In order: a packaged name (``minilm``, ``smollm2``, ``mpnet``; assembled into the cache on
    first use), an existing local folder, else a Hub id (``org/name``).

    Parameters
    ----------
    model : str or path
    revision : str, optional
        Hub only: a branch, tag or commit.
    trust_remote_code : bool
        Hub only: also fetch the repository's Python files (run only when loading with it).
    progress : bool
        Progress bars while a packaged model is assembled.

    Raises
    ------
    InvalidInputError
        An unknown name, a folder without config, weights or tokenizer, a Hub id that is not
        in the cache when offline (naming the cache folder), a revision for a local model.

    Examples
    --------
    >>> resolve_model("minilm").task  # doctest: +SKIP
    'classification'
    >>> resolve_model("./no/such/folder")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: --model './no/such/folder': no such folder (a Hub id is \
org/name without a leading ./ or /).
    """
    if isinstance(revision, str) and not revision.strip():
        raise InvalidInputError("--revision is empty; give a branch, tag or commit, or omit it.")
    if not isinstance(trust_remote_code, bool):
        raise InvalidInputError(
            f"trust_remote_code must be True or False; got {trust_remote_code!r}."
        )
    name = os.fspath(model)
    key = canonical_model_name(name) if isinstance(name, str) else None
    if key is not None and not Path(name).exists():
        if revision is not None:
            raise InvalidInputError(
                f"--revision {revision!r} is for Hub models; {name!r} is a packaged model."
            )
        folder = _packaged_folder(key, progress)
        return ModelSource(name, folder, MODELS[key].task, "packaged")
    path = Path(name).expanduser()
    if path.exists() or not is_hub_id(name):
        if not path.exists():
            raise InvalidInputError(
                f"--model {name!r}: no such folder (a Hub id is org/name without a leading ./ "
                "or /)."
            )
        if not path.is_dir():
            raise InvalidInputError(
                f"--model {name!r} is a file; give a model folder (config.json, weights, "
                "tokenizer), a packaged name or a Hub id."
            )
        if revision is not None:
            raise InvalidInputError(
                f"--revision {revision!r} is for Hub models; {name!r} is a local folder."
            )
        config = check_model_folder(path)
        return ModelSource(name, path, model_task(config), "folder")
    folder = _hub_snapshot(name, revision, trust_remote_code)
    config = check_model_folder(folder)
    return ModelSource(name, folder, model_task(config), "hub", revision)


def _source(
    model: str | os.PathLike[str] | ModelSource, revision: str | None, trust_remote_code: bool
) -> ModelSource:
    if isinstance(model, ModelSource):
        return model
    return resolve_model(model, revision=revision, trust_remote_code=trust_remote_code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_pretrained(
    model: str | os.PathLike[str] | ModelSource,
    *,
    task: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: Any = None,
    dtype: Any = None,
    quantization_config: Any = None,
    labels: Sequence[str] | None = None,
    seed: int | None = None,
) -> Any:
    """Load a pretrained model for ``task``, in eval mode.

    Parameters
    ----------
    model : str, path or ModelSource
        A packaged name, a local folder or a Hub id (see :func:`resolve_model`), or what that
        returned.
    task : {"classification", "causal", "encoder"}
        ``AutoModelForSequenceClassification`` (a new head for ``labels``),
        ``AutoModelForCausalLM`` or ``AutoModel`` (the bare encoder, e.g. for compression).
    revision, trust_remote_code
        Hub only (see :func:`resolve_model`); remote code runs only with ``True``.
    device : str or torch.device, optional
        Where the model goes (default: where transformers puts it, the CPU).
    dtype : torch.dtype, optional
        Default ``torch.float32``.
    quantization_config : transformers quantization config, optional
        Passed to ``from_pretrained`` (e.g. ``BitsAndBytesConfig``); the model then keeps its
        quantizer, and ``device`` becomes its ``device_map``. A load that quantized no layer
        is refused (torchao converts ``nn.Linear`` only, not GPT-2's ``Conv1D``).

        A checkpoint saved quantized (its ``config.json`` has a ``quantization_config``: a
        ``save_pretrained`` of a bitsandbytes 4-bit/8-bit or torchao int8 weight-only model,
        such as the Hub's ``*-bnb-4bit`` repositories) loads as saved, with or without this
        argument; given, it must store the weights the same way (a 4-bit compute dtype is
        applied), else :class:`InvalidInputError`. A checkpoint saved with a quantization the
        adapters cannot wrap (GPTQ, AWQ, HQQ, FP8 ...) is refused before any weight is read.
        A model that still carries a quantizer otherwise (a GGUF load) is refused:
        ``Trainer`` would not train it.
    labels : sequence of str, optional
        ``classification`` only, required there: the class names of the new head.
    seed : int, optional
        ``transformers.set_seed(seed)`` before loading (the new head's initialisation).

    Returns
    -------
    transformers.PreTrainedModel

    Raises
    ------
    InvalidInputError
        An unknown task, missing labels, or a model that cannot be loaded (the reason given).

    Examples
    --------
    >>> import tempfile
    >>> from ttdecomp.finetune.testing import tiny_classifier_folder
    >>> folder = tiny_classifier_folder(tempfile.mkdtemp())
    >>> net = load_pretrained(folder, task="classification", labels=["neg", "pos"], seed=0)
    >>> net.config.id2label, net.training
    ({0: 'neg', 1: 'pos'}, False)
    """
    if task not in TASKS:
        raise InvalidInputError(f"task must be one of {', '.join(TASKS)}; got {task!r}.")
    if task == "classification":
        if labels is None or isinstance(labels, str) or len(labels) < 2:
            raise InvalidInputError(
                f"a classification model needs labels: two or more class names; got {labels!r}."
            )
    elif labels is not None:
        raise InvalidInputError(f"labels are for task='classification', not {task!r}.")
    source = _source(model, revision, trust_remote_code)
    import torch
    import transformers

    loader = {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
    }[task]
    kwargs: dict[str, Any] = {"dtype": torch.float32 if dtype is None else dtype}
    if task == "classification":
        names = [str(n) for n in labels]  # type: ignore[union-attr]
        kwargs.update(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            # a classifier saved with another number of classes gets the new head all the same
            ignore_mismatched_sizes=True,
        )
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    # a checkpoint saved quantized (config.json's quantization_config) loads as saved, and
    # transformers would silently ignore another quantization config: checked here
    saved = _read_config(Path(source.path)).get("quantization_config")
    requested = quantization_config
    if saved is not None:
        saved_kind(saved)  # refuses, before reading a weight, what the adapters cannot wrap
        if requested is not None:
            check_same_quantization(saved, requested, name=source.name)
    quantized = saved is not None or requested is not None
    if requested is not None and saved is None:
        kwargs["quantization_config"] = requested
    if quantized and device is not None:
        kwargs["device_map"] = {"": str(device)}
    if seed is not None:
        transformers.set_seed(seed)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head's "newly initialized" report is expected
    try:
        net = loader.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        hint = (
            " The repository holds its own code: pass trust_remote_code=True "
            "(--trust-remote-code) if you trust it."
            if "trust_remote_code" in str(exc)
            else ""
        )
        raise InvalidInputError(
            f"cannot load {source.name!r} ({source.path}) as a {task} model: "
            f"{_first_line(exc)}{hint}"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if quantized:
        _check_quantized(net, requested if saved is None else saved, source.name)
        compute = getattr(requested, "bnb_4bit_compute_dtype", None)
        if saved is not None and compute is not None:
            apply_compute_dtype_(net, compute)  # not stored: transformers keeps the saved one
    elif getattr(net, "hf_quantizer", None) is not None or getattr(net, "is_quantized", False):
        from .smollm2 import quantized_model_message

        raise InvalidInputError(quantized_model_message(net))
    if device is not None and not quantized:
        net = net.to(device)
    return net.eval()


def _check_quantized(net: Any, config: Any, name: str) -> None:
    """Refuse a quantized load that quantized no layer (torchao leaves GPT-2's Conv1D as is)."""
    if count_quantized_layers(net) > 0:
        return
    kinds = sorted(
        {
            type(m).__name__
            for m in net.modules()
            if getattr(m.__dict__.get("_parameters", {}).get("weight"), "ndim", 0) == 2
        }
    )
    raise InvalidInputError(
        f"{describe_quantization(config)} quantized no layer of {type(net).__name__} "
        f"({name!r}), whose layers with a matrix weight are {', '.join(kinds) or 'none'}: "
        "training would run on the full-precision model as if it were quantized. torchao "
        "converts torch.nn.Linear layers only; bitsandbytes (--quantize 4bit or 8bit) also "
        "converts transformers' Conv1D (GPT-2). Choose one of those, or drop --quantize."
    )


def load_tokenizer(
    model: str | os.PathLike[str] | ModelSource,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    pad_with_eos: bool = False,
) -> Any:
    """The tokenizer of a model (see :func:`resolve_model` for ``model``).

    ``pad_with_eos=True`` gives a tokenizer without a pad token its end-of-sequence token as
    the pad token (what causal LMs need to batch).

    Examples
    --------
    >>> import tempfile
    >>> from ttdecomp.finetune.testing import tiny_classifier_folder
    >>> load_tokenizer(tiny_classifier_folder(tempfile.mkdtemp())).unk_token
    '[UNK]'
    """
    source = _source(model, revision, trust_remote_code)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(source.path), **({"trust_remote_code": True} if trust_remote_code else {})
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"cannot load the tokenizer of {source.name!r} ({source.path}): {_first_line(exc)}"
        ) from None
    if pad_with_eos and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_tokenizer(
    tokenizer: Any, texts: Sequence[str], *, source: str = "the data", limit: float = 0.5
) -> float:
    """Refuse a tokenizer that turns ``texts`` mostly into its unknown token; the fraction.

    A model folder with a tokenizer of another model (or of another script) would train on
    ``[UNK]`` sequences to chance accuracy without a word. Up to 256 texts are tokenized; when
    more than ``limit`` of their tokens (special tokens aside) are the unknown token, this
    raises. A tokenizer without an unknown token (byte-level BPE) always passes.

    Examples
    --------
    >>> import tempfile
    >>> from ttdecomp.finetune.testing import tiny_classifier_folder
    >>> tok = load_tokenizer(tiny_classifier_folder(tempfile.mkdtemp()))
    >>> check_tokenizer(tok, ["the ride was great"])
    0.0
    >>> check_tokenizer(tok, ["поездка была отличной"], source="reviews.csv")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: 100% of the tokens of reviews.csv are the unknown \
token [UNK] of the tokenizer BertTokenizer...
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return 0.0
    sample = list(texts[:256])
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    if total == 0:
        return 0.0
    fraction = sum(row.count(unk) for row in ids) / total
    if fraction > limit:
        raise InvalidInputError(
            f"{fraction:.0%} of the tokens of {source} are the unknown token "
            f"{tokenizer.unk_token} of the tokenizer {type(tokenizer).__name__}, so the model "
            "would learn from nothing. Use the tokenizer the model was trained with (save it "
            "into the model folder), or a model whose vocabulary covers the data's language."
        )
    return fraction
