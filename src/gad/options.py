"""Command-line options generated from config dataclasses, so that each option is defined once: on its field.

A field's ``metadata`` says how it appears on the command line (after TRL's ``HfArgumentParser``):

- ``help`` (required): what the field means; the default is appended from the dataclass;
- ``flag``: the option string, taken as is (no prefix), where the derived ``--<prefix><name-with-dashes>`` won't do;
- ``invert``: the flag turns a bool field *off* (``drop_truncated`` as ``--keep-truncated``); implied when the
  default is ``True``, whose derived flag is then ``--no-<name>``;
- ``metavar``: the placeholder in the usage line;
- ``bare_key``: for a ``dict`` field, the key of a value given without ``KEY=``;
- ``cli``: ``False`` keeps the field off the command line (secrets, values the command computes).

Types come from the annotations: ``int``, ``float``, ``str``, ``Path``, ``bool`` (a flag), ``X | None``, ``list[X]``
(``nargs="*"``) and ``dict[str, X]`` (a repeatable ``KEY=VALUE``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gad.errors import GadError

T = TypeVar("T")
ArgumentContainer = argparse.ArgumentParser | argparse._ArgumentGroup
SCALARS = (int, float, str, Path)


def add_dataclass_arguments(
    parser: ArgumentContainer,
    cls: type,
    *,
    prefix: str = "",
    exclude: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add one option per field of the dataclass ``cls`` to ``parser`` (a parser or an argument group).

    ``prefix`` (e.g. ``"judge-"``) goes in front of derived flags and of the destinations, so that two dataclasses
    with a field of the same name can share a parser. ``defaults`` replace the dataclass's defaults on this parser
    only; a field without a default is a required option unless it has one there.
    """
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    for field in cli_fields(cls, exclude):
        if not field.metadata.get("help"):
            raise TypeError(f"{cls.__name__}.{field.name} has no help in its metadata")
        default = defaults[field.name] if field.name in defaults else _default(field)
        kwargs = _argument(field, hints[field.name], default, prefix)
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if field.default_factory is not dataclasses.MISSING else default
        parser.add_argument(_flag(field, prefix), dest=_dest(prefix, field.name), **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, *, prefix: str = "", **overrides: Any) -> T:
    """Build ``cls`` from options added by :func:`add_dataclass_arguments` with the same ``prefix``.

    ``overrides`` set fields the command line does not hold (``cli: False``) or that the command computes; a field
    neither there nor in ``args`` keeps its dataclass default.
    """
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    values = dict(overrides)
    for field in cli_fields(cls):
        if field.name in values:
            continue
        value = getattr(args, _dest(prefix, field.name), dataclasses.MISSING)
        # None stands in for a default_factory's fresh value (argparse would share one mutable default).
        if value is dataclasses.MISSING or (value is None and field.default_factory is not dataclasses.MISSING):
            continue
        values[field.name] = value
    return cls(**values)


