"""Command-line options derived from the configs' dataclass fields, declared once.

A config (:class:`~ttdecomp.finetune.FinetuneConfig`, :class:`~ttdecomp.search.SearchConfig`)
declares each option as a field whose ``metadata`` carries its help text, as transformers'
``HfArgumentParser`` reads them::

    epochs: int | None = field(default=None, metadata={
        "help": "passes over the training split (4; --quick 3)", "group": "training",
        "type": int})

:func:`add_options` turns the fields into argparse options (``epochs`` → ``--epochs``) in
groups; :func:`values` reads them back as the config's keyword arguments; :func:`error_message`
rewrites the field a config's error names into its flag, so a Python user reads ``epochs`` and a
command-line user ``--epochs``; :func:`apply_config_file` reads ``--config run.yaml``.

Metadata keys: ``help`` (a field without it is not an option), ``group``, ``type`` (int,
float or str; default: the default's type), ``list`` (comma-separated values, see below),
``per_method`` (``VALUE`` or ``METHOD=VALUE,...``), ``choices``, ``flag`` (another flag name),
``repeat`` (one value per flag, the flag repeated), ``parts`` (a tuple given as one flag per
part, e.g. ``sizes`` as ``--train-size``, ``--val-size``, ``--test-size``), ``default_text``
(how the help shows a derived default, e.g. ``"4; --quick 3"``; ``help`` and ``default_text``
may be functions, called when the parser is built, for text read from the Method and Task
registries), ``metavar``, ``positional``
(an argument, not a flag) and ``required``. Booleans are ``--x/--no-x``.

**Lists** are comma-separated in every sub-command (``--methods tt-lora,lora``); a list flag
given again adds to the list (``--seeds 0 --seeds 1`` is ``--seeds 0,1``). ``search --param``
takes one parameter per flag (its values hold commas) and is repeated.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import MAX_JSON_DEPTH, check_nesting
from ..errors import InvalidInputError

__all__ = [
    "LIST_SYNTAX",
    "HelpFormatter",
    "add_options",
    "apply_config_file",
    "error_message",
    "flag_of",
    "option",
    "parse_per_method",
    "values",
]

#: One sentence on list options, for every sub-command's epilog.
LIST_SYNTAX = (
    "Lists are comma-separated (--methods tt-lora,lora); a list flag given again adds to the "
    "list (--seeds 0 --seeds 1 is --seeds 0,1)."
)


def option(default: Any, help: str, group: str, **metadata: Any) -> Any:
    """``dataclasses.field(default=default, metadata={"help": help, "group": group, ...})``.

    Examples
    --------
    >>> option(1, "processes", "study").metadata["help"]
    'processes'
    """
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **metadata})


def flag_of(field: dataclasses.Field) -> str:
    """The flag of a config field: ``metadata["flag"]`` or ``--`` + the name with dashes.

    Examples
    --------
    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class C:
    ...     batch_size: int = dataclasses.field(default=8, metadata={"help": "rows"})
    >>> flag_of(dataclasses.fields(C)[0])
    '--batch-size'
    """
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _convert(kind: Callable[[str], Any], text: str) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        what = {int: "an integer", float: "a number"}.get(kind, "a valid value")
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not {what}") from None


def parse_per_method(kind: Callable[[str], Any], methods: Sequence[str] = ()) -> Any:
    """An argparse ``type``: ``"5e-3"`` → 0.005, ``"tt-lora=5e-3,lora=1e-3"`` → a dict.

    ``methods``, when given, are the method names a ``METHOD=`` may use.

    Examples
    --------
    >>> parse_per_method(float)("tt-lora=5e-3,lora=1e-3")
    {'tt-lora': 0.005, 'lora': 0.001}
    >>> parse_per_method(int)("4")
    4
    """

    def convert(text: str) -> Any:
        if "=" not in text:
            return _convert(kind, text)
        out = {}
        for part in text.split(","):
            method, sep, value = part.partition("=")
            method = method.strip()
            if not sep or not method or (methods and method not in methods):
                expected = f" with METHOD one of {', '.join(methods)}" if methods else ""
                raise argparse.ArgumentTypeError(f"{part!r}: expected METHOD=VALUE{expected}")
            out[method] = _convert(kind, value)
        return out

    return convert


def _list_of(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def convert(text: str) -> list:
        items = [v for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list")
        return [_convert(kind, v) for v in items]

    return convert


class _ListAction(argparse.Action):
    """The first use replaces the default; a flag given again adds to the list."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is self.default or current is None:
            setattr(namespace, self.dest, list(values))
        else:
            setattr(namespace, self.dest, [*current, *values])


