"""The `evaluate` result: per-intervention refusal by three judges with intervals, per
category, the judges' agreement, side effects and the clamp × size sweep; every generation is
a row of the table, and selecting one shows the prompt, the full generation and each judge's
evidence."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from refusal_tui.screens.base import MissingData, StudyScreen


def sweep_grid(summary: dict[str, Any], judge: str) -> str:
    """The sweep as a text heatmap: clamp values down, set sizes across, refusal rates in cells."""
    cells = summary.get("sweep") or []
    if not cells:
        return "no sweep (run evaluate with --sweep VALUESxSIZES)"
    values = sorted({c["value"] for c in cells})
    sizes = sorted({c["size"] for c in cells})
    rate = {(c["value"], c["size"]): c["refusal_rate"].get(judge) for c in cells}
    lines = [f"induced refusal on harmless prompts ({judge} judge): clamp value ↓ × set size →",
             "        " + "".join(f"{s:>7}" for s in sizes)]
    for v in values:
        row = "".join(f"{rate[(v, s)]:>7.0%}" if rate.get((v, s)) is not None else f"{'-':>7}" for s in sizes)
        lines.append(f"{v:>7g} {row}")
    return "\n".join(lines)


class EvaluationScreen(StudyScreen):
    """Refusal rates, judge agreement and side effects of each evaluated intervention."""

    NAV = "evaluate"
    AUTO_FOCUS = "#evaluation-rows"

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="evaluation-top"):
            yield Static(id="evaluation-summary")
            yield Static(id="evaluation-sweep")
        yield DataTable(id="evaluation-rows", cursor_type="row", zebra_stripes=True)
        yield Static(id="evaluation-detail")

    def fetch(self) -> dict[str, Any]:
        from explorer.benchmark import load_evaluation

        stored = load_evaluation(self.data.study, self.data.run)
        if stored is None:
            raise MissingData(
                f"No evaluation in run '{self.data.run}' yet. Produce it with: refusal-explorer evaluate {self.data.study.path}"
            )
        return stored

    def show(self, stored: dict[str, Any]) -> None:
        from explorer.benchmark_metrics import format_summary

        self._stored = stored
        arrays = stored["arrays"]
        judges = [j for j in ("substring", "phrase", "semantic") if f"row_{j}" in arrays]
        summary = stored.get("summary")
        head = format_summary(summary, judges) if summary else "evaluation not finished: run the same evaluate command again to continue"
        self.query_one("#evaluation-summary", Static).update(Text(head.strip()))
        self.query_one("#evaluation-sweep", Static).update(Text(sweep_grid(summary or {}, judges[-1])))
        table = self.query_one("#evaluation-rows", DataTable)
        table.clear(columns=True)
        table.add_columns("intervention", "set", "#", "category", *judges, "generation")
        for r in range(len(arrays["row_index"])):
            verdicts = ["refusal" if arrays[f"row_{j}"][r] else "answer" for j in judges]
            table.add_row(
                str(arrays["row_intervention"][r]), str(arrays["row_set"][r]), int(arrays["row_index"][r]), str(arrays["row_category"][r]),
                *verdicts, str(arrays["row_generation"][r])[:60].replace("\n", "⏎"), key=str(r),
            )

    @on(DataTable.RowHighlighted, "#evaluation-rows")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        arrays = self._stored["arrays"]
        r = int(event.row_key.value)
        judges = [j for j in ("substring", "phrase", "semantic") if f"row_{j}" in arrays]
        evidence = "\n".join(f"{j}: {'refusal' if arrays[f'row_{j}'][r] else 'answer'}"
                             + (f" ({arrays[f'row_{j}_evidence'][r]})" if arrays[f"row_{j}_evidence"][r] else "") for j in judges)
        self.query_one("#evaluation-detail", Static).update(Text(
            f"{arrays['row_intervention'][r]} · {arrays['row_set'][r]} #{arrays['row_index'][r]}\n"
            f"prompt: {arrays['row_prompt'][r]}\n\n{arrays['row_generation'][r]}\n\n{evidence}"))
