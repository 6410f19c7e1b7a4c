"""Minimal latent sets that flip refusal, and each search's greedy trajectory as a text plot."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from explorer.browse import text_plot
from explorer.results import GreedyResult
from refusal_tui.screens.base import MissingData, StudyScreen


class SetsScreen(StudyScreen):
    NAV = "sets"
    AUTO_FOCUS = "#sets"
    BINDINGS = [Binding("enter", "open_prompt", "Open prompt", show=True)]

    def __init__(self) -> None:
        super().__init__()
        self.greedy: GreedyResult | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="sets-head")
        yield DataTable(id="sets", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="sets-detail"):
            yield Static(id="sets-latents")
            yield Static(id="sets-plot")

    def fetch(self) -> GreedyResult:
        greedy = self.data.greedy()
        if greedy is None:
            raise MissingData(self.data.missing("greedy"))
        return greedy

    def show(self, greedy: GreedyResult) -> None:
        self.greedy = greedy
        flips = greedy.flips()
        self.query_one("#sets-head", Static).update(Text(
            f"Layer {greedy.layer} · {int(flips.sum())} flipping sets from {len(flips)} searches within the top "
            f"{greedy.k} candidates ({greedy.order}) · a set flips when the refusal score < {greedy.threshold:g} · "
            "enter opens the prompt", style="dim"))
        table = self.query_one("#sets", DataTable)
        table.clear(columns=True)
        table.add_columns("set", "prompt", "size", "base", "all k", "final", "gen", "latents")
        for s in range(len(greedy.prompt)):
            latents = greedy.latents_of(s)
            if not flips[s]:  # a search that found nothing: not a set, say so
                table.add_row("—", str(int(greedy.prompt[s])), "—", f"{greedy.baseline_score[s]:+.2f}",
                              f"{greedy.start_score[s]:+.2f}", "—", "·",
                              Text(f"no flipping set within top {greedy.k}", style="italic dim"))
                continue
            flip = {1: Text("complies", style="green"), 0: Text("refuses", style="red")}.get(int(greedy.flipped[s]), "·")
            shown = ", ".join(map(str, latents[:6])) + (" …" if len(latents) > 6 else "")
            table.add_row(str(s), str(int(greedy.prompt[s])), str(len(latents)), f"{greedy.baseline_score[s]:+.2f}",
                          f"{greedy.start_score[s]:+.2f}", f"{greedy.final_score[s]:+.2f}", flip, shown)
        if len(greedy.prompt):
            first = np.flatnonzero(flips)
            row = int(first[0]) if len(first) else 0  # open on a set that flips
            table.move_cursor(row=row)
            self.show_set(row)

    @on(DataTable.RowHighlighted, "#sets")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_set(event.cursor_row)

    @on(DataTable.RowSelected, "#sets")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.open_set(event.cursor_row)

    def action_open_prompt(self) -> None:
        self.open_set(self.query_one("#sets", DataTable).cursor_row)

    def open_set(self, s: int) -> None:
        if self.greedy is not None and 0 <= s < len(self.greedy.prompt):
            latent = int(self.greedy.latents_of(s)[0]) if self.greedy.flips()[s] else None
            self.open_prompt(int(self.greedy.prompt[s]), latent=latent, layer=self.greedy.layer)

    def show_set(self, s: int) -> None:
        greedy = self.greedy
        if greedy is None or not 0 <= s < len(greedy.prompt):
            return
        if not greedy.flips()[s]:
            self.query_one("#sets-latents", Static).update(Text(
                f"Prompt {int(greedy.prompt[s])}: no flipping set within the top {greedy.k} candidates. With all "
                f"{greedy.k} ablated the refusal score is {greedy.start_score[s]:+.2f}, not below {greedy.threshold:g}, "
                "so the search stopped; there is no set to show."))
            self.query_one("#sets-plot", Static).update("")
            return
        links = " ".join(f"[@click=screen.show_latent({int(latent)},{greedy.layer})]{int(latent)}[/]"
                         for latent in greedy.latents_of(s))
        self.query_one("#sets-latents", Static).update(f"[b]Set #{s}[/b] on prompt {int(greedy.prompt[s])}: {links}")
        sizes, scores, removed = greedy.trajectory_of(s)
        plot = Text("ablated generation: ", style="dim")
        plot.append(str(greedy.ablated_generation[s]) + "\n")
        plot.append("Greedy trajectory: refusal score (y) vs latents still ablated (x)\n", style="bold")
        width = max(20, min(60, self.size.width - 16))
        plot.append(text_plot(np.asarray(sizes, np.float64), np.asarray(scores, np.float64), width=width, height=8))
        dropped = [str(int(latent)) for latent in removed if latent >= 0]
        shown = ", ".join(dropped[:15]) + (" …" if len(dropped) > 15 else "")
        plot.append(f"\nthreshold {greedy.threshold:g} · {len(sizes)} steps · removed in order: {shown or 'none'}",
                    style="dim")
        self.query_one("#sets-plot", Static).update(plot)
