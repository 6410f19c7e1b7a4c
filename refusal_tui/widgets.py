"""Widgets shared by the screens: a windowed table for 100k+ rows and the navigation bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region
from textual.message import Message
from textual.widget import Widget
from textual.containers import Horizontal
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import DataTable, Static

from explorer.browse import ActivationExample
from refusal_tui.render import fit_window, highlighted_tokens

VIEWS = (
    ("overview", "1", "Overview"), ("features", "2", "Features"), ("prompts", "3", "Prompts"),
    ("sets", "4", "Sets"), ("fm", "5", "FM"), ("dormant", "6", "Dormant"),
    # the second paper's views (refusal_tui/screens/paper2.py)
    ("graph", "7", "Graph"), ("categories", "8", "Categories"), ("jailbreak", "9", "Jailbreak"), ("probe", "0", "Probe"),
    ("evaluate", "e", "Evaluate"),  # refusal_tui/screens/evaluation.py
)


class PagedTable(DataTable):
    """A DataTable over a long row order that holds only a window of it.

    A DataTable with 130k rows is slow to fill and to re-sort, so this one keeps ``page_size``
    rows and slides the window when the cursor moves past either end: arrows, page keys,
    home and end move through the whole order as if every row were there.
    """

    BINDINGS = [
        Binding("home", "first", "First row", show=False),
        Binding("end", "last", "Last row", show=False),
    ]

    def __init__(self, *, page_size: int = 200, id: str | None = None) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id=id)
        self.page_size = page_size
        self.order = np.zeros(0, np.int64)
        self.start = 0
        self._render: Callable[[int], Sequence[object]] = lambda row: ()

    def set_columns(self, columns: Sequence[tuple[str, str | Text, int]]) -> None:
        """(key, label, width) per column; rows are kept."""
        self.clear(columns=True)
        for key, label, width in columns:
            self.add_column(label, key=key, width=width)

    def show_rows(self, order: np.ndarray, render: Callable[[int], Sequence[object]], position: int = 0) -> None:
        """Show rows in ``order`` (ids passed to ``render``), the cursor on ``position``."""
        self.order, self._render = order, render
        self.start = -1  # force a refill
        self.goto(position)

    @property
    def position(self) -> int:
        """Index of the cursor in the whole order."""
        return self.start + self.cursor_row if len(self.order) else 0

    @property
    def current(self) -> int | None:
        """The row id under the cursor, or None when the order is empty."""
        return int(self.order[self.position]) if len(self.order) else None

    def row_id(self, window_row: int) -> int:
        return int(self.order[self.start + window_row])

    def goto(self, position: int) -> None:
        total = len(self.order)
        if total == 0:
            self.clear()
            self.start = 0
            return
        position = max(0, min(total - 1, position))
        if not self.start <= position < self.start + self.row_count or self.start < 0:
            offset = max(0, min(position - self.page_size // 4, total - self.page_size))
            self.clear()
            self.start = offset
            window = self.order[offset : offset + self.page_size]
            self.add_rows([self._render(int(row)) for row in window])
        self.move_cursor(row=position - self.start, animate=False)

    def _visible_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - self.header_height)

    def action_cursor_down(self) -> None:
        self.goto(self.position + 1)

    def action_cursor_up(self) -> None:
        self.goto(self.position - 1)

    def action_page_down(self) -> None:
        self.goto(self.position + self._visible_rows())

    def action_page_up(self) -> None:
        self.goto(self.position - self._visible_rows())

    def action_first(self) -> None:
        self.goto(0)

    def action_last(self) -> None:
        self.goto(len(self.order) - 1)

    action_scroll_top = action_first
    action_scroll_bottom = action_last


class NavBar(Horizontal):
    """The views as clickable tabs (keys 1–6), and the study's name."""

    def __init__(self, current: str | None, title: str) -> None:
        super().__init__(id="nav")
        self.current = current
        self.title_text = title

    def compose(self):  # type: ignore[override]
        parts = []
        for mode, key, label in VIEWS:
            style = "reverse " if mode == self.current else ""
            parts.append(f"[{style}@click=app.switch_mode('{mode}')] {key} {label} [/]")
        yield Static("".join(parts), id="nav-tabs")
        yield Static(Text(self.title_text, no_wrap=True, overflow="ellipsis", justify="right"), id="nav-title")


