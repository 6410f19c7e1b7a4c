"""HTML and Markdown for the web views: token highlighting, tables of key facts.

All text from the study (prompts, tokens, generations) is escaped: a study built from
untrusted prompts must not be able to inject markup into the page.
"""

from __future__ import annotations

import html

import numpy as np

from explorer.browse import ActivationExample

WHITESPACE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def show_token(token: str) -> str:
    """A token as visible text: newlines and tabs as symbols, leading spaces kept."""
    for raw, shown in WHITESPACE.items():
        token = token.replace(raw, shown)
    return token


def token_spans(tokens: list[str], values: np.ndarray, vmax: float, peak: int | None = None) -> str:
    """Tokens as spans shaded by value (orange for positive, blue for negative), value on hover."""
    scale = vmax if vmax > 0 else 1.0
    spans = []
    for position, (token, value) in enumerate(zip(tokens, values.tolist())):
        alpha = min(1.0, abs(value) / scale)
        colour = f"rgba(255,120,0,{alpha:.2f})" if value >= 0 else f"rgba(40,120,255,{alpha:.2f})"
        border = " outline:2px solid #c2410c;" if position == peak else ""
        spans.append(
            f'<span class="re-tok" style="background:{colour};{border}" title="#{position}: {value:.3f}">'
            f"{html.escape(show_token(token))}</span>"
        )
    return "".join(spans)


def example_block(example: ActivationExample, vmax: float, head: str) -> str:
    """One prompt as a block: a head line, then its tokens shaded by the latent's activation."""
    head = (f'<div class="re-ex-head">{head}prompt {example.prompt} · {html.escape(example.label)} · '
            f"peak {example.peak_value:.3f} at token {example.peak_position} "
            f"({html.escape(show_token(example.tokens[example.peak_position]))!s})</div>")
    body = token_spans(example.tokens, example.activations, vmax, example.peak_position)
    return (f'<div class="re-example" data-prompt="{example.prompt}" data-label="{html.escape(example.label)}">'
            f'{head}<div class="re-toks">{body}</div></div>')


def examples_html(examples: list[ActivationExample], latent: int) -> str:
    """Top-activating prompts, one block each, tokens shaded by the latent's activation."""
    if not examples:
        return f'<p class="re-empty">Latent {latent} never fires in this study.</p>'
    vmax = max(float(example.peak_value) for example in examples)
    blocks = [example_block(example, vmax, f"#{rank} · ") for rank, example in enumerate(examples, 1)]
    return f'<div class="re-examples" data-latent="{latent}">{"".join(blocks)}</div>'


def markdown_table(rows: list[tuple[str, str]], header: tuple[str, str] = ("Field", "Value")) -> str:
    """A two-column Markdown table of (name, value)."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += ["| " + name + " | " + value.replace("|", "\\|") + " |" for name, value in rows]
    return "\n".join(lines)


def token_list(tokens: list[str]) -> str:
    """Tokens as inline code, whitespace made visible (for logit-lens lists)."""
    if not tokens:
        return "—"
    return " ".join(f"`{show_token(token).replace('`', 'ʼ')}`" for token in tokens)


CSS = """
.re-tok { border-radius: 3px; padding: 0 1px; margin: 0 1px 2px 0; white-space: pre; display: inline-block;
          font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85em; }
.re-example { margin-bottom: 0.6em; }
.re-ex-head { font-size: 0.8em; opacity: 0.75; }
.re-empty { opacity: 0.7; }
.re-cols { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.re-col h4, .re-bucket h4 { margin: 0.4em 0; }
.re-col, .re-bucket { min-width: 0; overflow-x: auto; }
"""
