"""The Textual app: one mode per view (keys 1–6), detail screens pushed on top."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from refusal_tui.data import StudyData
from refusal_tui.messages import OpenLatent, OpenPrompt
from refusal_tui.screens.detail import DetailView, FeatureDetailScreen, read_detail
from refusal_tui.screens.dialogs import AskNumber, HelpScreen
from refusal_tui.screens.dormant import DormantScreen
from refusal_tui.screens.evaluation import EvaluationScreen
from refusal_tui.screens.features import FeaturesScreen
from refusal_tui.screens.interactions import InteractionsScreen
from refusal_tui.screens.overview import OverviewScreen
from refusal_tui.screens.paper2 import PAPER2_SCREENS
from refusal_tui.screens.prompt import PromptData, PromptScreen, read_prompt
from refusal_tui.screens.prompts import PromptsScreen
from refusal_tui.screens.sets import SetsScreen
from refusal_tui.widgets import VIEWS

_VIEW_GROUP = Binding.Group("views", compact=True)


class RefusalApp(App[None]):
    """Browse one study file: features, prompts, minimal sets, interactions, dormant latents."""

    TITLE = "Refusal Explorer"
    CSS_PATH = "styles.tcss"
    MODES = {
        "overview": OverviewScreen, "features": FeaturesScreen, "prompts": PromptsScreen,
        "sets": SetsScreen, "fm": InteractionsScreen, "dormant": DormantScreen, **PAPER2_SCREENS,
        "evaluate": EvaluationScreen,
    }
    DEFAULT_MODE = "overview"
    BINDINGS = [
        *(Binding(key, f"switch_mode('{mode}')", label, group=_VIEW_GROUP) for mode, key, label in VIEWS),
        Binding("g", "goto_latent", "Latent"),
        Binding("p", "goto_prompt", "Prompt", show=False),
        Binding("t", "toggle_dark", "Theme", show=False),
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, data: StudyData) -> None:
        super().__init__()
        self.data = data
        self.sub_title = str(data.study.path.name)

    def on_unmount(self) -> None:
        self.data.study.close()

    # --- navigation: screens post OpenLatent / OpenPrompt ---------------------------------
    def on_open_latent(self, message: OpenLatent) -> None:
        self.open_latent(message.latent, message.layer)

    def on_open_prompt(self, message: OpenPrompt) -> None:
        self.open_prompt(message.index, latent=message.latent, layer=message.layer)

    def open_latent(self, latent: int, layer: int | None = None) -> None:
        layer = self.data.layer if layer is None else layer
        if layer not in self.data.layers_with_codes:
            self.notify(f"Layer {layer} has no SAE codes in this study.", severity="warning")
            return
        d_sae = self.data.study.codes(layer).d_sae
        if not 0 <= latent < d_sae:
            self.notify(f"Latent {latent} is out of range: layer {layer} has {d_sae:,} latents.", severity="warning")
            return
        self._open_latent(layer, latent)

    @work(thread=True, exclusive=True, group="open", description="read a latent")
    def _open_latent(self, layer: int, latent: int) -> None:
        """Read first, push after: the detail's first paint then has its data (one layout)."""
        try:
            view: DetailView | None = read_detail(self.data, layer, latent)
        except Exception:  # the screen reads again and shows the error in place
            view = None
        self.call_from_thread(self.push_screen, FeatureDetailScreen(layer, latent, prefetched=view))

    def open_prompt(self, index: int, *, latent: int | None = None, layer: int | None = None) -> None:
        n = self.data.study.n_prompts
        if not 0 <= index < n:
            self.notify(f"Prompt {index} is out of range: the study has {n:,} prompts.", severity="warning")
            return
        self._open_prompt(index, latent, self.data.layer if layer is None else layer)

    @work(thread=True, exclusive=True, group="open", description="read a prompt")
    def _open_prompt(self, index: int, latent: int | None, layer: int) -> None:
        try:
            view: PromptData | None = read_prompt(self.data, index, latent, layer)
        except Exception:
            view = None
        self.call_from_thread(self.push_screen, PromptScreen(index, latent=latent, layer=layer, prefetched=view))

    def action_goto_latent(self) -> None:
        def chosen(value: int | None) -> None:
            if value is not None:
                self.open_latent(value)

        self.push_screen(AskNumber(f"Go to latent (layer {self.data.layer}):"), chosen)

    def action_goto_prompt(self) -> None:
        def chosen(value: int | None) -> None:
            if value is not None:
                self.open_prompt(value)

        self.push_screen(AskNumber(f"Go to prompt (0–{self.data.study.n_prompts - 1:,}):"), chosen)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def sort_features(self, column: str) -> None:
        await self.switch_mode("features")
        screen = self.screen_stack[0]
        if isinstance(screen, FeaturesScreen):
            screen.sort_by(column, descending=column != "latent")

    # --- command palette ----------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, key, label in VIEWS:
            yield SystemCommand(f"View: {label}", f"Switch to the {label.lower()} view (key {key})",
                                partial(self.switch_mode, mode))
        yield SystemCommand("Go to latent…", "Open a latent's detail by id (key g)", self.action_goto_latent)
        yield SystemCommand("Go to prompt…", "Open a prompt by index (key p)", self.action_goto_prompt)
        yield SystemCommand("Toggle light/dark", "Switch between the light and dark theme (key t)", self.action_toggle_dark)
        yield SystemCommand("Help", "Keys and filter syntax (key ?)", self.action_help)
        for key, label, _ in FeaturesScreen.COLUMNS:
            yield SystemCommand(f"Sort features by {key}", f"Feature table sorted by the '{label}' column",
                                partial(self.sort_features, key), discover=False)
        for layer in self.data.layers_with_codes:
            yield SystemCommand(f"Layer {layer}", f"Show the features of layer {layer}",
                                partial(self.set_layer, layer), discover=False)

    async def set_layer(self, layer: int) -> None:
        self.data.layer = layer
        await self.switch_mode("features")
        screen = self.screen_stack[0]
        if isinstance(screen, FeaturesScreen):
            screen.table = None
            screen.reload()
