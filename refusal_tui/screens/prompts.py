"""Every prompt of the study: label, refusal score, generation outcome, text."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding

from explorer.browse import PromptTable
from explorer.filters import PROMPTS
from refusal_tui.screens.table import TableScreen
from refusal_tui.screens.why import WhyScreen

FILTER_HELP = "filter: harmful · refused · score>1 · toks<40 · #12 · any word · ? lists every column"
TEXT_WIDTH = 60  # at most; narrower terminals get what is left after the other columns


class PromptsScreen(TableScreen):
    NAV = "prompts"
    NOUN = "prompts"
    PLACEHOLDER = FILTER_HELP
    BINDINGS = [Binding("w", "why", "Why")]
    # Headers are names the filter takes (explorer.filters.PROMPTS: short ones, to fit 80 columns).
    COLUMNS = tuple((column.name, column.header, {"label": 8, "text": TEXT_WIDTH}.get(column.name, 5))
                    for column in PROMPTS.columns)
    SPEC = PROMPTS
    RIGHT = frozenset({"prompt", "refusal_score", "refused", "tokens"})

    def column_width(self, key: str, width: int) -> int:
        if key != "text":
            return width
        self.text_width = max(16, min(TEXT_WIDTH, self.size.width - 48))
        return self.text_width

    text_width = TEXT_WIDTH

    def fetch(self) -> PromptTable:
        return self.data.prompt_table()

    def render_row(self, row: int) -> Sequence[object]:
        c = self.table.columns
        label = str(c["label"][row])
        refused = int(c["refused"][row])
        outcome = Text(str(refused), style={1: "red", 0: "green"}.get(refused, "dim"), justify="right")
        text = str(c["text"][row]).replace("\n", " ")
        return (
            Text(str(row), style="bold", justify="right"),
            Text(label, style="red" if label == "harmful" else "green" if label == "harmless" else ""),
            Text(f"{float(c['refusal_score'][row]):+.2f}", justify="right"), outcome,
            Text(str(int(c["tokens"][row])), justify="right"),
            text if len(text) <= self.text_width else text[: self.text_width - 1] + "…",
        )

    def action_why(self) -> None:
        if self.table is not None and len(self.grid.order):
            self.app.push_screen(WhyScreen(int(self.grid.current)))

    def open_row(self, row: int) -> None:
        self.open_prompt(row)

    def submit_filter(self, value: str) -> None:
        if value.isdigit():  # Enter on a bare number opens that prompt
            self.open_prompt(int(value))
        else:
            super().submit_filter(value)
