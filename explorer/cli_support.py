"""What every command of the CLI shares: one-line errors and integer-list options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
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


def int_list(text: str, option: str) -> tuple[int, ...]:
    """``"6,12"`` → ``(6, 12)``, or an InputError naming the option."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"{option} expects comma-separated integers such as 6,12, not {text!r}") from None
    if not values:
        raise InputError(f"{option} is empty; give e.g. {option} 6,12")
    return values
