"""What a screen asks of the app, as Textual messages (they bubble from the screen to the app).

Screens never call the app's methods: they post one of these, and ``RefusalApp`` handles it, so
a screen can be mounted in any app (a test harness included) that handles the same messages.
"""

from __future__ import annotations

from textual.message import Message


class OpenLatent(Message):
    """Open a latent's detail (``layer`` None: the app's current layer)."""

    def __init__(self, latent: int, layer: int | None = None) -> None:
        super().__init__()
        self.latent, self.layer = latent, layer


class OpenPrompt(Message):
    """Open a prompt, its tokens coloured by ``latent`` of ``layer`` when given."""

    def __init__(self, index: int, *, latent: int | None = None, layer: int | None = None) -> None:
        super().__init__()
        self.index, self.latent, self.layer = index, latent, layer