class _PerMethodAction(argparse.Action):
    """``--lr tt-lora=5e-3 --lr lora=1e-3`` merges; a plain value may be given once."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is self.default or current is None:
            setattr(namespace, self.dest, values)
        elif isinstance(current, dict) and isinstance(values, dict):
            twice = sorted(set(current) & set(values))
            if twice:
                parser.error(f"{option_string} gives {', '.join(twice)} twice")
            setattr(namespace, self.dest, {**current, **values})
        else:
            parser.error(f"{option_string} is given twice; give one value or METHOD=VALUE pairs")


class _BoolAction(argparse.BooleanOptionalAction):
    """``--x/--no-x`` whose help shows the default once, as the flag that is on."""

    def __init__(self, *args: Any, default: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, default=None, **kwargs)  # no "(default: True)" appended
        self.default = default


class _PartAction(argparse.Action):
    """One part of a tuple option (``--train-size`` of ``sizes``)."""

    def __init__(self, *args: Any, index: int, size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.index, self.size = index, size

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        parts = list(current) if current is not None else [None] * self.size
        parts[self.index] = values
        setattr(namespace, self.dest, tuple(parts))


def _default_text(field: dataclasses.Field) -> str | None:
    meta = field.metadata
    if "default_text" in meta:
        text = meta["default_text"]
        return text() if callable(text) else text
    default = field.default
    if default is dataclasses.MISSING or default is None:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        return ",".join(str(v) for v in default) if default else None
    return str(default)


def _help(field: dataclasses.Field) -> str:
    text = field.metadata["help"]
    text = (text() if callable(text) else text).replace("%", "%%")
    default = _default_text(field)
    return f"{text} (default: {default})" if default else text


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps text with line breaks (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def options_of(config_class: type) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that are command-line options (those with a help text)."""
    return [f for f in dataclasses.fields(config_class) if "help" in f.metadata]


