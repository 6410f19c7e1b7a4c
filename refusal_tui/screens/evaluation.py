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

from refusal_tui.render import heat_scale, heat_style
from refusal_tui.screens.base import MissingData, StudyScreen


def sweep_grid(summary: dict[str, Any], judge: str) -> Text:
    """The sweep as a coloured grid: clamp values down, set sizes across (headed by the latent
    each size adds), refusal rates in cells, and the colour key."""
    cells = summary.get("sweep") or []
    if not cells:
        return Text("no sweep (run evaluate with --sweep VALUESxSIZES)")
    values = sorted({c["value"] for c in cells})
    sizes = sorted({c["size"] for c in cells})
    rate = {(c["value"], c["size"]): c["refusal_rate"].get(judge) for c in cells}
    latents = (summary.get("sweep_source") or {}).get("latents") or []
    text = Text(f"induced refusal on harmless prompts ({judge} judge): clamp value ↓ × set size →\n")
    if latents:
        text.append(f"set: first k of latents [{', '.join(map(str, latents[:max(sizes)]))}]\n", style="dim")
    text.append("        " + "".join(f"{s:>7}" for s in sizes) + "\n")
    if latents:
        text.append("  +id   " + "".join(f"{latents[s - 1]:>7}" if s <= len(latents) else f"{'?':>7}" for s in sizes) + "\n", style="dim")
    for v in values:
        text.append(f"{v:>7g} ")
        for s in sizes:
            r = rate.get((v, s))
            text.append(f"{r:>6.0%} " if r is not None else f"{'-':>6} ", style=heat_style(r, 1.0) if r is not None else "")
        text.append("\n")
    return text.append_text(heat_scale(1.0, "refusal rate colour scale", ".0%"))


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
        self.query_one("#evaluation-sweep", Static).update(sweep_grid(summary or {}, judges[-1]))
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
