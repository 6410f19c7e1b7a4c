"""Rich ``Text`` renderings of the view models: highlighted tokens, text bars, coloured cells.

Colours carry their own foreground so they stay readable in the light and the dark theme.
"""

from __future__ import annotations

import math

import numpy as np
from rich.cells import cell_len
from rich.text import Text

# Heat ramp for activations, weakest to strongest: (background, foreground).
HEAT = (
    ("#fff3c4", "#000000"), ("#ffe08a", "#000000"), ("#ffc04d", "#000000"),
    ("#ff9633", "#000000"), ("#f0602a", "#ffffff"), ("#c62828", "#ffffff"),
)
# Diverging ramps for signed values (negative blue, positive red), weakest to strongest.
NEGATIVE = ("#dbe9f6", "#a9cce3", "#6fa8dc", "#3d85c6", "#1f5fa0", "#0b3d75")
POSITIVE = ("#fbe3d6", "#f4b6a0", "#ea8a6c", "#d9583f", "#b8322a", "#7f1416")


def token_label(token: str) -> str:
    """A token as shown inline: newlines and tabs made visible, never empty."""
    return token.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍") or "∅"


def heat_style(value: float, vmax: float) -> str:
    if not value > 0 or not vmax > 0:
        return ""
    step = min(len(HEAT) - 1, int(value / vmax * len(HEAT)))
    background, foreground = HEAT[step]
    return f"{foreground} on {background}"


def signed_style(value: float, vmax: float) -> str:
    if not math.isfinite(value) or vmax <= 0 or value == 0:
        return ""
    ramp = POSITIVE if value > 0 else NEGATIVE
    step = min(len(ramp) - 1, int(abs(value) / vmax * len(ramp)))
    return f"{'#ffffff' if step >= 3 else '#000000'} on {ramp[step]}"


def highlighted_tokens(
    tokens: list[str], values: np.ndarray | None, *, vmax: float | None = None, signed: bool = False,
    window: tuple[int, int] | None = None, peak: int | None = None,
) -> Text:
    """Tokens side by side, each with a background by its value (activation or projection).

    ``window`` (start, stop) shows only part of a long prompt, with ellipses; ``peak`` is
    underlined so the strongest token stands out in any colour scheme.
    """
    start, stop = window if window is not None else (0, len(tokens))
    if values is not None and vmax is None:
        finite = np.abs(values[np.isfinite(values)])
        vmax = float(finite.max()) if len(finite) else 0.0
    text = Text("… " if start > 0 else "")
    for position in range(start, stop):
        style = ""
        if values is not None:
            value = float(values[position])
            style = signed_style(value, vmax or 0.0) if signed else heat_style(value, vmax or 0.0)
        if position == peak:
            style = f"{style} bold underline".strip()
        text.append(token_label(tokens[position]), style=style)
    if stop < len(tokens):
        text.append(" …")
    return text


def fit_window(tokens: list[str], peak: int, width: int) -> tuple[int, int]:
    """The widest run of tokens around ``peak`` whose labels fit in ``width`` cells (with ellipses)."""
    if not tokens:
        return 0, 0
    start, stop, used = peak, peak + 1, cell_len(token_label(tokens[peak]))
    grew = True
    while grew:
        grew = False
        for side in (-1, 1):  # grow both ways in turn so the peak stays central
            index = start - 1 if side < 0 else stop
            if 0 <= index < len(tokens):
                cost = cell_len(token_label(tokens[index]))
                ellipses = (2 if index > 0 and side < 0 or start > 0 else 0) + (2 if stop < len(tokens) else 0)
                if used + cost + ellipses <= width:
                    used += cost
                    start, stop = (index, stop) if side < 0 else (start, index + 1)
                    grew = True
    return start, stop


