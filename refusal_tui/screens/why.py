"""Why this prompt: its latents ranked by attribution, its minimal set, what ablating it does,
the dormant latents that wake and the FM partners; every latent opens its detail."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from explorer.browse_why import WhyView
from refusal_tui.screens.base import StudyScreen


def latent_link(latent: int, layer: int | None) -> str:
    where = "" if layer is None else f",{layer}"
    return f"[@click=screen.show_latent({latent}{where})]{latent}[/]"


def sections_markup(view: WhyView) -> str:
    """The parts under the ranking, as markup with clickable latent ids."""
    lines = ["[b]Minimal set[/b]"]
    if view.set_latents:
        confirmed = {1: "the generation complies", 0: "the generation still refuses", -1: "generation not checked"}
        lines.append(f"  set #{view.set_index}: " + " ".join(latent_link(l, view.layer) for l in view.set_latents))
        lines.append(f"  ablating it: refusal score {view.refusal_score:+.2f} → {view.set_score:+.2f}; "
                     f"{confirmed.get(view.set_confirmed, '?')}")
        if view.set_generation:
            lines.append(f"  [dim]{escape(view.set_generation)}[/dim]")
    else:
        lines.append(f"  {escape(view.set_note)}")
    lines += ["", "[b]Refusal direction[/b]", f"  {escape(view.direction_note)}", "", "[b]Dormant latents that wake[/b]"]
    if view.dormant:
        lines += [f"  {latent_link(l, layer)} (layer {layer}): {base:.2f} → {woke:.2f}" for l, layer, base, woke in view.dormant]
    else:
        lines.append(f"  {escape(view.dormant_note)}")
    lines += ["", "[b]FM partners of the top latents[/b]"]
    if view.partners:
        lines += [f"  {latent_link(a, view.layer)} × {latent_link(b, view.layer)}  ⟨v_i, v_j⟩ {value:+.3f} "
                  f"({'synergy' if value > 0 else 'redundancy'})" for a, b, value in view.partners]
    else:
        lines.append(f"  {escape(view.partners_note)}")
    return "\n".join(lines)


class WhyScreen(StudyScreen):
    """Opened with `w` from a prompt (or the prompt table)."""

    AUTO_FOCUS = "#why-ranking"
    BINDINGS = [
        Binding("escape", "app.back", "Back"),
        Binding("right_square_bracket", "step_next", "Next", show=False),
        Binding("left_square_bracket", "step_previous", "Prev", show=False),
    ]

    def __init__(self, index: int, *, layer: int | None = None) -> None:
        super().__init__()
        self.index, self.sae_layer = index, layer
        self.view: WhyView | None = None

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="why-scroll"):
            yield Static(id="why-head")
            yield Static(id="why-note", classes="hint")
            yield DataTable(id="why-ranking", cursor_type="row", zebra_stripes=True)
            yield Static(id="why-sections")

    def fetch(self) -> WhyView:
        return self.data.why_view(self.index, self.sae_layer)

    def show(self, view: WhyView) -> None:
        self.view = view
        head = Text(f"Why prompt #{view.index}", style="bold reverse")
        head.append("  ")
        head.append(view.label, style="red" if view.label == "harmful" else "green")
        outcome = {1: "refused", 0: "complied", -1: "not generated"}.get(view.refused, "?")
        head.append(f" · refusal score {view.refusal_score:+.2f} · generation {outcome}\n")
        head.append(view.text.replace("\n", " ")[:400])
        self.query_one("#why-head", Static).update(head)
        self.query_one("#why-note", Static).update(Text(view.ranking_note + " · enter opens a latent", style="dim"))
        table = self.query_one("#why-ranking", DataTable)
        table.clear(columns=True)
        table.add_columns("rank", "latent", "attribution", "activation", "in set")
        for rank, item in enumerate(view.ranking, 1):
            attribution = "—" if math.isnan(item.attribution) else f"{item.attribution:+.3f}"
            table.add_row(str(rank), Text(str(item.latent), style="bold"), attribution, f"{item.activation:.2f}",
                          Text("●", style="yellow") if item.in_set else "", key=str(item.latent))
        self.query_one("#why-sections", Static).update(sections_markup(view))

    @on(DataTable.RowSelected, "#why-ranking")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if self.view is not None and 0 <= event.cursor_row < len(self.view.ranking):
            self.open_latent(self.view.ranking[event.cursor_row].latent, self.view.layer)

    def action_step_next(self) -> None:
        self.step(1)

    def action_step_previous(self) -> None:
        self.step(-1)

    def step(self, delta: int) -> None:
        index = self.index + delta
        if 0 <= index < self.data.study.n_prompts:
            self.index = index
            self.reload()
