"""One latent: where it fires (top prompts, the top of each label, a few per activation quantile,
a text search; tokens highlighted), how often (histogram by label), what it writes (logit lens
with values). The numbers come from explorer.browse and explorer.latent_dashboard."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, Static

from explorer.browse import ActivationExample, FeatureDetail
from explorer.latent_dashboard import LatentDashboard, dashboard, search
from refusal_tui.render import frequency_bars, histogram_by_label_text, lens_values_text
from refusal_tui.data import StudyData
from refusal_tui.screens.base import StudyScreen
from refusal_tui.widgets import ExampleList


@dataclass(frozen=True)
class DetailView:
    detail: FeatureDetail
    cosine: float | None  # with the refusal direction, where candidates were scored
    attribution: float | None
    fm_weight: float | None
    d_sae: int
    board: LatentDashboard | None = None
    fm_ran: bool = False  # the FM stage ran on this layer (so "no partner" means it is not among its latents)


class FeatureDetailScreen(StudyScreen):
    AUTO_FOCUS = "#detail-examples"
    BINDINGS = [
        Binding("escape", "app.back", "Back"),
        Binding("right_square_bracket", "step_next", "Next id"),
        Binding("left_square_bracket", "step_previous", "Prev id"),
        Binding("v", "next_examples", "Examples"),
        Binding("slash", "focus_search", "Search"),
    ]

    def __init__(self, layer: int, latent: int, *, prefetched: DetailView | None = None) -> None:
        super().__init__(prefetched=prefetched)
        self.sae_layer, self.latent = layer, latent
        self.view: DetailView | None = None
        self.examples_mode = 0  # index into example_modes(view)

    def compose_body(self) -> ComposeResult:
        yield Static(id="detail-head")
        with Horizontal(id="detail-main"):
            with VerticalScroll(id="detail-info"):
                yield Static(id="detail-stats")  # one widget for all of it: each widget costs layout time
                yield Static(id="detail-links")
            with Vertical(id="detail-right"):
                yield Static("Top-activating prompts · enter opens one", classes="section", id="detail-examples-title")
                yield Input(placeholder="/ search the prompts where it fires (enter)", id="detail-search", compact=True)
                with VerticalScroll(id="detail-scroll"):
                    yield ExampleList(id="detail-examples")

    def fetch(self) -> DetailView:
        return read_detail(self.data, self.sae_layer, self.latent)

    def show(self, view: DetailView) -> None:
        detail = view.detail
        self.query_one("#detail-head", Static).update(head_text(view))
        labels = sorted({key.removeprefix("prompt_freq_") for key in detail.stats if key.startswith("prompt_freq_")})
        text = Text("Prompts where it fires\n", style="bold")
        text.append_text(frequency_bars([(label, detail.stats[f"prompt_freq_{label}"]) for label in labels], width=12))
        text.append("\nTokens where it fires\n", style="bold")
        text.append_text(frequency_bars([(label, detail.stats[f"token_freq_{label}"]) for label in labels], width=12))
        active = int(detail.stats["active_tokens"])
        board = view.board
        text.append(f"\n\nActivations ({active:,} token{'' if active == 1 else 's'})\n", style="bold")
        text.append_text(histogram_by_label_text(board.edges, board.counts_by_label) if board is not None
                         else Text("(not computed)", style="italic"))
        text.append("\n\n")
        text.append_text(lens_values_text(board.lens_top, board.lens_bottom) if board is not None else Text(""))
        self.query_one("#detail-stats", Static).update(text)
        self.query_one("#detail-links", Static).update(links_markup(detail, view.fm_ran))
        self.view, self.examples_mode = view, 0
        self.query_one("#detail-search", Input).value = ""
        self.show_examples()

    def show_examples(self) -> None:
        """The example list in the current mode: top overall, top per label, or per quantile."""
        if self.view is None:
            return
        modes = example_modes(self.view)
        current = self.examples_mode % len(modes)
        _, title, examples, tags = modes[current]
        following = modes[current + 1:] + modes[:current]
        keys = " · v: " + " → ".join(name for name, _, _, _ in following) if len(modes) > 1 else ""
        self.query_one("#detail-examples-title", Static).update(Text(f"{title} · enter opens one{keys}"))
        empty = f"Latent {self.latent} never fires on a prompt of this kind." if self.view.board and self.view.board.n_prompts else None
        self.query_one("#detail-examples", ExampleList).set_examples(examples, self.view.detail.stats.get("max_active", 0.0),
                                                                   tags=tags, empty=empty)
        self.query_one("#detail-scroll").scroll_home(animate=False)

    def action_next_examples(self) -> None:
        self.examples_mode += 1
        self.show_examples()

    def action_focus_search(self) -> None:
        self.query_one("#detail-search", Input).focus()

    @on(Input.Submitted, "#detail-search")
    def _search(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        if not query:
            self.show_examples()
            return
        found, total = search(self.data.browser, self.sae_layer, self.latent, query)
        title = f"{total} prompt{'' if total == 1 else 's'} where it fires containing “{query}”"
        self.query_one("#detail-examples-title", Static).update(Text(title + " · enter opens one · empty search: back"))
        self.query_one("#detail-examples", ExampleList).set_examples(
            found, max((e.peak_value for e in found), default=0.0), empty=f"No prompt where latent {self.latent} fires contains “{query}”.")
        self.query_one("#detail-examples", ExampleList).focus()

    @on(ExampleList.Chosen)
    def _open_example(self, event: ExampleList.Chosen) -> None:
        self.open_prompt(event.prompt, latent=self.latent, layer=self.sae_layer)

    def action_step_next(self) -> None:
        self.step(1)

    def action_step_previous(self) -> None:
        self.step(-1)

    def step(self, delta: int) -> None:
        """Move to the neighbouring latent id (useful to skim)."""
        latent = self.latent + delta
        if 0 <= latent < self.data.study.codes(self.sae_layer).d_sae:
            self.latent = latent
            self.reload()


def read_detail(data: StudyData, layer: int, latent: int) -> DetailView:
    """What the detail screen shows (worker thread; also used to prefetch before pushing it)."""
    detail = data.feature_detail(layer, latent)
    candidates, fm = data.candidates(), data.fm()
    cosine = attribution = fm_weight = None
    if candidates is not None and candidates.layer == layer:
        cosine, attribution = float(candidates.cosine[latent]), float(candidates.attribution[latent])
    if fm is not None and fm.layer == layer and latent in fm.latents:
        fm_weight = float(fm.w[int(np.flatnonzero(fm.latents == latent)[0])])
    return DetailView(detail, cosine, attribution, fm_weight, data.codes(layer).d_sae,
                      board=dashboard(data.browser, layer, latent), fm_ran=fm is not None and fm.layer == layer)


def example_modes(view: DetailView) -> list[tuple[str, str, list[ActivationExample], list[str]]]:
    """(short name, title, examples, tags) per mode of the example list: top overall, top of
    each label, a few from each activation quantile."""
    modes = [("top", "Top-activating prompts", view.detail.examples, [])]
    board = view.board
    if board is None or board.n_prompts == 0:
        return modes
    for label, examples in board.top_by_label.items():
        modes.append((label, f"Top {label}", examples, []))
    tagged = [(f"Q{q} [{b.first + 1}–{b.stop}]", e) for q, b in enumerate(board.buckets, 1) for e in b.examples]
    title = f"By activation quantile (Q1 strongest … Q{len(board.buckets)} weakest; [ranks] of {board.n_prompts} prompts)"
    modes.append(("quantiles", title, [e for _, e in tagged], [t for t, _ in tagged]))
    return modes


def head_text(view: DetailView) -> Text:
    detail = view.detail
    text = Text(f"Latent {detail.latent}", style="bold reverse")
    text.append(f"  layer {detail.layer} · of {view.d_sae:,}")
    facts = [f"max {detail.stats['max_active']:.2f}"]
    if view.cosine is not None:
        facts.append(f"cos {view.cosine:+.3f}")
    if view.attribution is not None:
        facts.append(f"attr {view.attribution:+.3f}")
    if view.fm_weight is not None:
        facts.append(f"FM w {view.fm_weight:+.3f}")
    if "decoder_norm" in detail.stats:
        facts.append(f"|dec| {detail.stats['decoder_norm']:.2f}")
    text.append("  " + " · ".join(facts))
    if detail.minimal_sets:
        text.append(f"  in {len(detail.minimal_sets)} minimal set(s)", style="bold yellow")
    if detail.dormant:
        d = detail.dormant
        text.append(f"\nDormant: {d['baseline']:.2f} at baseline → {d['ablated']:.2f} with the set ablated; "
                    f"refusal effect {d['refusal_effect']:+.2f}", style="magenta")
    return text


def links_markup(detail: FeatureDetail, fm_ran: bool = False) -> str:
    """FM partners and minimal sets, as clickable links (numbers only, so no markup escaping)."""
    lines = ["[b]Strongest FM partners[/b] ⟨vᵢ,vⱼ⟩"]
    if detail.fm_partners:
        lines += [f"  [@click=screen.show_latent({latent},{detail.layer})]{latent:>6}[/]  {value:+.3f}"
                  for latent, value in detail.fm_partners]
    else:
        lines.append("  [i]not among the FM's latents[/i]" if fm_ran else "  [i]no FM on this layer yet (refusal-explorer analyze fm)[/i]")
    lines.append("[b]Minimal sets[/b]")
    if detail.minimal_sets:
        lines += [f"  [@click=app.switch_mode('sets')]set #{s}[/]" for s in detail.minimal_sets]
    else:
        lines.append("  [i]in none[/i]")
    return "\n".join(lines)
