"""The Features tab's latent dashboard: the top examples of each label side by side, examples
from every activation quantile, the histogram split by label, the logit lens with its values,
and the text search over the prompts where the latent fires.

The numbers come from ``explorer.latent_dashboard`` (shared with the TUI); this module only
renders them. Study text is escaped (``refusal_web.render``).
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from explorer.latent_dashboard import LatentDashboard, dashboard, search
from refusal_web.context import WebContext, whole_number
from refusal_web.plots import LAYOUT, AXIS
from refusal_web.render import example_block, show_token
from store import InputError

LABEL_COLOURS = {"harmful": "#dc2626", "harmless": "#16a34a"}


def dashboard_html(board: LatentDashboard, vmax: float) -> str:
    """Label columns (harmful | harmless | …), then a few examples from each quantile bucket."""
    if board.n_prompts == 0:
        return f'<p class="re-empty">Latent {board.latent} never fires in this study.</p>'
    columns = []
    for label, examples in board.top_by_label.items():
        blocks = "".join(example_block(e, vmax, f"#{rank} · ") for rank, e in enumerate(examples, 1))
        columns.append(f'<div class="re-col" data-label="{html.escape(label)}"><h4>Top {html.escape(label)}</h4>'
                       + (blocks or f'<p class="re-empty">Never fires on a {html.escape(label)} prompt.</p>') + "</div>")
    buckets = []
    for q, bucket in enumerate(board.buckets, 1):
        blocks = "".join(example_block(e, vmax, "") for e in bucket.examples)
        buckets.append(
            f'<div class="re-bucket" data-bucket="{q}"><h4>Quantile {q} of {len(board.buckets)}: prompts ranked '
            f"{bucket.first + 1}–{bucket.stop} of {board.n_prompts} by peak ({bucket.high:.3f} → {bucket.low:.3f})</h4>"
            f"{blocks}</div>")
    return (f'<div class="re-dashboard" data-latent="{board.latent}"><div class="re-cols">{"".join(columns)}</div>'
            f'<h3>Across activation quantiles</h3>{"".join(buckets)}</div>')


def histogram_by_label(board: LatentDashboard) -> go.Figure | None:
    """Stacked bars of the token activations, one colour per label, on shared bins."""
    if board.n_prompts == 0 or len(board.edges) < 2:
        return None
    edges = board.edges
    centres, widths = ((edges[:-1] + edges[1:]) / 2).tolist(), np.diff(edges).tolist()
    bars = [{"type": "bar", "x": centres, "y": counts.tolist(), "width": widths, "name": label,
             "marker": {"color": LABEL_COLOURS.get(label, "#6b7280")},
             "hovertemplate": f"{label}<br>activation %{{x:.3f}}<br>%{{y}} tokens<extra></extra>"}
            for label, counts in board.counts_by_label.items()]
    return go.Figure({"data": bars, "layout": {
        **LAYOUT, "barmode": "stack", "bargap": 0.02, "legend": {"orientation": "h", "y": 1.12},
        "title": {"text": f"Latent {board.latent}: non-zero activations by label"},
        "xaxis": {**AXIS, "title": {"text": "activation"}}, "yaxis": {**AXIS, "title": {"text": "tokens"}}}})


def _value(number: float) -> str:
    return "–" if math.isnan(number) else f"{number:+.3f}"


def lens_markdown(board: LatentDashboard) -> str:
    """The logit lens as a table: promoted and suppressed tokens with their logit per unit activation."""
    if not board.lens_top and not board.lens_bottom:
        return "**Logit lens**: not stored in this study (cached without it)."
    rows = ["| promoted | logit | suppressed | logit |", "|---|---:|---|---:|"]
    for (up, up_value), (down, down_value) in zip(board.lens_top, board.lens_bottom):
        cells = [f"`{show_token(t).replace('`', 'ʼ').replace('|', '¦')}`" for t in (up, down)]
        rows.append(f"| {cells[0]} | {_value(up_value)} | {cells[1]} | {_value(down_value)} |")
    note = ""
    if all(math.isnan(v) for _, v in board.lens_top):
        note = "\n\n*Values not stored: this study was cached before the lens values were kept.*"
    return "**Logit lens** (decoder row × unembedding: logit added per unit of activation)\n\n" + "\n".join(rows) + note


def latent_dashboard(ctx: WebContext, layer: int, latent: int) -> LatentDashboard:
    return dashboard(ctx.details, layer, latent)


def search_prompts(ctx: WebContext, layer: object, latent: object, query: str) -> str:
    """The prompts where the latent fires whose text contains the query, strongest first."""
    try:
        chosen = ctx.pick_layer(layer)
        index = whole_number(latent, "latent")
        ctx.details.codes(chosen).latent_entries(index)  # range check, one line if out of range
    except InputError as error:  # a bad id is a message, not a traceback
        return f'<p class="re-empty">⚠️ {html.escape(str(error))}</p>'
    found, total = search(ctx.details, chosen, index, query or "")
    what = f"containing “{html.escape(query.strip())}”" if (query or "").strip() else "in all"
    if not found:
        return f'<p class="re-empty">No prompt where latent {index} fires {what}.</p>'
    vmax = max(e.peak_value for e in found)
    blocks = "".join(example_block(e, vmax, f"#{rank} · ") for rank, e in enumerate(found, 1))
    return (f'<div class="re-search" data-total="{total}"><p>{total} prompts where latent {index} fires {what}'
            f'{f"; the strongest {len(found)} shown" if total > len(found) else ""}.</p>{blocks}</div>')
