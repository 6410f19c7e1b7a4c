"""Helpers for the TUI tests: wait until workers are done, read what a widget shows."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.text import Text
from textual.app import App
from textual.content import Content
from textual.pilot import Pilot
from textual.widgets import Static
from textual.worker import WorkerState

SIZE = (100, 30)  # terminal size for most tests; test_layout checks 80×24 separately


async def settle(pilot: Pilot, app: App, *, delay: float = 0.0) -> None:
    """Wait for pending timers (e.g. the filter's debounce), thread workers and repaints."""
    if delay:
        await pilot.pause(delay)
    for _ in range(8):  # a worker's result may start another (load → sort), hence the loop
        await pilot.pause()
        if not any(worker.state in (WorkerState.PENDING, WorkerState.RUNNING) for worker in app.workers):
            break
        await app.workers.wait_for_complete()
    await pilot.pause()


def plain(renderable: Any) -> str:
    """The text of a Static's content (Text, Content markup, or any Rich renderable)."""
    if isinstance(renderable, Static):
        renderable = renderable.content
    if isinstance(renderable, str):
        return Content.from_markup(renderable).plain
    if isinstance(renderable, (Text, Content)):
        return renderable.plain
    console = Console(width=200, file=io.StringIO(), color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def shown(app: App, selector: str) -> str:
    return plain(app.screen.query_one(selector, Static))
