"""Command-line options generated from a stage's frozen config dataclass (ARCHITECTURE §4).

A config field becomes one click option: the flag is the field name with dashes, the default
is the field's default, the help is the field's docstring (the string literal under it), and
the type follows the annotation (``int``, ``float``, ``str``, ``Path``, ``Literal`` → a choice,
``bool`` → ``--x/--no-x``, ``tuple[int, ...]`` → comma-separated integers). So a default is
stated once, in the dataclass. ``ConfigOptions.build`` turns the parsed values back into the
config and names the flag in every validation error.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from store.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


def _number_list(text: str, option: str, convert: Callable[[str], Any], what: str, empty_hint: str) -> tuple:
    try:
        values = tuple(convert(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"{option} expects comma-separated {what}, not {text!r}") from None
    if not values:
        raise InputError(f"{option} is empty{empty_hint}")
    return values


def int_list(text: str, option: str) -> tuple[int, ...]:
    """``"6,12"`` → ``(6, 12)``, or an InputError naming the option."""
    return _number_list(text, option, int, "integers such as 6,12", f"; give e.g. {option} 6,12")


def float_list(text: str, option: str) -> tuple[float, ...]:
    """``"10,20.5"`` → ``(10.0, 20.5)``, or an InputError naming the option."""
    return _number_list(text, option, float, "numbers", "")


def optional_int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    return None if text is None else int_list(text, option)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and of its dataclass bases), one line each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def help_text(doc: str) -> str:
    """A field docstring as option help: in the user's words (no ``None``, no reST quotes)."""
    return re.sub(r"\bNone\b", "unset", doc.replace("``", "`"))


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


@dataclass(frozen=True)
class _Field:
    name: str
    flag: str
    """The option's long name as the user types it (``--k``), for error messages."""
    decls: tuple[str, ...]
    hint: Any
    kwargs: dict[str, Any]
    default: Any
    """The field's default (``dataclasses.MISSING`` when it has none)."""


@dataclass(frozen=True, eq=False)
class ConfigOptions:
    """The options of one config class, and the way back from parsed values to the config.

    ``skip``: fields the command fills itself (e.g. ``layer``, found from the study).
    ``flags``: a field's flag when it is not ``--field-name`` (``"--tokens"``,
    ``"--active-only/--all-latents"``). ``extra``: click keyword arguments that override the
    generated ones (``{"multiple": True}``, a ``help``, a ``type``)."""

    config_ref: type | str
    """The config class, or ``"module:Class"`` so that ``--help`` need not import the stage's
    module (and torch) until the command is used."""
    skip: tuple[str, ...] = ()
    flags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def config(self) -> type:
        if isinstance(self.config_ref, str):
            module, name = self.config_ref.split(":")
            return getattr(importlib.import_module(module), name)
        return self.config_ref

    def fields(self) -> list[_Field]:
        return _fields(self)

    def decorate(self, command: F) -> F:
        """Add the generated options to a command function now (for a config already imported;
        registered commands use ``OptionsCommand``, which generates them on first use)."""
        params = command.__dict__.setdefault("__click_params__", [])
        params.extend(reversed(self.click_options()))  # click reverses the decorator list
        return command

    def click_options(self) -> list[click.Option]:
        """One click option per field, in field order."""
        return [click.Option([*spec.decls, spec.name], **spec.kwargs) for spec in self.fields()]

    def flag(self, name: str) -> str:
        for spec in self.fields():
            if spec.name == name:
                return spec.flag
        return "--" + name.replace("_", "-")

    def parse(self, values: dict[str, Any]) -> dict[str, Any]:
        """Pop this config's fields from ``values`` (a command's parsed options), converted to the
        field types (comma lists and repeated options → tuples; an InputError names the flag)."""
        parsed = {}
        for spec in self.fields():
            if spec.name not in values:
                continue
            value = values.pop(spec.name)
            if value is None and spec.default not in (None, dataclasses.MISSING):
                continue  # not given, and its default (e.g. an empty tuple) has no option form: keep it
            parsed[spec.name] = _convert(value, spec)
        return parsed

    def make(self, **kwargs: Any) -> Any:
        """The config from field values; a ``ValueError`` of its checks becomes an ``InputError``
        in the user's words (field names replaced by their flags)."""
        try:
            return self.config(**kwargs)
        except InputError:
            raise
        except (ValueError, TypeError) as error:
            raise InputError(self._name_flags(str(error))) from None

    def build(self, values: dict[str, Any], **fixed: Any) -> Any:
        """``make(**parse(values), **fixed)``: ``fixed`` sets the skipped fields."""
        return self.make(**self.parse(values), **fixed)

    def _name_flags(self, message: str) -> str:
        """``"rank must be ≥ 1"`` → ``"--rank must be ≥ 1"``: a validation message in the user's words."""
        for spec in self.fields():
            message = re.sub(rf"(?<![-\w]){re.escape(spec.name)}\b", spec.flag, message)
        return message


