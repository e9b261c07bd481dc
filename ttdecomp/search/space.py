"""The search space of ``ttdecomp search``: per method, which hyperparameters vary and how.

A space maps each method to its parameters, each given as

* a list — the values to choose from (``tt_rank: [2, 4, 8]``);
* a mapping ``{low, high, log}`` — a range (``lr: {low: 1e-4, high: 1e-2}``; ``log`` defaults
  to true for ``lr`` and ``alpha``); the grid sampler takes ``grid_points`` values across it
  (log-spaced on a log range);
* a single value — fixed.

Parameter names are the methods' own, declared by each registered method
(:attr:`~ttdecomp.finetune.methods.Method.search_parameters`): TT-LoRA ``tt_shape``,
``tt_rank``, ``alpha``, ``lr``; LoRA ``r``, ``lora_alpha``, ``lr``; LoRETTA ``tensor_rank`` (and
``alpha`` for ``loretta-rep``), ``lr``; head-only ``lr``. A ``tt_shape`` value is a flat shape,
input factors then output factors, written as a list or as ``"8,6,8,8,6,8"``.

:func:`default_space` is the space searched when none is given, each method's own
(:meth:`~ttdecomp.finetune.methods.Method.search_space`): TT-LoRA over the shapes
:func:`tt_shape_candidates` gives for the targeted layer (the planner's factorisations with
4, 6 and 8 cores and the default balanced shape), ranks 2-8, α 4-64 and lr 1e-3-2e-2; LoRA over
r 4-16, ``lora_alpha`` 8-32 and lr 1e-4-5e-3. :func:`load_space` reads a YAML or JSON file and
:func:`parse_param` one ``METHOD.NAME=SPEC`` override of the command line.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import MAX_JSON_DEPTH, check_nesting
from ..errors import InvalidInputError, ShapeError
from ..finetune.methods import (
    MethodSettings,
    check_method,
    default_settings,
    get_method,
    method_names,
)
from ..finetune.methods.tt import tt_shape_candidates
from ..shapes import check_factor_count

__all__ = [
    "PARAMETERS",
    "SEARCH_METHODS",
    "Param",
    "SearchSpace",
    "default_space",
    "load_space",
    "parse_param",
    "tt_shape_candidates",
]

#: The most configurations a grid search may hold (each one is a training run).
MAX_GRID = 100_000


class _Parameters(Mapping):
    """Per registered method, its searchable parameters and the setting each sets (live)."""

    def __getitem__(self, method: str) -> dict[str, str]:
        if method not in method_names():
            raise KeyError(method)
        return dict(get_method(method).search_parameters)

    def __iter__(self) -> Any:
        return iter(method_names())

    def __len__(self) -> int:
        return len(method_names())

    def __repr__(self) -> str:
        return repr(dict(self))


#: The parameters each registered method can search, and the :class:`MethodSettings` field
#: each sets (read from the Method registry, so a registered method appears here).
PARAMETERS: Mapping[str, dict[str, str]] = _Parameters()


def _is_integer(method: str, name: str) -> bool:
    return name in get_method(method).integer_parameters


def _log_by_default(method: str, name: str) -> bool:
    return name in get_method(method).log_parameters


def _shape_text(shape: Sequence[int]) -> str:
    return ",".join(str(int(s)) for s in shape)


def _parse_shape(value: Any, where: str) -> str:
    """A ``tt_shape`` choice as the canonical text ``"8,6,8,8,6,8"``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        parts = None
    try:
        shape = [int(p) for p in parts] if parts is not None else None
    except (TypeError, ValueError):
        shape = None
    if shape is not None:
        try:
            check_factor_count(len(shape), f"{where}: tt_shape choice")
        except ShapeError as exc:  # a space's errors are all InvalidInputError
            raise InvalidInputError(str(exc)) from None
    if (
        shape is None
        or len(shape) < 2
        or any(s < 1 for s in shape)
        or (not isinstance(value, str) and any(isinstance(p, (bool, float)) for p in parts))
    ):
        raise InvalidInputError(
            f"{where}: tt_shape choice {value!r} is not a shape; expected at least two positive "
            "integers, input factors then output factors, e.g. 8,6,8,8,6,8."
        )
    return _shape_text(shape)


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: choices, or a range ``[low, high]`` (log or linear).

    Examples
    --------
    >>> Param("lr", low=1e-4, high=1e-2, log=True).grid(3)
    [0.0001, 0.001, 0.01]
    >>> Param("tt_rank", choices=(2, 4)).grid(3)
    [2, 4]
    >>> Param("r", low=2, high=16, integer=True).grid(3)
    [2, 9, 16]
    """

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def grid(self, points: int) -> list[Any]:
        """The values the grid sampler runs: the choices, or ``points`` across the range."""
        if self.choices is not None:
            return list(self.choices)
        if points == 1 or self.low == self.high:
            values = [self.low]
        elif self.log:
            a, b = math.log(self.low), math.log(self.high)
            values = [math.exp(a + (b - a) * i / (points - 1)) for i in range(points)]
        else:
            values = [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]
        if self.integer:
            return sorted({round(v) for v in values})
        return [float(f"{v:.3g}") for v in values]

    def to_dict(self) -> Any:
        """The JSON form: a list of choices or ``{"low", "high", "log"}``."""
        if self.choices is not None:
            return list(self.choices)
        return {"low": self.low, "high": self.high, "log": self.log}


def _check_value(method: str, name: str, value: Any, where: str) -> Any:
    """One value of parameter ``name`` of ``method``, checked (an error names ``where``)."""
    if name == "tt_shape":
        return _parse_shape(value, where)
    if _is_integer(method, name):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
            raise InvalidInputError(
                f"{where}: {method} {name} {value!r} is out of range; expected an integer in "
                "[1, 256], e.g. 4."
            )
        return value
    if isinstance(value, str):
        raise InvalidInputError(
            f"{where}: {method} {name} {value!r} is a string, not a number; write it without "
            "quotes, e.g. lr: 1e-3."
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{where}: {method} {name} {value!r} is not a finite number.")
    if name == "lr" and not 0 < value < 1:
        raise InvalidInputError(
            f"{where}: {method} learning rate {value!r} is out of range; expected a number in "
            "(0, 1), e.g. 1e-3."
        )
    if name != "lr" and not value > 0:
        raise InvalidInputError(f"{where}: {method} {name} {value!r} must be > 0.")
    return float(value)


def make_param(method: str, name: str, spec: Any, where: str = "search space") -> Param:
    """A checked :class:`Param` from its spec (list, ``{low, high, log}`` mapping or value).

    Examples
    --------
    >>> make_param("lora", "r", [4, 8]).choices
    (4, 8)
    >>> make_param("lora", "lr", {"low": 1e-2, "high": 1e-4})
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: search space: lora lr has low 0.01 > high 0.0001; ...
    """
    check_method(method)
    known = PARAMETERS[method]
    if name not in known:
        raise InvalidInputError(
            f"{where}: unknown parameter {name!r} for {method}; expected one of {', '.join(known)}."
        )
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"low", "high", "log"})
        if unknown or "low" not in spec or "high" not in spec:
            raise InvalidInputError(
                f"{where}: {method} {name} range {dict(spec)!r} must have exactly low, high and "
                "optionally log (e.g. {low: 1e-4, high: 1e-2, log: true})."
            )
        if name == "tt_shape":
            raise InvalidInputError(
                f"{where}: tt_shape takes a list of shapes, not a range; e.g. "
                "[[8,6,8,8,6,8], [24,16,16,24]]."
            )
        low = _check_value(method, name, spec["low"], where)
        high = _check_value(method, name, spec["high"], where)
        if low > high:
            raise InvalidInputError(
                f"{where}: {method} {name} has low {low} > high {high}; swap them "
                "(the range is low..high)."
            )
        log = spec.get("log", _log_by_default(method, name))
        if not isinstance(log, bool):
            raise InvalidInputError(f"{where}: {method} {name} log must be true or false.")
        return Param(name, low=low, high=high, log=log, integer=_is_integer(method, name))
    values = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if name == "tt_shape" and isinstance(spec, (list, tuple)) and spec:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
            values = [spec]  # one shape given as a flat list of integers
    if not values:
        raise InvalidInputError(f"{where}: {method} {name} has no values; give at least one.")
    checked = [_check_value(method, name, v, where) for v in values]
    return Param(name, choices=tuple(dict.fromkeys(checked)), integer=_is_integer(method, name))


@dataclass(frozen=True)
class SearchSpace:
    """Per method, the searched parameters; every other setting keeps the method's default.

    Build it with :func:`default_space` or :meth:`from_dict`; :meth:`settings` turns one
    choice of values into the :class:`~ttdecomp.finetune.methods.MethodSettings` a trial
    trains with.

    Examples
    --------
    >>> space = SearchSpace.from_dict({"lora": {"r": [4, 8], "lr": 1e-3}})
    >>> space.grid(3)
    [{'method': 'lora', 'r': 4, 'lr': 0.001}, {'method': 'lora', 'r': 8, 'lr': 0.001}]
    >>> space.settings({'method': 'lora', 'r': 4, 'lr': 0.001})
    MethodSettings(method='lora', lr=0.001, rank=4, alpha=16.0, tt_shape=None)
    """

    params: tuple[tuple[str, tuple[Param, ...]], ...]

    @property
    def methods(self) -> list[str]:
        return [m for m, _ in self.params]

    def of(self, method: str) -> tuple[Param, ...]:
        return dict(self.params)[method]

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "search space") -> SearchSpace:
        """A checked space from ``{method: {name: spec}}`` (see the module docstring)."""
        if not isinstance(spec, Mapping) or not spec:
            raise InvalidInputError(
                f"{where} must map methods to their parameters, e.g. "
                "{tt-lora: {tt_rank: [2, 4]}, lora: {r: [8]}}; "
                f"got {spec!r}."
            )
        out = []
        for method, params in spec.items():
            if method not in method_names():
                raise InvalidInputError(
                    f"{where}: unknown method {method!r}; expected one of "
                    f"{', '.join(method_names())}."
                )
            if params is None:
                params = {}
            if not isinstance(params, Mapping):
                raise InvalidInputError(
                    f"{where}: {method} must map parameter names to values or ranges; got "
                    f"{params!r}."
                )
            made = tuple(make_param(method, str(k), v, where) for k, v in params.items())
            out.append((method, made))
        return cls(tuple(out))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The JSON form (what ``search.json`` records and a study is checked against)."""
        return {m: {p.name: p.to_dict() for p in ps} for m, ps in self.params}

    def fingerprint(self) -> str:
        """The canonical JSON text of the space (two spaces are the same iff these are)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def merged(self, overrides: Mapping[str, Mapping[str, Param]]) -> SearchSpace:
        """This space with ``{method: {name: Param}}`` replacing or adding parameters."""
        out = []
        for method, params in self.params:
            new = dict((p.name, p) for p in params)
            new.update(overrides.get(method, {}))
            out.append((method, tuple(new.values())))
        return SearchSpace(tuple(out))

    def grid(self, points: int = 3) -> list[dict[str, Any]]:
        """Every configuration of the grid: per method, the product of its parameters' values.

        Raises :class:`~ttdecomp.errors.InvalidInputError` when the grid would hold more than
        ``MAX_GRID`` configurations (counted before any is built).
        """
        size = 0
        for _, params in self.params:
            size += math.prod(len(p.choices) if p.choices is not None else points for p in params)
        if size > MAX_GRID:
            raise InvalidInputError(
                f"the grid has {size:,} configurations (grid_points {points:,} across the ranges "
                f"of the space); at most {MAX_GRID:,} can be run. Give fewer grid_points "
                "(--grid-points) or fewer values per parameter."
            )
        out = []
        for method, params in self.params:
            values = [p.grid(points) for p in params]
            for combo in itertools.product(*values):
                out.append({"method": method, **{p.name: v for p, v in zip(params, combo)}})
        return out

    def settings(
        self, values: Mapping[str, Any], base: Mapping[str, MethodSettings] | None = None
    ) -> MethodSettings:
        """The :class:`MethodSettings` of one configuration ``{"method": ..., name: value}``.

        What the configuration does not set is ``base[method]``'s (the fine-tuning
        configuration's settings), else the method's recommended setting.
        """
        method = values["method"]
        fields = PARAMETERS[method]
        overrides: dict[str, Any] = {}
        for name, value in values.items():
            if name == "method":
                continue
            if name == "tt_shape":
                value = tuple(int(s) for s in str(value).split(","))
            overrides[fields[name]] = value
        if base is not None and method in base:
            given = {k: v for k, v in base[method].to_dict().items() if k != "method"}
            if given.get("tt_shape") is not None:
                given["tt_shape"] = tuple(given["tt_shape"])
            return default_settings(method, **{**given, **overrides})
        return default_settings(method, **overrides)


#: What ``ttdecomp search`` searches when no methods are given: TT-LoRA and LoRA (LoRA's rank
#: is searched, so LoRA at TT-LoRA's budget, ``lora-matched``, is a point of LoRA's own space).
SEARCH_METHODS: tuple[str, ...] = ("tt-lora", "lora")


def default_space(
    methods: Sequence[str] = SEARCH_METHODS,
    layer: tuple[int, int] | None = None,
    *,
    quick: bool = False,
) -> SearchSpace:
    """The space searched by default for ``methods`` (``quick``: a tiny one for tests).

    Parameters
    ----------
    methods : sequence of str
        Registered methods (:func:`~ttdecomp.finetune.methods.method_names`).
    layer : (int, int), optional
        ``(out_features, in_features)`` of the targeted layers: TT-LoRA then searches
        :func:`tt_shape_candidates` of it; without it, its default shape per layer.
    quick : bool
        Two values of the rank and the learning rate, two shapes.

    Examples
    --------
    >>> space = default_space(["tt-lora", "lora"], layer=(384, 384))
    >>> sorted(space.to_dict()["lora"])
    ['lora_alpha', 'lr', 'r']
    >>> len(space.to_dict()["tt-lora"]["tt_shape"])
    4
    """
    spec = {check_method(m): get_method(m).search_space(layer, quick=quick) for m in methods}
    return SearchSpace.from_dict(spec, "default search space")


def _no_duplicates(where: str) -> Any:
    """A JSON ``object_pairs_hook`` refusing a key given twice in one object."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InvalidInputError(
                    f"{where}: key {key!r} is given twice in one mapping; keep one (a later "
                    "value would silently replace the first)."
                )
            out[key] = value
        return out

    return hook


