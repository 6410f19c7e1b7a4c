"""One prompt: its tokens coloured by a latent or the direction, its score, its generations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from explorer.browse import PromptView
from refusal_tui.render import highlighted_tokens
from refusal_tui.data import StudyData
from refusal_tui.screens.base import StudyScreen
from refusal_tui.screens.dialogs import AskNumber
from refusal_tui.screens.why import WhyScreen


@dataclass(frozen=True)
class PromptData:
    view: PromptView
    projection: np.ndarray | None  # float32 [n_tokens] on the direction (NaN without residual)
    direction_layer: int | None


def read_prompt(data: StudyData, index: int, latent: int | None, layer: int | None, *,
                by_direction: bool = False) -> PromptData:
    """What the prompt screen shows (worker thread; also used to prefetch before pushing it)."""
    view = data.prompt_view(index, latent, layer)
    projection = data.projection(index) if by_direction else None
    return PromptData(view, projection[0] if projection else None, projection[1] if projection else None)


class PromptScreen(StudyScreen):
    AUTO_FOCUS = "#prompt-scroll"
    BINDINGS = [
        Binding("escape", "app.back", "Back"),
        Binding("l", "choose_latent", "Colour by"),
        Binding("d", "by_direction", "Direction"),
        Binding("c", "clear_colour", "Plain"),
        Binding("a", "next_ablation", "Next set"),
        Binding("w", "why", "Why"),
        Binding("right_square_bracket", "step_next", "Next", show=False),
        Binding("left_square_bracket", "step_previous", "Prev", show=False),
    ]

    def __init__(self, index: int, *, latent: int | None = None, layer: int | None = None,
                 prefetched: PromptData | None = None) -> None:
        super().__init__(prefetched=prefetched)
        self.index, self.latent, self.sae_layer = index, latent, layer
        self.by_direction = False
        self.ablation = 0
        self.result: PromptData | None = None

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="prompt-scroll"):
            yield Static(id="prompt-head")
            yield Static(id="prompt-legend")
            yield Static(id="prompt-tokens")
            with Horizontal(id="prompt-gens"):
                yield Static(id="gen-baseline", classes="generation")
                yield Static(id="gen-ablated", classes="generation")

    def fetch(self) -> PromptData:
        return read_prompt(self.data, self.index, None if self.by_direction else self.latent, self.sae_layer,
                           by_direction=self.by_direction)

    def show(self, result: PromptData) -> None:
        self.result = result
        view = result.view
        head = Text(f"Prompt #{view.index}", style="bold reverse")
        head.append("  ")
        head.append(view.label, style="red" if view.label == "harmful" else "green")
        outcome = {1: "refused", 0: "complied", -1: "not generated"}.get(view.refused, "?")
        head.append(f" · refusal score {view.refusal_score:+.2f} · generation {outcome} · {len(view.tokens)} tokens")
        self.query_one("#prompt-head", Static).update(head)
        values, signed, legend = None, False, "Plain tokens · l: colour by a latent · d: by the refusal direction"
        if self.by_direction:
            if result.projection is None:
                legend = f"No refusal direction yet: {self.data.analyses().get('direction')}"
            else:
                values, signed = result.projection, True
                legend = (f"Projection on the refusal direction (layer {result.direction_layer}), red = towards "
                          "refusal · only post-instruction tokens have stored residuals")
        elif view.colour is not None:
            values = view.colour
            legend = f"Latent {self.latent} (layer {self.sae_layer}) · max here {float(values.max()):.2f} · c: plain"
        self.query_one("#prompt-legend", Static).update(Text(legend, style="dim"))
        self.query_one("#prompt-tokens", Static).update(highlighted_tokens(view.tokens, values, signed=signed))
        self.show_generations()

    def show_generations(self) -> None:
        if self.result is None:
            return
        view = self.result.view
        baseline = self.query_one("#gen-baseline", Static)
        baseline.border_title = "Baseline generation"
        baseline.update(Text(view.generation) if view.generation else Text("(not generated)", style="italic"))
        ablated = self.query_one("#gen-ablated", Static)
        if not view.ablations:
            ablated.border_title = "Ablated"
            command = self.data.analyses().get("greedy")
            if command:
                message = f"No minimal sets yet: run `{command}`."
            elif view.no_flip:
                k, score = view.no_flip[0]
                message = (f"No flipping set within the top {k} candidates: with all {k} ablated the refusal score "
                           f"is {score:+.2f}, still above the threshold.")
            else:
                message = "No minimal set was searched on this prompt; the Sets view (key 4) lists the prompts that have one."
            ablated.update(Text(message, style="italic"))
            return
        latents, generation, score = view.ablations[self.ablation % len(view.ablations)]
        shown = ", ".join(map(str, latents[:12])) + (" …" if len(latents) > 12 else "")
        ablated.border_title = f"Ablated {shown} · score {score:+.2f}"
        ablated.update(Text(generation) if generation else Text("(empty)", style="italic"))

    def action_choose_latent(self) -> None:
        def chosen(value: int | None) -> None:
            if value is None:
                return
            layer = self.sae_layer if self.sae_layer is not None else self.data.layer
            d_sae = self.data.d_sae(layer) if layer in self.data.layers_with_codes else 0
            if not 0 <= value < d_sae:  # said above the prompt, which stays as it was
                self.show_notice(f"Latent {value} is out of range: layer {layer} has {d_sae:,} latents." if d_sae else
                                 f"Layer {layer} has no SAE codes in this study.")
                return
            self.latent, self.by_direction, self.sae_layer = value, False, layer
            self.reload()

        self.app.push_screen(AskNumber("Colour the tokens by latent:", self.latent), chosen)

    def action_by_direction(self) -> None:
        self.by_direction = True
        self.reload()

    def action_clear_colour(self) -> None:
        self.by_direction, self.latent = False, None
        self.reload()

    def action_why(self) -> None:
        self.app.push_screen(WhyScreen(self.index, layer=self.sae_layer))

    def action_next_ablation(self) -> None:
        self.ablation += 1
        self.show_generations()

    def action_step_next(self) -> None:
        self.step(1)

    def action_step_previous(self) -> None:
        self.step(-1)

    def step(self, delta: int) -> None:
        index = self.index + delta
        if 0 <= index < self.data.study.n_prompts:
            self.index, self.ablation = index, 0
            self.reload()
