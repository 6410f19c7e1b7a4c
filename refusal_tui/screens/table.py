"""A long table with incremental filtering and sorting by any column (features, prompts).

Filtering and sorting run in a thread worker over NumPy columns, and only a window of the
result is put in the DataTable (``PagedTable``), so 130k rows stay fluid.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import DataTable, Input, Static
from textual.worker import get_current_worker

from refusal_tui.screens.base import StudyScreen
from refusal_tui.widgets import PagedTable
from store import InputError

FILTER_DELAY_S = 0.12  # wait for a pause in typing before filtering again


class TableScreen(StudyScreen):
    """Subclasses set COLUMNS and implement ``fetch`` (returning an object with ``filter`` and
    ``order``), ``render_row`` and ``open_row``."""

    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("s", "sort_next", "Sort"),
        Binding("r", "reverse", "Reverse"),
        Binding("escape", "focus_table", "To table", show=False),
        Binding("x", "export_csv", "CSV"),
    ]
    AUTO_FOCUS = "#table"
    COLUMNS: ClassVar[tuple[tuple[str, str, int], ...]] = ()  # (column key, label, width)
    NOUN: ClassVar[str] = "rows"
    PLACEHOLDER: ClassVar[str] = "filter"
    RIGHT: ClassVar[frozenset[str]] = frozenset()  # columns whose header is right-aligned (numbers)

    def __init__(self) -> None:
        super().__init__()
        self.table: Any = None
        self.sort_column = self.COLUMNS[0][0]
        self.descending = False
        self.query_text = ""
        self.filter_error = ""
        self._timer: Timer | None = None

    def compose_body(self) -> ComposeResult:
        yield Input(placeholder=self.PLACEHOLDER, id="filter", compact=True)
        yield Static("", id="table-status")
        yield PagedTable(id="table")

    @property
    def grid(self) -> PagedTable:
        return self.query_one("#table", PagedTable)

    def show(self, result: Any) -> None:
        self.table = result
        self.apply()

    def render_row(self, row: int) -> Sequence[object]:
        raise NotImplementedError

    def open_row(self, row: int) -> None:
        raise NotImplementedError

    def heading(self) -> str:
        return ""

    def column_width(self, key: str, width: int) -> int:
        return width

    # --- filtering and sorting ---------------------------------------------------------
    def apply(self) -> None:
        if self.table is not None:
            self._recompute(self.table, self.query_text, self.sort_column, self.descending)

    @work(thread=True, exclusive=True, group="order", description="filter and sort")
    def _recompute(self, table: Any, query: str, column: str, descending: bool) -> None:
        try:
            rows = table.filter(query) if query.strip() else None
        except InputError as error:  # an unknown column or word: said under the filter, the table stays
            if not get_current_worker().is_cancelled:
                self.deliver(self._show_filter_error, str(error))
            return
        order = table.order(column, descending=descending, rows=rows)
        if not get_current_worker().is_cancelled:
            self.deliver(self._show_order, order)

    def _show_filter_error(self, message: str) -> None:
        self.filter_error = message
        self.query_one("#table-status", Static).update(Text(f"⚠ {message}", style="bold red"))

    def _show_order(self, order: np.ndarray) -> None:
        columns = []
        for key, label, width in self.COLUMNS:
            if key == self.sort_column:
                label = f"{label}{'↓' if self.descending else '↑'}"
            width = max(self.column_width(key, width), len(label))
            columns.append((key, Text(label, justify="right" if key in self.RIGHT else "left"), width))
        self.filter_error = ""
        self.grid.set_columns(columns)
        self.grid.show_rows(order, self.render_row)
        self.update_status()

    def update_status(self) -> None:
        if self.filter_error:
            return
        grid, total = self.grid, len(self.table) if self.table is not None else 0
        shown = len(grid.order)
        parts = [self.heading(), f"{total:,} {self.NOUN}"]
        if self.query_text.strip():
            parts.append(f"{shown:,} match")
        if shown:
            parts.append(f"row {grid.position + 1:,}/{shown:,}")
        else:
            parts.append("nothing matches: see ? for the filter syntax")
        self.query_one("#table-status", Static).update(" · ".join(part for part in parts if part))

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(FILTER_DELAY_S, self.apply)

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.submit_filter(event.value.strip())

    def submit_filter(self, value: str) -> None:
        self.grid.focus()

    @on(DataTable.RowHighlighted, "#table")
    def _highlighted(self) -> None:
        self.update_status()

    @on(DataTable.RowSelected, "#table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.open_row(self.grid.row_id(event.cursor_row))

    @on(DataTable.HeaderSelected, "#table")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    def sort_by(self, column: str, descending: bool | None = None) -> None:
        if descending is None:
            descending = not self.descending if column == self.sort_column else column != self.COLUMNS[0][0]
        self.sort_column, self.descending = column, descending
        self.apply()

    def action_sort_next(self) -> None:
        keys = [key for key, _, _ in self.COLUMNS]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)])

    def action_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.descending)

    def action_export_csv(self) -> None:
        """Write the rows shown (filtered, in the current order) with every column to a CSV
        file in the working directory."""
        if self.table is None:
            return
        order = np.asarray(self.grid.order)
        stem = f"{self.data.study.path.stem}-{self.NOUN}"
        self._export(self.table, order, stem)

    @work(thread=True, exclusive=True, group="export", description="export CSV")
    def _export(self, table: Any, order: np.ndarray, stem: str) -> None:
        path = Path.cwd() / f"{stem}.csv"
        counter = 1
        while path.exists():
            counter += 1
            path = Path.cwd() / f"{stem}-{counter}.csv"
        try:
            write_csv(path, {name: table.columns[name] for name in table.spec.names}, order)
        except OSError as error:
            self.app.call_from_thread(self.notify, f"Could not write {path}: {error}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"Wrote {len(order):,} {self.NOUN} to {path}")

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.grid.focus()


def write_csv(path: Path, columns: Mapping[str, np.ndarray], order: np.ndarray) -> None:
    """Every column, rows in ``order``; floats as written by Python (round-trips exactly)."""
    names = list(columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        data = [np.asarray(columns[name])[order].tolist() for name in names]
        writer.writerows(zip(*data))