def add_options(
    parser: argparse.ArgumentParser,
    config_class: type,
    *,
    exclude: Iterable[str] = (),
    only: Mapping[str, Mapping[str, Any]] | None = None,
    groups: dict[str, Any] | None = None,
    methods: Sequence[str] = (),
) -> dict[str, Any]:
    """Add an option per field of ``config_class`` to ``parser``, in the fields' groups.

    ``only``, when given, maps the fields to add to metadata that replaces theirs (another
    group or default text: ``ttdecomp search`` takes some of ``finetune``'s options).
    ``groups`` maps a group title to its argparse group and is extended (pass one dict to
    several calls to share groups); it is returned. ``methods`` are the names a per-method
    option accepts.
    """
    groups = {} if groups is None else groups
    skip = set(exclude)
    for field in options_of(config_class):
        if field.name in skip or (only is not None and field.name not in only):
            continue
        if only is not None and only[field.name]:
            field = copy.copy(field)
            field.metadata = types.MappingProxyType({**field.metadata, **only[field.name]})
        meta = field.metadata
        title = meta.get("group", "options")
        if title not in groups:  # argparse's own "options" group is reused, not repeated
            known = [g for g in parser._action_groups if g.title == title]
            groups[title] = known[0] if known else parser.add_argument_group(title)
        group = groups[title]
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if default is dataclasses.MISSING:  # a required field: argparse asks for it
            default = None
        kind = meta.get("type") or (
            type(default) if default is not None and not meta.get("list") else str
        )
        common: dict[str, Any] = {"dest": field.name, "default": default, "help": _help(field)}
        if "metavar" in meta:
            common["metavar"] = meta["metavar"]
        if meta.get("positional"):
            parser.add_argument(field.name, help=common["help"], metavar=meta.get("metavar"))
            continue
        if meta.get("required"):
            common["required"] = True
        if "parts" in meta:
            parts = meta["parts"]
            for i, (flag, text) in enumerate(parts):
                group.add_argument(
                    flag,
                    dest=field.name,
                    default=default,
                    type=lambda s, kind=kind: _convert(kind, s),
                    action=_PartAction,
                    metavar="N",
                    index=i,
                    size=len(parts),
                    help=text.replace("%", "%%"),
                )
            continue
        flag = flag_of(field)
        if kind is bool:
            group.add_argument(flag, action=_BoolAction, **common)
        elif meta.get("repeat"):  # one value per flag (values that hold commas)
            group.add_argument(flag, type=lambda s: [s], action=_ListAction, **common)
        elif meta.get("list"):
            common.setdefault("metavar", "A,B,...")
            group.add_argument(flag, type=_list_of(kind), action=_ListAction, **common)
        elif meta.get("per_method"):
            common.setdefault("metavar", "VALUE|METHOD=VALUE,...")
            group.add_argument(
                flag, type=parse_per_method(kind, methods), action=_PerMethodAction, **common
            )
        else:
            if "choices" in meta:
                common["choices"] = list(meta["choices"])
            group.add_argument(flag, type=lambda s, kind=kind: _convert(kind, s), **common)
    return groups


def values(args: argparse.Namespace, config_class: type, **replace: Any) -> dict[str, Any]:
    """The keyword arguments of ``config_class`` in ``args`` (``replace`` wins)."""
    names = {f.name for f in options_of(config_class)}
    out = {k: v for k, v in vars(args).items() if k in names}
    out.update(replace)
    return out


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and longs[0] not in out.get(action.dest, []):
            out.setdefault(action.dest, []).append(longs[0])
    return {dest: "/".join(flags) for dest, flags in out.items()}


def error_message(exc: BaseException, parser: argparse.ArgumentParser) -> str:
    """``exc``'s message with the options it names written as the parser's flags.

    An :class:`~ttdecomp.errors.InvalidOptionError` names its field (``batch_size must be an
    integer >= 1``); here that word becomes ``--batch-size``. Any option spelled as Python
    spells it, ``name=value`` (``quantize='4bit'``), becomes ``--flag value``
    (``--quantize 4bit``), and a field name with an underscore becomes its flag wherever it
    stands unquoted (no English word has one; a quoted one is a ``--config`` file's key).
    Other words are unchanged.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--quantize"); _ = p.add_argument("--bnb-4bit-quant-type")
    >>> error_message(ValueError("bnb_4bit_quant_type needs quantize='4bit'; got quantize='none'"), p)
    '--bnb-4bit-quant-type needs --quantize 4bit; got --quantize none'
    """  # noqa: E501
    message = str(exc)
    flags = _flags(parser)
    quotes = "'\""

    def as_flag(match: re.Match) -> str:
        flag = flags.get(match.group(1))
        if flag is None or "/" in flag:  # not an option here, or one flag per value part
            return match.group(0)
        value = match.group(2)
        return f"{flag} {value[1:-1] if value[0] in quotes else value}"

    message = re.sub(
        r"(?<![\w.-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|-?[0-9][\w.+-]*)", as_flag, message
    )
    option = getattr(exc, "option", None)
    for name, flag in flags.items():
        if "_" in name:  # not a quoted one: a key of a --config file
            message = re.sub(rf"(?<![\w'\"-]){re.escape(name)}(?![\w'\"-])", flag, message)
        elif name == option:
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, message, count=1)
    return message


