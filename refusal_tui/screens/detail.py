"""One latent: where it fires (top prompts, tokens highlighted), how often, what it writes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from explorer.browse import FeatureDetail
from refusal_tui.render import frequency_bars, histogram_text, token_label
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
    fm_ran: bool = False  # the FM stage ran on this layer (so "no partner" means it is not among its latents)


class FeatureDetailScreen(StudyScreen):
    AUTO_FOCUS = "#detail-examples"
    BINDINGS = [
        Binding("escape", "app.back", "Back"),
        Binding("right_square_bracket", "step_next", "Next id"),
        Binding("left_square_bracket", "step_previous", "Prev id"),
    ]

    def __init__(self, layer: int, latent: int, *, prefetched: DetailView | None = None) -> None:
        super().__init__(prefetched=prefetched)
        self.sae_layer, self.latent = layer, latent

    def compose_body(self) -> ComposeResult:
        yield Static(id="detail-head")
        with Horizontal(id="detail-main"):
            with VerticalScroll(id="detail-info"):
                yield Static(id="detail-stats")  # one widget for all of it: each widget costs layout time
                yield Static(id="detail-links")
            with Vertical(id="detail-right"):
                yield Static("Top-activating prompts · enter opens one", classes="section")
                with VerticalScroll(id="detail-scroll"):
                    yield ExampleList(id="detail-examples")

    def fetch(self) -> DetailView:
        return read_detail(self.data, self.sae_layer, self.latent)

    def show(self, view: DetailView) -> None:
        detail = view.detail
        self.query_one("#detail-head", Static).update(head_text(view))
        labels = sorted({key.removeprefix("prompt_freq_") for key in detail.stats if key.startswith("prompt_freq_")})
        text = Text("Prompts where it fires\n", style="bold")
        text.append_text(frequency_bars([(label, detail.stats[f"prompt_freq_{label}"]) for label in labels], width=14))
        text.append("\nTokens where it fires\n", style="bold")
        text.append_text(frequency_bars([(label, detail.stats[f"token_freq_{label}"]) for label in labels], width=14))
        active = int(detail.stats["active_tokens"])
        text.append(f"\n\nActivations ({active:,} token{'' if active == 1 else 's'})\n", style="bold")
        text.append_text(histogram_text(*detail.histogram, width=16, max_rows=8))
        text.append("\n\n")
        text.append_text(lens_text(detail))
        self.query_one("#detail-stats", Static).update(text)
        self.query_one("#detail-links", Static).update(links_markup(detail, view.fm_ran))
        self.query_one("#detail-examples", ExampleList).set_examples(detail.examples, detail.stats.get("max_active", 0.0))
        self.query_one("#detail-scroll").scroll_home(animate=False)

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
                      fm_ran=fm is not None and fm.layer == layer)


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


def lens_text(detail: FeatureDetail) -> Text:
    text = Text("Logit lens (decoder → unembedding)\n", style="bold")
    if not detail.logit_lens_top and not detail.logit_lens_bottom:
        text.append("not stored in this study (cached without the logit lens)", style="italic")
        return text
    for name, tokens, style in (("+", detail.logit_lens_top, "green"), ("−", detail.logit_lens_bottom, "red")):
        text.append(f"{name} ", style=f"bold {style}")
        for token in tokens:
            text.append(token_label(token).replace(" ", "␣"), style=style)  # no quotes, no break inside
            text.append(" ")
        text.append("\n")
    text.rstrip()
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
