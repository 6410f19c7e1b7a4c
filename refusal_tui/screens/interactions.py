"""The factorization machine's pairwise interactions among the top latents, as a coloured grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from explorer.results import FMResult
from refusal_tui.render import signed_style
from refusal_tui.screens.base import MissingData, StudyScreen

TOP = 20  # latents in the grid: 20 × 3 cells + labels fit in 80 columns


@dataclass(frozen=True)
class Grid:
    fm: FMResult
    rows: np.ndarray  # int [n]: indices into fm.latents, strongest first
    matrix: np.ndarray  # float32 [n, n]: <v_i, v_j> among them
    vmax: float


def top_grid(fm: FMResult, n: int = TOP) -> Grid:
    """The n latents with the largest |w| + Σ|⟨vᵢ,vⱼ⟩| and their interaction block."""
    full = fm.interaction()
    strength = np.abs(fm.w) + np.abs(full).sum(1)
    rows = np.argsort(-strength, kind="stable")[:n]
    block = full[np.ix_(rows, rows)]
    return Grid(fm, rows, block, float(np.abs(block).max()) if block.size else 0.0)


class InteractionsScreen(StudyScreen):
    NAV = "fm"
    AUTO_FOCUS = "#fm-grid"

    def __init__(self) -> None:
        super().__init__()
        self.grid: Grid | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="fm-head")
        yield DataTable(id="fm-grid", cursor_type="cell", cell_padding=0)
        yield Static(id="fm-status")
        yield Static(id="fm-pairs")

    def fetch(self) -> Grid:
        fm = self.data.fm()
        if fm is None:
            raise MissingData(self.data.missing("fm"))
        return top_grid(fm)

    def show(self, grid: Grid) -> None:
        self.grid = grid
        fm = grid.fm
        self.query_one("#fm-head", Static).update(Text(
            f"FM on {len(fm.latents)} latents (layer {fm.layer}) · R² train {fm.r2_train:.2f}, holdout "
            f"{fm.r2_holdout:.2f} (linear {fm.r2_linear_holdout:.2f}) · ⟨vᵢ,vⱼ⟩: red raises, blue lowers the "
            "refusal score when both are ablated · enter opens the row's latent", style="dim"))
        table = self.query_one("#fm-grid", DataTable)
        table.clear(columns=True)
        table.add_column(Text("#", justify="right"), width=3, key="index")
        table.add_column(Text("latent", justify="right"), width=7, key="latent")
        table.add_column(Text("w", justify="right"), width=7, key="w")
        for j in range(len(grid.rows)):
            table.add_column(Text(str(j), justify="center"), width=3, key=f"c{j}")
        for i, row in enumerate(grid.rows):
            cells: list[object] = [Text(f"{i}", justify="right", style="dim"),
                                   Text(str(int(fm.latents[row])), justify="right", style="bold"),
                                   Text(f"{float(fm.w[row]):+.2f} ", justify="right")]
            for j in range(len(grid.rows)):
                value = float(grid.matrix[i, j])
                cells.append(Text(" · " if i == j else "   ", style="" if i == j else signed_style(value, grid.vmax)))
            table.add_row(*cells)
        self.query_one("#fm-pairs", Static).update(pairs_text(fm))
        if len(grid.rows) > 1:
            table.move_cursor(row=0, column=4)

    @on(DataTable.CellHighlighted, "#fm-grid")
    def _highlighted(self, event: DataTable.CellHighlighted) -> None:
        grid = self.grid
        if grid is None:
            return
        i, column = event.coordinate.row, event.coordinate.column - 3
        a = int(grid.fm.latents[grid.rows[i]])
        if column < 0 or column == i:
            text = f"latent {a}: w {float(grid.fm.w[grid.rows[i]]):+.3f}, interaction share " \
                   f"{float(grid.fm.interaction_share[grid.rows[i]]):.0%}"
        else:
            b = int(grid.fm.latents[grid.rows[column]])
            text = f"latents {a} × {b}: ⟨vᵢ,vⱼ⟩ = {float(grid.matrix[i, column]):+.3f}"
        self.query_one("#fm-status", Static).update(Text(text, style="bold"))

    @on(DataTable.CellSelected, "#fm-grid")
    def _selected(self, event: DataTable.CellSelected) -> None:
        if self.grid is not None:
            latent = int(self.grid.fm.latents[self.grid.rows[event.coordinate.row]])
            self.app.open_latent(latent, self.grid.fm.layer)  # type: ignore[attr-defined]


def pairs_text(fm: FMResult, n: int = 4) -> Text:
    text = Text()
    for sign, style, title in (("positive", "red", "Strongest +"), ("negative", "blue", "Strongest −")):
        pairs = [p for p in fm.top_pairs(n, sign) if (p[2] > 0) == (sign == "positive") and p[2] != 0]
        text.append(f"{title}: ", style=f"bold {style}")
        text.append("  ".join(f"{a}×{b} {value:+.3f}" for a, b, value in pairs) or "none")
        text.append("\n")
    text.rstrip()
    return text
