"""The Method registry: what a fine-tuning method is, and the methods ``ttdecomp`` knows.

A method is one :class:`Method` object registered under its name with
:func:`register_method` (PEFT's ``register_peft_method`` in shape). Everything that names
methods — :class:`~ttdecomp.finetune.config.FinetuneConfig`, ``ttdecomp finetune --methods``,
the report's table and figures, the search space of ``ttdecomp search`` — asks this registry, so
a new method is one class and one :func:`register_method` call, and every job picks it up.

What a method declares (class attributes) and does (methods to override):

=========================  ============================================================
``name``                   the registry key, e.g. ``"tt-lora"`` (``--methods``)
``display_name``           how tables and figures name it, e.g. ``"TT-LoRA"``
``colour``                 its matplotlib colour in figures
``summary``                one line for ``--help``
``defaults``               recommended ``rank``, ``alpha``, ``lr`` (``None``: no such setting)
``task_defaults``          per task name, what differs from ``defaults``
``tasks``                  task names it applies to (``None``: every task)
``mergeable``              whether its update can be merged into the weights
``takes_tt_shape``         whether ``tt_shape`` (TT-LoRA's flat shape) applies
``family``                 methods of one family are joined by a line in the figure
                           (default: the method's own name)
``matches``                another method whose adapter parameters this one's rank matches:
                           the smallest rank with at least as many (``None``: a rank of its own;
                           :func:`~ttdecomp.finetune.resolve_settings` derives it)
``search_parameters``      searched name → :class:`MethodSettings` field
``integer_parameters``     searched names that are integers
``log_parameters``         searched names whose ranges are log-scaled by default
``search_space()``         the default search space (full and ``quick``)
``apply()``                make a frozen model trainable (in place or wrapped)
``is_adapter_parameter()`` which trainable parameters count as the adapter
``save()``, ``load()``     the saved format (default: the trainable parameters, by name)
``trainer_class()``        ``transformers.Trainer`` or a subclass
=========================  ============================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import InvalidInputError
from ...shapes import check_factor_count

__all__ = [
    "Method",
    "MethodSettings",
    "check_method",
    "default_settings",
    "get_method",
    "method_names",
    "methods_for",
    "register_method",
    "settings_from_mapping",
]

_REGISTRY: dict[str, Method] = {}
#: The file :meth:`Method.save` writes by default: every trainable parameter, by name.
TRAINED_FILE = "trained.safetensors"
_SETTINGS = ("lr", "rank", "alpha", "tt_shape")


class Method:
    """One fine-tuning method: its declared defaults and space, and how it adapts a model.

    Subclass it, set the class attributes, override :meth:`apply` and
    :meth:`is_adapter_parameter` (and :meth:`save` / :meth:`load` for a format of its own:
    the default saves every trainable parameter), then :func:`register_method` an instance.
    The module docstring lists what each attribute means.

    Examples
    --------
    >>> get_method("tt-lora").display_name, get_method("tt-lora").mergeable
    ('TT-LoRA', True)
    >>> get_method("lora").recommended()
    {'rank': 8, 'alpha': 16.0, 'lr': 0.002}
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    colour: ClassVar[str] = "tab:grey"
    summary: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {"rank": None, "alpha": None, "lr": 1e-3}
    task_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    tasks: ClassVar[tuple[str, ...] | None] = None
    mergeable: ClassVar[bool] = False
    takes_tt_shape: ClassVar[bool] = False
    #: the figure joins the means of one family's methods (LoRA at two ranks) by a line
    family: ClassVar[str | None] = None
    #: the method whose adapter parameter count this rank is derived from (resolve_settings)
    matches: ClassVar[str | None] = None
    search_parameters: ClassVar[Mapping[str, str]] = {"lr": "lr"}
    integer_parameters: ClassVar[frozenset[str]] = frozenset()
    log_parameters: ClassVar[frozenset[str]] = frozenset({"lr"})
    #: ``"tt"`` (TT adapters), ``"peft"``, ``"head"``: recorded on :class:`AdaptedModel`.
    kind: ClassVar[str] = "tt"

    # ------------------------------------------------------------------ declared settings
    def recommended(self, task: str | None = None) -> dict[str, Any]:
        """The recommended ``rank``, ``alpha`` and ``lr`` (for ``task`` when given)."""
        out = {k: self.defaults.get(k) for k in ("rank", "alpha", "lr")}
        if task is not None:
            out.update(self.task_defaults.get(task, {}))
        return out

    @property
    def family_name(self) -> str:
        """The family the figure joins this method's mean with (its own name by default)."""
        return self.family or self.name

    @property
    def has_rank(self) -> bool:
        return self.defaults.get("rank") is not None

    @property
    def has_alpha(self) -> bool:
        return self.defaults.get("alpha") is not None

    def supports(self, task: str) -> bool:
        """Whether the method applies to ``task``."""
        return self.tasks is None or task in self.tasks

    def why_not(self, task: str) -> str:
        """Why the method does not apply to ``task`` (for the error message)."""
        return f"{self.name} does not apply to {task} models ({self.summary})"

    def search_space(self, layer: tuple[int, int] | None, *, quick: bool) -> dict[str, Any]:
        """The default search space ``{name: spec}`` (see :mod:`ttdecomp.search.space`).

        ``layer`` is ``(out_features, in_features)`` of the targeted layers when they share
        one shape. The base class searches the learning rate around the recommended one.
        """
        lr = float(self.defaults["lr"])
        if quick:
            return {"lr": [lr]}
        return {"lr": {"low": lr / 5, "high": min(lr * 5, 0.5), "log": True}}

    # ------------------------------------------------------------------ behaviour
    def apply(
        self,
        model: Any,
        settings: MethodSettings,
        *,
        targets: list[str],
        heads: list[str],
        peft_task_type: str,
    ) -> Any:
        """Make the frozen ``model`` trainable; return what to train.

        ``heads`` are the head modules trained in full beside the adapter (empty for a causal
        LM); ``peft_task_type`` is PEFT's ``task_type`` of the task (``"SEQ_CLS"``,
        ``"CAUSAL_LM"``).
        """
        raise NotImplementedError(f"method {self.name!r} does not implement apply()")

    def is_adapter_parameter(self, name: str) -> bool:
        """Whether the trainable parameter ``name`` belongs to the adapter (not the head)."""
        return False

    def save(self, model: Any, folder: Path) -> None:
        """Write what ``model`` trained into the (fresh, empty) ``folder``.

        The base class writes every trainable parameter, by name, to
        ``trained.safetensors`` (:data:`TRAINED_FILE`); :meth:`load` reads it back.
        """
        from safetensors.torch import save_file

        state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(state, str(Path(folder) / TRAINED_FILE))

    def load(self, model: Any, folder: Path) -> Any:
        """Put what :meth:`save` wrote in ``folder`` onto the fresh ``model``; return the model."""
        from safetensors.torch import load_file

        path = Path(folder) / TRAINED_FILE
        if not path.is_file():
            raise InvalidInputError(f"{folder} holds no {TRAINED_FILE} for method {self.name!r}.")
        state = load_file(str(path))
        unknown = sorted(set(state) - {n for n, _ in model.named_parameters()})
        if unknown:
            raise InvalidInputError(
                f"{path} holds {unknown[:3]}{' ...' if len(unknown) > 3 else ''}, which are not "
                "parameters of this model. Was it saved for another model?"
            )
        model.load_state_dict(state, strict=False)
        return model

    def trainer_class(self) -> type:
        """The ``Trainer`` class that trains it."""
        from transformers import Trainer

        return Trainer

    def __repr__(self) -> str:
        return f"<Method {self.name!r}>"


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry under ``method.name``; return it.

    Its declaration is checked here: a name, recommended settings that are valid, a search
    space whose names it declares. ``replace=True`` replaces a method of the same name (a
    test's or a plug-in's own version).

    Examples
    --------
    >>> class Frozen(Method):
    ...     name = "frozen-doc"
    >>> register_method(Frozen()) in [get_method("frozen-doc")]
    True
    >>> unregister_method("frozen-doc")
    """
    if not isinstance(method, Method):
        raise InvalidInputError(
            f"register_method expects a Method instance; got {type(method).__name__}."
        )
    name = method.name
    if not isinstance(name, str) or not name or "," in name or "=" in name or "." in name:
        raise InvalidInputError(
            f"method name {name!r} must be a non-empty string without ',', '=' or '.' "
            "(they separate methods and settings on the command line)."
        )
    if name in _REGISTRY and not replace:
        raise InvalidInputError(
            f"a method named {name!r} is registered already; pass replace=True to replace it."
        )
    unknown = sorted(set(method.defaults) - {"rank", "alpha", "lr"})
    if unknown or "lr" not in method.defaults:
        raise InvalidInputError(
            f"method {name!r}: defaults must give lr and may give rank and alpha; got "
            f"{dict(method.defaults)!r}."
        )
    for field in set(method.search_parameters.values()):
        if field not in _SETTINGS:
            raise InvalidInputError(
                f"method {name!r}: search parameter field {field!r} is not a setting "
                f"({', '.join(_SETTINGS)})."
            )
    if method.matches is not None and (method.matches == name or not method.has_rank):
        raise InvalidInputError(
            f"method {name!r}: matches={method.matches!r} needs a method with a rank whose "
            "rank is derived from another method's parameter count."
        )
    previous = _REGISTRY.get(name)
    _REGISTRY[name] = method
    try:
        MethodSettings(method=name, **method.recommended())
        for task in method.task_defaults:
            MethodSettings(method=name, **method.recommended(task))
    except InvalidInputError:
        if previous is None:
            del _REGISTRY[name]
        else:
            _REGISTRY[name] = previous
        raise
    return method


def unregister_method(name: str) -> None:
    """Remove the method ``name`` from the registry (what a test registered)."""
    if name not in _REGISTRY:
        raise InvalidInputError(f"no method named {name!r} is registered.")
    del _REGISTRY[name]


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (the order tables list them).

    Examples
    --------
    >>> method_names()[:5]
    ('tt-lora', 'lora', 'loretta-rep', 'loretta-adp', 'head-only')
    """
    return tuple(_REGISTRY)