def bar(fraction: float, width: int) -> str:
    """A horizontal bar with eighth-cell resolution."""
    if not math.isfinite(fraction) or fraction <= 0:
        return ""
    eighths = round(min(1.0, fraction) * width * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def histogram_text(counts: np.ndarray, edges: np.ndarray, *, width: int = 20, max_rows: int = 10) -> Text:
    """An activation histogram as text bars, merging bins so it fits in ``max_rows`` lines."""
    if len(counts) == 0 or counts.sum() == 0:
        return Text("(never active)", style="italic")
    merge = max(1, math.ceil(len(counts) / max_rows))
    merged = np.add.reduceat(counts, np.arange(0, len(counts), merge))
    lows = edges[:-1][::merge]
    top = merged.max()
    text = Text()
    for low, count in zip(lows, merged):
        text.append(f"{low:6.2f} ")
        text.append(bar(count / top, width).ljust(width), style="bold")
        text.append(f" {int(count)}\n")
    text.rstrip()
    return text


def frequency_bars(pairs: list[tuple[str, float]], *, width: int = 20) -> Text:
    """Fractions (e.g. prompt frequency per label) as labelled bars."""
    text = Text()
    label_width = max((len(label) for label, _ in pairs), default=0)
    for label, value in pairs:
        style = "red" if label == "harmful" else "green" if label == "harmless" else ""
        text.append(f"{label:<{label_width}} ")
        text.append(bar(value, width).ljust(width), style=style)
        text.append(f" {percent(value):>6}\n" if math.isfinite(value) else "    n/a\n")
    text.rstrip()
    return text


def percent(value: float) -> str:
    """A share as a percentage; a share too small to show at 0.1% but not zero says so."""
    return "<0.1%" if 0 < value < 0.0005 else f"{value:.1%}"


def number(value: float, spec: str = "+.3f", missing: str = "·") -> str:
    """A table cell for a float: ``missing`` for NaN (not analysed)."""
    return missing if not math.isfinite(value) else format(value, spec)


def signed_scale(vmax: float, what: str) -> Text:
    """The colour key of a diverging grid: each blue and red step with the value it starts at."""
    text = Text(f"{what}: ", style="dim")
    if not vmax > 0 or not math.isfinite(vmax):
        return text.append("all zero", style="italic")
    text.append(f"{-vmax:+.2f} ")
    for step in reversed(range(len(NEGATIVE))):
        text.append("  ", style=signed_style(-(step + 0.5) * vmax / len(NEGATIVE), vmax))
    text.append(" 0 ")
    for step in range(len(POSITIVE)):
        text.append("  ", style=signed_style((step + 0.5) * vmax / len(POSITIVE), vmax))
    return text.append(f" {vmax:+.2f}")


def heat_scale(vmax: float, what: str, spec: str = ".2f") -> Text:
    """The colour key of a one-sided grid (0 … vmax)."""
    text = Text(f"{what}: ", style="dim")
    text.append(f"{0:{spec}} ")
    for step in range(len(HEAT)):
        text.append("  ", style=heat_style((step + 0.5) * vmax / len(HEAT), vmax) if vmax > 0 else "")
    return text.append(f" {vmax:{spec}}")


def vertical_label(label: str, height: int) -> Text:
    """A column header written downwards (one character a line, bottom-aligned), so a grid
    of 3-cell columns can name its columns by latent id."""
    return Text("\n".join(label.rjust(height)), justify="center")


def histogram_by_label_text(edges: np.ndarray, counts: dict[str, np.ndarray], *, width: int = 14, max_rows: int = 8) -> Text:
    """Token counts per activation bin, one bar per label (red harmful, green harmless) on one
    scale, merging bins so it fits in ``max_rows`` lines."""
    if not counts or len(edges) < 2 or sum(int(c.sum()) for c in counts.values()) == 0:
        return Text("(never active)", style="italic")
    n_bins = len(edges) - 1
    merge = max(1, math.ceil(n_bins / max_rows))
    starts = np.arange(0, n_bins, merge)
    merged = {label: np.add.reduceat(c, starts) for label, c in counts.items()}
    top = max(int(m.max()) for m in merged.values()) or 1
    text = Text()
    for k, low in enumerate(edges[:-1][::merge]):
        text.append(f"{low:6.2f} ")
        for label, m in merged.items():
            style = "red" if label == "harmful" else "green" if label == "harmless" else "bold"
            text.append(bar(m[k] / top, width // len(merged)).ljust(width // len(merged)), style=style)
            text.append(f"{int(m[k]):>4}", style=style)
        text.append("\n")
    text.append("       " + "  ".join(f"{label}" for label in merged), style="dim")
    return text


def lens_values_text(top: list[tuple[str, float]], bottom: list[tuple[str, float]]) -> Text:
    """The logit lens: promoted and suppressed tokens, one a line, each with its logit per unit
    activation (shown only where the study stored it)."""
    text = Text("Logit lens (logit per unit)\n", style="bold")
    if not top and not bottom:
        return text.append("not stored in this study (cached without the logit lens)", style="italic")
    for (up, up_value), (down, down_value) in zip(top, bottom):
        cell = token_label(up).replace(" ", "␣")[:8]
        text.append(f"{cell:<8}", style="green")
        text.append(f"{number(up_value, '+.2f', ''):>6} ", style="green")
        text.append(f"{token_label(down).replace(' ', '␣')[:8]:<8}", style="red")
        text.append(f"{number(down_value, '+.2f', ''):>6}\n", style="red")
    text.rstrip()
    return text
