"""What every command prints through: one-line errors, the text or JSON summary, number formats."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from store.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(interrupted: str) -> Callable[[F], F]:
    """Print an ``InputError`` as one line and exit 2; on Ctrl-C print ``interrupted`` (what was
    kept and how to continue) and exit 130. Never a traceback for a user's mistake."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except InputError as error:
                click.echo(f"error: {error}", err=True)
                sys.exit(2)
            except KeyboardInterrupt:
                click.echo(f"\ninterrupted; {interrupted}", err=True)
                sys.exit(130)
        return wrapper  # type: ignore[return-value]

    return decorate


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the summary as one JSON object (the same facts as the text) instead.")


def plain(value: Any) -> Any:
    """A value JSON can hold: numpy scalars and arrays, tuples, paths and dataclasses unwrapped,
    NaN and infinities as null (JSON has no NaN), mapping keys as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalar or array
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(facts: Mapping[str, Any], text: str, *, as_json: bool) -> None:
    """Print the text summary, or with ``--json`` the facts it was written from."""
    click.echo(json.dumps(plain(facts), indent=2, allow_nan=False) if as_json else text)


def progress_echo(as_json: bool) -> Callable[[str], None]:
    """Where a command's progress lines go: stdout, or stderr when stdout carries the JSON."""
    return (lambda line: click.echo(line, err=True)) if as_json else click.echo


def num(value: float | None, fmt: str = "+.2f") -> str:
    """A number in ``fmt``, or ``n/a`` when it is missing or NaN."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "n/a" if missing else format(value, fmt)


def share(value: float | None) -> str:
    """A share as a percentage (``42%``), or ``n/a``."""
    return num(value, ".0%")
