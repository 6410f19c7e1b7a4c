"""The pattern every view follows: compose at once, read the study in a thread worker, then show.

``fetch`` runs in a worker thread (it may read megabytes from the file); ``show`` runs on the
event loop with its result. A study error (a missing analysis, a layer without codes) replaces
the view's body by one line saying what to run, instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Container
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Static

from refusal_tui.messages import OpenLatent, OpenPrompt
from refusal_tui.widgets import KeyBar, NavBar
from store import InputError

if TYPE_CHECKING:
    from refusal_tui.data import StudyData


SPINNER_DELAY_S = 0.25


class StudyApp(Protocol):
    """What a screen reads from its app: the open study (the app handles OpenLatent/OpenPrompt)."""

    data: StudyData


class MissingData(Exception):
    """Raised by ``fetch`` when the view's analysis is absent; the message says what to run."""


class StudyScreen(Screen):
    """A view of the study with a navigation bar, a body, a notice line and the footer."""

    NAV: ClassVar[str | None] = None  # which tab of the navigation bar is this view
    _spinner: Timer | None = None
    shown_once = False  # show() has run: errors from then on go above the body, not instead of it

    @property
    def data(self) -> StudyData:
        return cast(StudyApp, self.app).data

    def open_latent(self, latent: int, layer: int | None = None) -> None:
        self.post_message(OpenLatent(latent, layer))

    def open_prompt(self, index: int, *, latent: int | None = None, layer: int | None = None) -> None:
        self.post_message(OpenPrompt(index, latent=latent, layer=layer))

    def action_show_latent(self, latent: int, layer: int | None = None) -> None:
        """Target of ``[@click=screen.show_latent(id,layer)]`` links."""
        self.open_latent(int(latent), None if layer is None else int(layer))

    def action_show_prompt(self, index: int, latent: int | None = None, layer: int | None = None) -> None:
        """Target of ``[@click=screen.show_prompt(index,latent,layer)]`` links."""
        self.open_prompt(int(index), latent=None if latent is None else int(latent), layer=None if layer is None else int(layer))

    def compose(self) -> ComposeResult:
        run = "" if self.data.run == "default" else f" · run {self.data.run}"
        # A screen pushed on a view (a latent, a prompt) keeps that view's tab lit: you are still in it.
        yield NavBar(self.NAV or self.app.current_mode, f"{self.data.study.path.name}{run}")
        yield Static("", id="notice", classes="notice")
        with Container(id="body"):
            yield from self.compose_body()
        yield KeyBar(id="keys")

    def compose_body(self) -> ComposeResult:
        yield from ()

    def __init__(self, *, prefetched: Any = None) -> None:
        super().__init__()
        self._prefetched = prefetched  # fetch()'s result, read before the screen was pushed

    def on_mount(self) -> None:
        if self._prefetched is None:
            self.reload()
            return
        # Shown as it mounts, so the first paint already has the data: one layout, not two.
        prefetched, self._prefetched = self._prefetched, None
        self.show(prefetched)
        self.shown_once = True

    def reload(self) -> None:
        self.query_one("#notice").display = False
        self.query_one("#body").display = True
        # A spinner only for slow reads: mounting one costs more than most reads take.
        self._hide_spinner()
        self._spinner = self.set_timer(SPINNER_DELAY_S, self._show_spinner)
        self._load()

    def _show_spinner(self) -> None:
        self.query_one("#body").loading = True

    def _hide_spinner(self) -> None:
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None
        body = self.query_one("#body")
        if body.loading:
            body.loading = False

    @work(thread=True, exclusive=True, group="load", description="read the study")
    def _load(self) -> None:
        try:
            result = self.fetch()
        except (InputError, MissingData) as error:
            self.deliver(self.show_notice, str(error))
            return
        except Exception as error:  # a damaged file must not take the whole app down
            self.deliver(self.show_notice, f"Could not read this view: {type(error).__name__}: {error}")
            return
        self.deliver(self.show, result)

    def deliver(self, callback: Callable[[Any], None], value: Any) -> None:
        """Run ``callback(value)`` on the event loop, unless the screen has gone meanwhile."""

        def guarded() -> None:
            if not self.is_attached:
                return  # popped while the worker read
            try:
                self._hide_spinner()
                callback(value)
                if callback == self.show:
                    self.shown_once = True
            except NoMatches as error:  # popped and being torn down: its widgets are going
                self.log.warning(f"{type(self).__name__}: result dropped ({error})")

        try:
            self.app.call_from_thread(guarded)
        except RuntimeError:  # the app is shutting down
            pass

    def fetch(self) -> Any:
        """Read what the view needs (worker thread)."""
        return None

    def show(self, result: Any) -> None:
        """Display ``fetch``'s result (event loop)."""

    def show_notice(self, message: str) -> None:
        """A study error: in place of the body when the view has nothing to show yet, else as a
        line above what it shows (a bad latent id in a prompt view keeps the prompt)."""
        notice = self.query_one("#notice", Static)
        notice.update(Text(message))  # not markup: paths and commands may hold brackets
        notice.display = True
        self.query_one("#body").display = self.shown_once