def methods_for(task: str) -> list[str]:
    """The registered methods that apply to ``task`` (a task name).

    Examples
    --------
    >>> "head-only" in methods_for("classification"), "head-only" in methods_for("causal")
    (True, False)
    """
    return [name for name, method in _REGISTRY.items() if method.supports(task)]


def get_method(name: Any) -> Method:
    """The registered method ``name``, or an error listing the known ones."""
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise InvalidInputError(
            f"unknown method {name!r}; expected one of {', '.join(_REGISTRY)} (--methods)."
        )
    return method


def check_method(method: Any) -> str:
    """``method`` if it is a registered method name, else an error listing the known ones."""
    return get_method(method).name


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class MethodSettings:
    """The hyperparameters of one method in one run.

    Parameters
    ----------
    method : str
        A registered method (:func:`method_names`).
    lr : float
        Learning rate (AdamW, constant).
    rank : int or None
        ``tt_rank`` of TT-LoRA, ``r`` of LoRA, ``tensor_rank`` of LoRETTA; ``None`` for a
        method without one (``head-only``).
    alpha : float or None
        TT-LoRA's raw scale, LoRA's ``lora_alpha``, LoRETTA-rep's ``alpha``; ``None`` where the
        method has none (``loretta-adp``, ``head-only``).
    tt_shape : list of int or None
        TT-LoRA's flat shape (input factors, then output factors); ``None`` gives every target
        layer :func:`~ttdecomp.finetune.methods.tt.default_tt_shape`.

    Examples
    --------
    >>> default_settings("tt-lora")
    MethodSettings(method='tt-lora', lr=0.01, rank=4, alpha=16.0, tt_shape=None)
    """

    method: str
    lr: float
    rank: int | None = None
    alpha: float | None = None
    tt_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        if not _is_real(self.lr) or not 0 < self.lr < 1:
            raise InvalidInputError(
                f"{self.method}: learning rate {self.lr!r} is out of range; expected a number in "
                "(0, 1), e.g. 1e-3 (--lr)."
            )
        if spec.has_rank and (
            isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank
        ):
            raise InvalidInputError(
                f"{self.method}: rank {self.rank!r} is out of range; expected an integer >= 1, "
                "e.g. 4 (--rank)."
            )
        if spec.has_rank and self.rank > 256:
            raise InvalidInputError(
                f"{self.method}: rank {self.rank} is larger than any adapter needs (at most 256); "
                "TT-LoRA uses 4-10, LoRA 4-64 (--rank)."
            )
        if not spec.has_rank and self.rank is not None:
            raise InvalidInputError(f"{self.method} has no rank; got rank={self.rank!r}.")
        if spec.has_alpha and (not _is_real(self.alpha) or not self.alpha > 0):
            raise InvalidInputError(
                f"{self.method}: alpha {self.alpha!r} is out of range; expected a number > 0 "
                "(--alpha)."
            )
        if not spec.has_alpha and self.alpha is not None:
            raise InvalidInputError(f"{self.method} has no alpha; got alpha={self.alpha!r}.")
        if self.tt_shape is not None:
            if not spec.takes_tt_shape:
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


