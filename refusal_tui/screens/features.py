"""Every latent of a layer: sortable, filterable, one key from its detail."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.text import Text
from textual.binding import Binding

from explorer.browse import FeatureTable
from explorer.filters import FEATURES
from refusal_tui.render import number


def cell(value: float, spec: str) -> Text:
    return Text(number(value, spec), justify="right")
from refusal_tui.screens.table import TableScreen

FILTER_HELP = "filter: 12 (id prefix) · cos>0.2 · diff>=0.1 · minimal · fm · dormant · ? lists every column"


class FeaturesScreen(TableScreen):
    NAV = "features"
    NOUN = "latents"
    PLACEHOLDER = FILTER_HELP
    BINDINGS = [Binding("L", "next_layer", "Layer")]
    RIGHT = frozenset({"latent", "cosine", "attribution", "freq_harmful", "freq_harmless", "freq_diff", "max_active",
                       "minimal_sets", "fm_weight", "fm_interaction"})
    # Headers are names the filter takes (explorer.filters.FEATURES: short ones, to fit 80 columns).
    COLUMNS = tuple((column.name, column.header, 5) for column in FEATURES.columns)
    SPEC = FEATURES

    def __init__(self) -> None:
        super().__init__()
        # Open sorted by what matters most: the direction cosine where candidates were scored.
        self.sort_column, self.descending = "cosine", True

    def fetch(self) -> FeatureTable:
        return self.data.feature_table(self.data.layer)

    def show(self, result: FeatureTable) -> None:
        if self.sort_column == "cosine" and not np.isfinite(result.columns["cosine"]).any():
            self.sort_column = "freq_diff"  # no candidates stage: every cosine is NaN
        super().show(result)

    def heading(self) -> str:
        return f"layer {self.data.layer}"

    def render_row(self, row: int) -> Sequence[object]:
        c = self.table.columns
        dormant = Text("●", style="magenta") if c["dormant"][row] else ""
        sets = int(c["minimal_sets"][row])
        return (
            Text(str(row), style="bold", justify="right"), cell(c["cosine"][row], "+.2f"),
            cell(c["attribution"][row], "+.2f"), cell(c["freq_harmful"][row], ".2f"),
            cell(c["freq_harmless"][row], ".2f"), cell(c["freq_diff"][row], "+.2f"), cell(c["max_active"][row], ".2f"),
            Text(str(sets), style="bold yellow", justify="right") if sets else Text("·", justify="right"),
            cell(c["fm_weight"][row], "+.2f"), cell(c["fm_interaction"][row], ".2f"), dormant,
        )

    def open_row(self, row: int) -> None:
        self.open_latent(row, self.data.layer)

    def submit_filter(self, value: str) -> None:
        if value.isdigit():  # Enter on a bare id jumps to that latent
            self.open_latent(int(value), self.data.layer)
        else:
            super().submit_filter(value)

    def action_next_layer(self) -> None:
        layers = self.data.layers_with_codes
        if len(layers) < 2:
            self.notify("This study has SAE codes for one layer only.", severity="information")
            return
        self.data.layer = layers[(layers.index(self.data.layer) + 1) % len(layers)] if self.data.layer in layers else layers[0]
        self.table = None
        self.reload()