# YAML 1.2's floats: PyYAML follows YAML 1.1, which reads 1e-3 (no dot) as a string
_YAML12_FLOAT = (
    r"^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)"
    r"|[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def _space_loader(yaml: Any, where: str) -> type:
    """A ``SafeLoader`` that refuses duplicate keys and reads YAML 1.2 floats (``1e-3``)."""
    import re

    class SpaceLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    mark = key_node.start_mark
                    raise InvalidInputError(
                        f"{where}, line {mark.line + 1}: key {key!r} is given twice "
                        "in one mapping; keep one (a later value would silently replace the "
                        "first)."
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    SpaceLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(_YAML12_FLOAT), list("-+0123456789.")
    )
    return SpaceLoader


def load_space(path: str | Path) -> SearchSpace:
    """Read a space from a YAML (``.yaml``/``.yml``, needs PyYAML) or JSON file.

    A key given twice in one mapping is refused; YAML numbers follow YAML 1.2 (``1e-3`` is a
    number, as in JSON, where YAML 1.1 reads a string).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "space.json")
    >>> _ = open(p, "w").write('{"lora": {"r": [4, 8], "lr": {"low": 1e-4, "high": 1e-2}}}')
    >>> load_space(p).to_dict()["lora"]["lr"]
    {'low': 0.0001, 'high': 0.01, 'log': True}
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"--space {path}: no such file; give a YAML or JSON file.")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InvalidInputError(
                f"--space {path} is YAML, which needs PyYAML; run `pip install pyyaml` or give "
                "the space as JSON."
            ) from None
        try:
            spec = yaml.load(text, Loader=_space_loader(yaml, f"--space {path}"))  # a SafeLoader
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"--space {path} is not valid YAML: {exc}") from None
        except RecursionError:
            raise InvalidInputError(
                f"--space {path} nests too deep to read; a space nests at most "
                f"{MAX_JSON_DEPTH} levels."
            ) from None
    elif suffix == ".json":
        try:
            spec = json.loads(text, object_pairs_hook=_no_duplicates(f"--space {path}"))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--space {path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInputError(
                f"--space {path} nests too deep to read; a space nests at most "
                f"{MAX_JSON_DEPTH} levels."
            ) from None
    else:
        raise InvalidInputError(
            f"--space {path}: unknown file type {suffix!r}; expected .yaml, .yml or .json."
        )
    return SearchSpace.from_dict(check_nesting(spec, f"--space {path}"), f"--space {path}")


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise InvalidInputError(f"{text!r} is not a number") from None


def parse_param(text: str) -> tuple[str, Param]:
    """One ``--param METHOD.NAME=SPEC`` override: ``(method, Param)``.

    ``SPEC`` is ``LOW:HIGH`` (a range; ``:log`` or ``:linear`` may follow), comma-separated
    values, or one value; ``tt_shape`` choices are separated by ``/``.

    Examples
    --------
    >>> parse_param("tt-lora.lr=1e-3:1e-2")
    ('tt-lora', Param(name='lr', choices=None, low=0.001, high=0.01, log=True, integer=False))
    >>> parse_param("lora.r=4,8,16")[1].choices
    (4, 8, 16)
    >>> parse_param("tt-lora.tt_shape=8,6,8,8,6,8/24,16,16,24")[1].choices
    ('8,6,8,8,6,8', '24,16,16,24')
    """
    where = f"--param {text}"
    key, sep, spec = text.partition("=")
    method, dot, name = key.strip().rpartition(".")
    if not sep or not dot or not spec.strip():
        raise InvalidInputError(
            f"{where}: expected METHOD.NAME=SPEC, e.g. tt-lora.lr=1e-3:1e-2 or lora.r=4,8,16."
        )
    if method not in method_names():
        raise InvalidInputError(
            f"{where}: unknown method {method!r}; expected one of {', '.join(method_names())}."
        )
    spec = spec.strip()
    if name == "tt_shape":
        return method, make_param(method, name, spec.split("/"), where)
    try:
        if ":" in spec:
            parts = spec.split(":")
            log = _log_by_default(method, name)
            if len(parts) == 3 and parts[2] in ("log", "linear"):
                log = parts[2] == "log"
                parts = parts[:2]
            if len(parts) != 2:
                raise InvalidInputError(
                    "a range is LOW:HIGH, optionally followed by :log or :linear"
                )
            low, high = _number(parts[0]), _number(parts[1])
            if not _is_integer(method, name):
                low, high = float(low), float(high)
            return method, make_param(method, name, {"low": low, "high": high, "log": log}, where)
        values = [_number(v.strip()) for v in spec.split(",") if v.strip()]
    except InvalidInputError as exc:
        if str(exc).startswith(where):
            raise
        raise InvalidInputError(f"{where}: {exc}.") from None
    return method, make_param(method, name, values, where)