def default_settings(method: str, *, task: str | None = None, **overrides: Any) -> MethodSettings:
    """The method's recommended settings (for ``task`` when given), with ``overrides`` applied.

    Examples
    --------
    >>> default_settings("lora", lr=2e-4).lr
    0.0002
    """
    spec = get_method(method)
    fields = {"method": method, **spec.recommended(task)}
    unknown = sorted(set(overrides) - set(_SETTINGS))
    if unknown:
        raise InvalidInputError(
            f"unknown settings {unknown} for {method}; expected lr, rank, alpha or tt_shape."
        )
    fields.update(overrides)
    return MethodSettings(**fields)


def settings_from_mapping(method: str, values: Mapping[str, Any]) -> MethodSettings:
    """:class:`MethodSettings` of ``method`` from a dict such as ``MethodSettings.to_dict()``."""
    fields = dict(values)
    fields.pop("method", None)
    if fields.get("tt_shape") is not None:
        fields["tt_shape"] = tuple(fields["tt_shape"])
    return MethodSettings(method=method, **fields)


def format_defaults(names: Sequence[str] | None = None, *, setting: str) -> str:
    """``"tt-lora 4, lora 8, ..."``: every method's recommended ``setting`` (for ``--help``).

    Examples
    --------
    >>> format_defaults(["tt-lora", "lora"], setting="lr")
    'tt-lora 0.01, lora 0.002'
    """
    parts = []
    for name in names if names is not None else method_names():
        method = get_method(name)
        if setting == "rank" and method.matches is not None:
            parts.append(f"{name} derived from {method.matches}'s parameters")
            continue
        value = method.recommended().get(setting)
        if value is not None:
            parts.append(f"{name} {value:g}")
    return ", ".join(parts)
