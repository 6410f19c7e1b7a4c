"""Every prompt of the study: label, refusal score, generation outcome, text."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from refusal_tui.data import PromptTable
from refusal_tui.screens.table import TableScreen

FILTER_HELP = "filter: harmful · refused · complied · score>1 · tokens<40 · #12 · any word   (/ to type)"
TEXT_WIDTH = 60  # at most; narrower terminals get what is left after the other columns


class PromptsScreen(TableScreen):
    NAV = "prompts"
    NOUN = "prompts"
    PLACEHOLDER = FILTER_HELP
    COLUMNS = (
        ("index", "#", 6), ("label", "label", 8), ("score", "score", 6), ("refused", "gen", 4),
        ("n_tokens", "toks", 4), ("text", "text", TEXT_WIDTH),
    )

    RIGHT = frozenset({"index", "score", "n_tokens"})

    def column_width(self, key: str, width: int) -> int:
        if key != "text":
            return width
        self.text_width = max(16, min(TEXT_WIDTH, self.size.width - 46))
        return self.text_width

    text_width = TEXT_WIDTH

    def fetch(self) -> PromptTable:
        return self.data.prompt_table()

    def render_row(self, row: int) -> Sequence[object]:
        t = self.table
        label = str(t.label[row])
        refused = int(t.refused[row])
        outcome = (Text("ref", style="red") if refused == 1 else Text("ok", style="green") if refused == 0
                   else Text("·", style="dim"))
        text = str(t.text[row]).replace("\n", " ")
        return (
            Text(str(row), style="bold", justify="right"),
            Text(label, style="red" if label == "harmful" else "green" if label == "harmless" else ""),
            Text(f"{float(t.score[row]):+.2f}", justify="right"), outcome,
            Text(str(int(t.n_tokens[row])), justify="right"),
            text if len(text) <= self.text_width else text[: self.text_width - 1] + "…",
        )

    def open_row(self, row: int) -> None:
        self.app.open_prompt(row)  # type: ignore[attr-defined]

    def submit_filter(self, value: str) -> None:
        if value.isdigit():  # Enter on a bare number opens that prompt
            self.app.open_prompt(int(value))  # type: ignore[attr-defined]
        else:
            super().submit_filter(value)