def cli_fields(cls: type, exclude: Collection[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that appear on the command line."""
    return [
        field
        for field in dataclasses.fields(cls)
        if field.init and field.metadata.get("cli", True) and field.name not in exclude
    ]


def option_flag(cls: type, name: str, prefix: str = "") -> str:
    """The option string of field ``name``, for parsers and for error messages that name it."""
    return _flag(next(field for field in dataclasses.fields(cls) if field.name == name), prefix)


def check_ranges(
    config: Any,
    *,
    prefix: str = "",
    at_least_one: Collection[str] = (),
    positive: Collection[str] = (),
    non_negative: Collection[str] = (),
    fraction: Collection[str] = (),
) -> None:
    """Raise :class:`GadError` for the first numeric field out of its range, naming its option; ``None`` passes.

    ``fraction`` is the half-open interval (0, 1], the range of ``top_p``.
    """
    rules: list[tuple[Collection[str], Callable[[float], bool], str]] = [
        (at_least_one, lambda v: v >= 1, "at least 1"),
        (positive, lambda v: v > 0, "positive"),
        (non_negative, lambda v: v >= 0, "at least 0"),
        (fraction, lambda v: 0 < v <= 1, "in (0, 1]"),
    ]
    for names, holds, wanted in rules:
        for name in names:
            value = getattr(config, name)
            if value is not None and not holds(value):
                raise GadError(f"{option_flag(type(config), name, prefix)} must be {wanted}, got {value}")


# --- helpers -----------------------------------------------------------------------------------------------------


def _dest(prefix: str, name: str) -> str:
    return prefix.replace("-", "_") + name


def _flag(field: dataclasses.Field, prefix: str) -> str:
    if "flag" in field.metadata:
        return field.metadata["flag"]
    dashed = field.name.replace("_", "-")
    return f"--{prefix}no-{dashed}" if _inverted(field) else f"--{prefix}{dashed}"


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _inverted(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get("invert", field.default is True))


def _argument(field: dataclasses.Field, hint: Any, default: Any, prefix: str) -> dict[str, Any]:
    """The ``add_argument`` keywords for one field, except the flag, destination and default."""
    help_text = field.metadata["help"].replace("%", "%%")  # argparse formats help with %
    kind, optional = _without_none(hint)
    kwargs: dict[str, Any] = {}
    if kind is bool:
        if optional or not isinstance(default, bool):
            raise TypeError(f"bool field {field.name} needs a True or False default")
        inverted = _inverted(field)
        if inverted != default:
            raise TypeError(f"{field.name}: an inverted flag needs the default True, a plain one False")
        kwargs["action"] = "store_false" if inverted else "store_true"
        suffix = " (on by default; this flag turns it off)" if inverted else ""
        return {**kwargs, "help": help_text + suffix}
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        kwargs.update(nargs="*", type=_scalar(item, field.name))
    elif origin is dict:
        key, value = typing.get_args(kind)
        if key is not str:
            raise TypeError(f"dict field {field.name} needs str keys")
        kwargs.update(action=_KeyValueAction, value_type=_scalar(value, field.name))
        kwargs["bare_key"] = field.metadata.get("bare_key")
        kwargs.setdefault("metavar", "KEY=VALUE")
        help_text += "; repeatable"
    else:
        kwargs["type"] = _scalar(kind, field.name)
    if "metavar" in field.metadata:
        kwargs["metavar"] = field.metadata["metavar"]
    elif "metavar" not in kwargs:
        # argparse's own placeholder for the flag (the prefixed destination would read JUDGE_BASE_URL for --judge-url)
        kwargs["metavar"] = _flag(field, prefix).lstrip("-").replace("-", "_").upper()
    shown = _shown(default)
    return {**kwargs, "help": help_text + (f" (default: {shown})" if shown else "")}


def _without_none(hint: Any) -> tuple[Any, bool]:
    """``(the type without None, whether None was allowed)``; ``str | Path`` is taken as ``Path``."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint, False
    members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    optional = len(members) < len(typing.get_args(hint))
    if len(members) == 1:
        return members[0], optional
    if set(members) == {str, Path}:
        return Path, optional  # either is accepted, and a Path is what such fields are used as
    raise TypeError(f"unsupported union {hint}")


def _scalar(kind: Any, name: str) -> type:
    kind, _ = _without_none(kind)
    if kind not in SCALARS:
        raise TypeError(f"field {name}: type {kind} is not one of int, float, str, Path, bool, list, dict")
    return kind


def _shown(default: Any) -> str:
    """How a default appears in the help; nothing for unset ones, which the help text explains."""
    if default is dataclasses.MISSING or default is None or default == {} or default == []:
        return ""
    if isinstance(default, list):
        return " ".join(map(str, default))
    return str(default) if default != "" else "''"


class _KeyValueAction(argparse.Action):
    """A repeatable ``KEY=VALUE`` collected into a dict; a bare ``VALUE`` goes under ``bare_key`` when there is one."""

    def __init__(self, *args: Any, value_type: type = str, bare_key: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.value_type, self.bare_key = value_type, bare_key

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        key, sep, value = values.partition("=")
        if not sep:
            if self.bare_key is None:
                parser.error(f"{option_string} takes KEY=VALUE, got {values!r}")
            key, value = self.bare_key, values
        items = dict(getattr(namespace, self.dest) or {})
        items[key] = self.value_type(value)
        setattr(namespace, self.dest, items)