class KeyBar(Static):
    """The footer: the active key bindings as one line of clickable text.

    Textual's ``Footer`` rebuilds one widget per key on every focus change, which cost more
    (~0.25 s of CPU) than everything else in opening a view; this is one Static updated in place.
    """

    _line = ""

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        parts, grouped, seen = [], {}, set()
        for node, binding, enabled, _ in screen.active_bindings.values():
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            key = self.app.get_key_display(binding).replace("[", "\\[")  # escape() leaves a lone "[" as is
            namespace = "app." if node is self.app else "screen." if node is screen else ""
            link = f" @click={namespace}{binding.action}" if namespace and enabled else ""
            if binding.group is not None:
                grouped.setdefault(binding.group.description, []).append(f"[b{link}]{key}[/]")
                continue
            description = escape(binding.description)
            parts.append(f"[b{link}]{key}[/] " + (description if enabled else f"[dim]{description}[/]"))
        parts += ["".join(keys) + f" {escape(name)}" for name, keys in grouped.items()]
        line = "  ".join(parts) + "  [b @click=app.command_palette]^p[/] palette"
        if line != self._line:  # bindings are re-announced on every focus change, mostly unchanged
            self._line = line
            self.update(line, layout=False)  # one docked line: its size never changes


class ExampleList(Widget, can_focus=True):
    """Top-activating prompts, two lines each (header, tokens around the peak), one selected.

    One widget drawing every example: an OptionList of them cost ~50 ms more to open, half the
    detail screen's budget. Each example takes ``ITEM_LINES`` lines, so a click maps to an example.
    """

    BINDINGS = [
        Binding("down", "move(1)", "Next", show=False),
        Binding("up", "move(-1)", "Previous", show=False),
        Binding("enter", "choose", "Open prompt", show=False),
    ]
    ITEM_LINES = 3

    class Chosen(Message):
        """An example was chosen (enter or click): open its prompt."""

        def __init__(self, prompt: int) -> None:
            super().__init__()
            self.prompt = prompt

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.examples: list[ActivationExample] = []
        self.tags: list[str] = []
        self.vmax = 0.0
        self.index = 0
        self.empty = "This latent never fires on the cached prompts."

    def set_examples(self, examples: list[ActivationExample], vmax: float, *, tags: list[str] | None = None,
                     empty: str | None = None) -> None:
        """Show these examples; ``tags`` (one per example) lead each header, e.g. its quantile."""
        self.examples, self.vmax, self.index = examples, vmax, 0
        self.tags = tags or [""] * len(examples)
        self.empty = empty or "This latent never fires on the cached prompts."
        self.refresh(layout=True)

    def item_text(self, index: int, width: int = 80) -> Text:
        example = self.examples[index]
        selected = index == self.index and self.has_focus
        head = Text("▶ " if index == self.index else "  ", style="bold")
        if index < len(self.tags) and self.tags[index]:
            head.append(f"{self.tags[index]} ", style="dim")
        head.append(f"#{example.prompt} ", style="bold reverse" if selected else "bold")
        head.append(example.label, style="red" if example.label == "harmful" else "green")
        head.append(f" · {example.peak_value:.2f} at token {example.peak_position}")
        head.truncate(width, overflow="ellipsis")
        window = fit_window(example.tokens, example.peak_position, width - 2)
        tokens = highlighted_tokens(example.tokens, example.activations, vmax=self.vmax, window=window,
                                    peak=example.peak_position)
        tokens.truncate(width - 2, overflow="ellipsis")
        return Text.assemble(head, "\n  ", tokens)

    def render(self) -> Text:
        if not self.examples:
            return Text(self.empty, style="italic")
        width = max(20, self.size.width)
        return Text("\n\n").join(self.item_text(i, width) for i in range(len(self.examples)))

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return max(1, len(self.examples) * self.ITEM_LINES - 1)

    def action_move(self, delta: int) -> None:
        if self.examples:
            self.index = max(0, min(len(self.examples) - 1, self.index + delta))
            self.refresh()
            if self.parent is not None and isinstance(self.parent, Widget):
                region = Region(0, self.index * self.ITEM_LINES, self.size.width, self.ITEM_LINES - 1)
                self.parent.scroll_to_region(region, animate=False)

    def action_choose(self) -> None:
        if self.examples:
            self.post_message(self.Chosen(self.examples[self.index].prompt))

    def on_click(self, event: events.Click) -> None:
        index = event.y // self.ITEM_LINES
        if 0 <= index < len(self.examples):
            self.index = index
            self.refresh()
            self.action_choose()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