@cache
def _fields(options: ConfigOptions) -> list[_Field]:
    hints = typing.get_type_hints(options.config)
    docs = field_docs(options.config)
    specs = []
    for item in dataclasses.fields(options.config):
        if item.name in options.skip or not item.init:
            continue
        hint, optional = _strip_optional(hints[item.name])
        has_default = item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
        default = item.default if item.default is not dataclasses.MISSING else (
            item.default_factory() if item.default_factory is not dataclasses.MISSING else None)
        kwargs: dict[str, Any] = {"help": help_text(docs.get(item.name, ""))}
        flag = options.flags.get(item.name, "--" + item.name.replace("_", "-"))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            if "/" not in flag:
                flag = f"{flag}/--no-{flag[2:]}"
            kwargs.update(default=bool(default), show_default=True)
        elif origin is Literal:
            kwargs.update(type=click.Choice([str(a) for a in args]), default=default, show_default=default is not None)
        elif origin is tuple:
            element = args[0] if args else str
            if element is int:
                kwargs.update(default=None if default is None else ",".join(map(str, default)) or None)
                kwargs["show_default"] = bool(default)
                kwargs.setdefault("metavar", "INTS")
            elif element is Path:
                kwargs.update(multiple=True, type=click.Path(path_type=Path))
            else:
                kwargs.update(default=",".join(map(str, default)) if default else None, show_default=bool(default))
        elif hint is Path:
            kwargs.update(type=click.Path(path_type=Path), default=default)
        elif hint in (int, float, str):
            kwargs.update(type=hint, default=default, show_default=default is not None)
        else:
            raise TypeError(f"{options.config.__name__}.{item.name}: no option type for {hint!r}")
        if not has_default:
            kwargs.update(required=True, default=None, show_default=False)
        kwargs.update(options.extra.get(item.name, {}))
        decls = tuple(flag.split(" "))
        specs.append(_Field(item.name, flag.split("/")[0], decls, hints[item.name], kwargs,
                            default if has_default else dataclasses.MISSING))
    return specs


class OptionsCommand(click.Command):
    """A click command whose config options are generated on first use (``--help`` of the
    command, or running it), not when it is registered: listing the commands stays instant."""

    def __init__(self, *args: Any, config_options: ConfigOptions, insert_at: int = 0, **kwargs: Any) -> None:
        self.config_options, self._insert_at, self._generated = config_options, insert_at, False
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def params(self) -> list[click.Parameter]:
        if not self._generated:
            self._generated = True
            self._params[self._insert_at:self._insert_at] = self.config_options.click_options()
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


def _convert(value: Any, spec: _Field) -> Any:
    """A parsed click value → the field's type (comma lists, repeated options → tuples)."""
    hint, _ = _strip_optional(spec.hint)
    if typing.get_origin(hint) is not tuple or value is None:
        return value
    element = (typing.get_args(hint) or (str,))[0]
    if isinstance(value, (tuple, list)):
        return tuple(value)
    if element is int:
        return int_list(value, spec.flag)
    return tuple(part.strip() for part in str(value).split(",") if part.strip())
