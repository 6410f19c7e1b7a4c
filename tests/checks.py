"""Assertions several test modules share: a user's mistake is one line."""

from __future__ import annotations

from typing import Any

import pytest


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    """The raised error's message, checked to be one non-empty line."""
    message = str(excinfo.value)
    assert message and "\n" not in message, repr(message)
    return message


def one_line_cli_error(result: Any, pattern: str) -> None:
    """A CLI run (click's ``Result``) that failed with exit 2 and printed one ``error:`` line
    containing ``pattern``."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert pattern in lines[0], lines[0]
