"""Latents silent at baseline that wake up when the minimal set is ablated (the hydra effect)."""

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
        restores = int(np.sum(result.restores_refusal))
        self.query_one("#dormant-head", Static).update(Text(
            f"{len(result.latent)} latents wake up when the minimal set of layer {result.source_layer} is ablated · "
            f"{restores} restore refusal when ablated too · enter opens a latent", style="dim"))
        table = self.query_one("#dormant", DataTable)
        table.clear(columns=True)
        table.add_columns("latent", "layer", "base", "ablated", "effect", "restores", "fires on")
        order = np.argsort(result.refusal_effect, kind="stable")  # strongest restorers first
        for i in order:
            low, high = int(result.position_offsets[i]), int(result.position_offsets[i + 1])
            where = ", ".join(f"{int(p)}:{token_label(str(t))}" for p, t in
                              zip(result.position[low:high], result.position_token[low:high]))
            restores_cell = Text("yes", style="bold green") if result.restores_refusal[i] else Text("no", style="dim")
            table.add_row(
                Text(str(int(result.latent[i])), style="bold", justify="right"), str(int(result.layer[i])),
                f"{float(result.baseline_activation[i]):.2f}", f"{float(result.ablated_activation[i]):.2f}",
                f"{float(result.refusal_effect[i]):+.2f}", restores_cell, Text(where), key=str(int(i)),
            )

    @on(DataTable.RowSelected, "#dormant")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if self.result is None or event.row_key.value is None:
            return
        i = int(event.row_key.value)
        self.app.open_latent(int(self.result.latent[i]), int(self.result.layer[i]))  # type: ignore[attr-defined]
