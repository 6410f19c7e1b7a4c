"""Modal dialogs: ask for a number (go to latent / prompt), and the help screen."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from explorer.filters import FEATURES, PROMPTS

HELP_TEMPLATE = """\
# Refusal Explorer — keys

| Key | Anywhere |
|---|---|
| `1`…`6` | Overview, Features, Prompts, minimal Sets, FM interactions, Dormant latents |
| `g` / `p` | go to a latent / a prompt by number |
| `t` | light / dark theme |
| `ctrl+p` | command palette (every view and action, searchable) |
| `?` | this help · `escape` back · `q` quit |

| Key | Feature and prompt tables |
|---|---|
| `/` | type a filter (incremental); `enter` on a bare number opens it |
| `s` / `r` | sort by the next column / reverse (or click a header) |
| `↑↓ pgup pgdn home end` | move through every row (the table holds a window of them) |
| `enter` | open the row · `L` next layer with SAE codes · `x` export the rows shown to CSV |

{features}

{prompts}

| Key | Feature detail |
|---|---|
| `enter` | open the highlighted prompt, coloured by this latent |
| `[` / `]` | previous / next latent id |

| Key | Prompt view |
|---|---|
| `l` / `d` / `c` | colour tokens by a latent / by the refusal direction / not at all |
| `a` | next minimal set's ablated generation · `[` `]` previous / next prompt |
| `w` | why: latents ranked by attribution to this prompt's refusal, its minimal set, dormant latents, FM partners (also from the prompt table) |

| Key | Sets and FM |
|---|---|
| `enter` | sets: open the set's prompt · FM: open the row's latent |

Views whose analysis has not been run say which `refusal-explorer analyze …` command produces it.
"""

HELP = HELP_TEMPLATE.format(
    features="## Feature table: columns and filter\n\n" + FEATURES.legend_markdown().replace("Filter:", "**Feature filter**:"),
    prompts="## Prompt table: columns and filter\n\n" + PROMPTS.legend_markdown().replace("Filter:", "**Prompt filter**:"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        from textual.widgets import Markdown  # markdown-it and pygments cost ~0.3 s to import: only on demand

        with VerticalScroll(id="help"):
            yield Markdown(HELP)


class AskNumber(ModalScreen[int | None]):
    """A one-line prompt for a non-negative integer; dismisses with it (or None)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, default: int | None = None) -> None:
        super().__init__()
        self.question, self.default = question, default

    def compose(self) -> ComposeResult:
        with Vertical(id="ask"):
            yield Static(self.question)
            yield Input("" if self.default is None else str(self.default), type="integer", id="ask-input")
            yield Static("enter: go · escape: cancel", classes="hint")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(int(value) if value.isdigit() else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