class _UniqueKeyLoader:
    """A YAML safe loader that refuses a key given twice (PyYAML keeps the last one)."""

    @staticmethod
    def load(text: str, source: str) -> Any:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        def mapping(loader: Any, node: Any, deep: bool = False) -> dict:
            seen: set = set()
            for key_node, _ in node.value:
                key = loader.construct_object(key_node, deep=deep)
                if key in seen:
                    raise InvalidInputError(
                        f"{source}: the key {key!r} is given twice (line "
                        f"{key_node.start_mark.line + 1}); keep one."
                    )
                seen.add(key)
            return loader.construct_mapping(node, deep=deep)

        Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
        try:
            document = yaml.load(text, Loader=Loader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"{source} is not valid YAML: {exc}") from None
        except RecursionError:
            raise InvalidInputError(
                f"{source} nests too deep to read; ttdecomp's files nest at most "
                f"{MAX_JSON_DEPTH} levels. Is it the right file?"
            ) from None
        return check_nesting(document, source)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A ``--config`` file's mapping of option names to values (YAML or JSON; no key twice)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"--config {path}: no such file; give a YAML file of options.")
    try:
        import yaml  # noqa: F401
    except ImportError:
        raise InvalidInputError(
            '--config needs PyYAML, which is not installed: pip install "ttdecomp[search]" '
            "(or pip install pyyaml)."
        ) from None
    data = _UniqueKeyLoader.load(path.read_text(encoding="utf-8"), f"--config {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"--config {path} holds a {type(data).__name__}; expected a mapping of option "
            "names to values (batch-size: 16)."
        )
    return data


def apply_config_file(parser: argparse.ArgumentParser, path: str | Path) -> None:
    """Make the options in the file ``path`` the defaults of ``parser``: parsed again, flags
    given on the command line win over the file, the file over the built-in defaults.

    Keys are option names, spelled as flags (``batch-size``) or as fields (``batch_size``);
    an unknown key, a key given twice (in either spelling) or the ``config`` key itself is an
    error naming it and the valid ones.
    """
    data = read_config_file(path)
    names: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in ("help", "config", "version"):
            continue
        names[longs[0][2:]] = action
        if not isinstance(action, _PartAction):
            names.setdefault(action.dest.replace("_", "-"), action)
    defaults: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in data.items():
        name = key.replace("_", "-") if isinstance(key, str) else None
        action = names.get(name) if name else None
        if action is None:
            raise InvalidInputError(
                f"--config {path}: unknown option {key!r}; valid ones are "
                f"{', '.join(sorted(names))}."
            )
        ident = name if isinstance(action, _PartAction) else action.dest
        if ident in seen:
            raise InvalidInputError(f"--config {path}: {key!r} is given twice; keep one.")
        seen.add(ident)
        if isinstance(action, _PartAction):
            parts = list(defaults.get(action.dest) or [None] * action.size)
            parts[action.index] = _from_file(action, value, key, path)
            defaults[action.dest] = tuple(parts)
        else:
            defaults[action.dest] = _from_file(action, value, key, path)
    parser.set_defaults(**defaults)


def _from_file(action: argparse.Action, value: Any, key: str, path: Any) -> Any:
    """A value read from a config file, converted as the flag converts text."""
    if isinstance(action, _BoolAction):
        if not isinstance(value, bool):
            raise InvalidInputError(f"--config {path}: {key} must be true or false; got {value!r}.")
        return value
    convert = action.type
    try:
        if isinstance(value, str) and convert is not None:
            return convert(value)
        if isinstance(action, _ListAction) and isinstance(value, list):
            return [v for item in value for v in convert(str(item))]
    except argparse.ArgumentTypeError as exc:
        raise InvalidInputError(f"--config {path}: {key}: {exc}.") from None
    if isinstance(value, Mapping):
        return dict(value)
    return value
