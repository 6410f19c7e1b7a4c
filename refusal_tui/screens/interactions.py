"""The factorization machine: its verdict against additive effects, the verified pairs (FM vs
measured), and the pairwise factors among the top latents as a coloured grid (only when the
FM beats the additive model; otherwise the grid shows the main effects w alone)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from explorer.results import FMResult
from refusal_tui.render import signed_scale, signed_style, vertical_label
from refusal_tui.screens.base import MissingData, StudyScreen

TOP = 20  # latents in the grid: 20 × 3 cells + labels fit in 80 columns
LABELS = 2  # columns before the grid: latent, w


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
        yield Static(id="fm-scale")
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
        self.query_one("#fm-head", Static).update(head_text(fm))
        table = self.query_one("#fm-grid", DataTable)
        table.clear(columns=True)
        n_pairs = 0 if fm.verdict == "additive" else len(grid.rows)  # no pair is shown without evidence
        ids = [str(int(fm.latents[row])) for row in grid.rows]
        # Columns are named by latent id, written downwards so a 3-cell column holds any id.
        table.header_height = max([1, *(len(i) for i in ids[:n_pairs])])
        table.add_column(Text("latent", justify="right"), width=7, key="latent")
        table.add_column(Text("w", justify="right"), width=7, key="w")
        for j in range(n_pairs):
            table.add_column(vertical_label(ids[j], table.header_height), width=3, key=f"c{j}")
        for i, row in enumerate(grid.rows):
            cells: list[object] = [Text(ids[i], justify="right", style="bold"),
                                   Text(f"{float(fm.w[row]):+.2f} ", justify="right")]
            for j in range(n_pairs):
                value = float(grid.matrix[i, j])
                cells.append(Text(" · " if i == j else "   ", style="" if i == j else signed_style(value, grid.vmax)))
            table.add_row(*cells)
        scale = signed_scale(grid.vmax, "⟨vᵢ,vⱼ⟩ colour scale") if n_pairs else Text("")
        self.query_one("#fm-scale", Static).update(scale)
        self.query_one("#fm-pairs", Static).update(pairs_text(fm))
        if n_pairs > 1:
            table.move_cursor(row=0, column=LABELS + 1)

    @on(DataTable.CellHighlighted, "#fm-grid")
    def _highlighted(self, event: DataTable.CellHighlighted) -> None:
        grid = self.grid
        if grid is None:
            return
        i, column = event.coordinate.row, event.coordinate.column - LABELS
        a = int(grid.fm.latents[grid.rows[i]])
        if grid.fm.verdict == "additive":
            text = f"latent {a}: w {float(grid.fm.w[grid.rows[i]]):+.3f} (ablating it alone changes the score by about this)"
        elif column < 0 or column == i:
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
            self.open_latent(latent, self.grid.fm.layer)


def head_text(fm: FMResult) -> Text:
    text = Text()
    if fm.verdict:
        text.append(fm.verdict_text[:1].upper() + fm.verdict_text[1:], style="bold green" if fm.verdict == "interactions" else "bold")
        r2 = " · ".join(f"{name} {fm.r2_cv[k]:.2f} [{fm.r2_cv_low[k]:.2f}, {fm.r2_cv_high[k]:.2f}]" for k, name in enumerate(fm.MODELS))
        text.append(f"\nR² ({fm.folds}-fold CV): {r2} · FM rank {fm.rank} on {len(fm.latents)} latents (layer {fm.layer})", style="dim")
    else:
        text.append(f"FM on {len(fm.latents)} latents (layer {fm.layer}) · R² train {fm.r2_train:.2f}, holdout "
                    f"{fm.r2_holdout:.2f} (linear {fm.r2_linear_holdout:.2f}) · made before the FM-vs-linear test: "
                    "rerun `refusal-explorer analyze fm` for a verdict", style="dim")
    if fm.verdict != "additive":
        text.append("\n⟨vᵢ,vⱼ⟩: red raises, blue lowers the refusal score when both are ablated · enter opens the row's latent", style="dim")
    return text


def pairs_text(fm: FMResult) -> Text:
    """The verified pairs, FM beside measured; or why none is shown."""
    text = Text()
    if fm.verdict == "additive":
        text.append("Pairs: none shown: the FM does not explain the experiments better than additive effects.", style="bold")
        return text
    pairs = fm.verified_pairs()
    if not fm.verdict:
        text.append("Pairs: none verified (older run).", style="bold")
        return text
    if not pairs:
        text.append("Pairs: none verified by intervention.", style="bold")
        return text
    text.append("Verified pairs (measured f(ij) − f(i) − f(j) + f(∅), sd over prompts):\n", style="bold")
    for pair in pairs:
        text.append(f"  {pair['i']}×{pair['j']}  FM {pair['fm']:+.3f}  measured {pair['measured']:+.3f} ± {pair['measured_sd']:.3f}")
        if not pair["sign_agrees"]:
            text.append("  ⚠ sign disagrees", style="bold red")
        text.append("\n")
    text.rstrip()
    return text
