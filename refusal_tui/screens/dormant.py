"""Latents silent at baseline that wake up when a set (or the direction) is ablated, with their
causal tests: dormant backups and redundant latents first, per prompt and context."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from explorer.results import DormantResult
from refusal_tui.render import token_label
from refusal_tui.screens.base import MissingData, StudyScreen


class DormantScreen(StudyScreen):
    NAV = "dormant"
    AUTO_FOCUS = "#dormant"

    def __init__(self) -> None:
        super().__init__()
        self.result: DormantResult | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="dormant-head")
        yield DataTable(id="dormant", cursor_type="row", zebra_stripes=True)

    def fetch(self) -> DormantResult:
        dormant = self.data.dormant()
        if dormant is None:
            raise MissingData(self.data.missing("dormant"))
        return dormant

    def show(self, result: DormantResult) -> None:
        self.result = result
        self.query_one("#dormant-head", Static).update(head_text(result))
        table = self.query_one("#dormant", DataTable)
        table.clear(columns=True)
        tested = len(result.backup) == len(result.latent)  # runs made before the causal tests lack them
        table.add_columns("latent", "layer", "prompt", "context", "base", "woken", "suppressed", "clamped", "verdict", "fires on")
        kind = (result.backup.astype(int) * 2 + result.redundant.astype(int)) if tested else result.restores_refusal.astype(int)
        order = np.lexsort((result.refusal_effect, -kind))  # backups, then redundant, strongest first
        for i in order:
            low, high = int(result.position_offsets[i]), int(result.position_offsets[i + 1])
            where = ", ".join(f"{int(p)}:{token_label(str(t))}" for p, t in
                              zip(result.position[low:high], result.position_token[low:high]))
            if tested:
                verdict = (Text("backup", style="bold green") if result.backup[i] else
                           Text("redundant", style="bold yellow") if result.redundant[i] else Text("–", style="dim"))
                clamp = "n/a" if np.isnan(result.clamp_effect[i]) else f"{float(result.clamp_effect[i]):+.2f}"
                context, prompt = str(result.context[i]), str(int(result.prompt[i]))
            else:
                verdict = Text("restores", style="bold green") if result.restores_refusal[i] else Text("–", style="dim")
                clamp, context = "n/a", "minimal set"
                prompt = str(int(result.prompt[i])) if len(result.prompt) == len(result.latent) else "?"
            table.add_row(
                Text(str(int(result.latent[i])), style="bold", justify="right"), str(int(result.layer[i])), prompt, context,
                f"{float(result.baseline_activation[i]):.2f}", f"{float(result.ablated_activation[i]):.2f}",
                f"{float(result.refusal_effect[i]):+.2f}", clamp, verdict, Text(where), key=str(int(i)),
            )

    @on(DataTable.RowSelected, "#dormant")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if self.result is None or event.row_key.value is None:
            return
        i = int(event.row_key.value)
        self.open_latent(int(self.result.latent[i]), int(self.result.layer[i]))


def head_text(result: DormantResult) -> Text:
    """Counts, the tests used, and "none found" when so."""
    if len(result.backup) != len(result.latent):
        restores = int(np.sum(result.restores_refusal))
        return Text(f"{len(result.latent)} latents wake up when the minimal set of layer {result.source_layer} is ablated · "
                    f"{restores} restore refusal when ablated too (older run: rerun `refusal-explorer analyze dormant` for "
                    "the causal tests) · enter opens a latent", style="dim")
    backups = {(int(p), int(layer), int(j)) for p, layer, j in zip(result.prompt[result.backup], result.layer[result.backup], result.latent[result.backup])}
    redundant = int(result.redundant.sum())
    text = Text()
    if backups or redundant:
        text.append(f"{len(backups)} dormant backups, {redundant} redundant (latent, set) pairs", style="bold green")
    else:
        text.append("None found: no woken latent passed a causal test", style="bold")
    text.append(
        f" · {len(result.latent)} woken latents tested in {len(result.context_label)} contexts "
        f"(sets ablated at layer {result.source_layer}, sets less one latent, the direction) · backup: suppressing it deepens "
        f"the flip or clamping it raises refusal (> {result.effect_threshold:g}); redundant: the set alone does not flip, "
        "with it the score goes below the threshold · enter opens a latent", style="dim")
    return text
