"""Callbacks of the browsing tabs: plain functions from input values to output values.

Each takes the shared ``WebContext`` first (bound with ``functools.partial`` in ``build_app``)
and returns Markdown strings, HTML, DataFrames and Plotly figures; none touches a Gradio object,
so they are tested without a server. Bad input (a latent out of range, an unknown prompt)
becomes a message in the view, never an exception in the browser.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer.browse import FEATURE_COLUMNS
from explorer.filters import FEATURES, check_sort
from explorer.headlines import headlines
from refusal_web import plots
from refusal_web.context import WebContext, page_of, whole_number
from refusal_web.dashboard import dashboard_html, histogram_by_label, latent_dashboard, lens_markdown
from refusal_web.render import markdown_table
from store import InputError

FLOAT_DIGITS = 4


def rounded(values: np.ndarray) -> np.ndarray:
    """Floats rounded for display, as float64 (a rounded float32 still prints 17 digits)."""
    return np.round(np.asarray(values, dtype=np.float64), FLOAT_DIGITS)


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame with floats rounded for display."""
    return pd.DataFrame({name: rounded(v) if v.dtype.kind == "f" else v for name, v in columns.items()})


# ----------------------------------------------------------------------------- overview


def overview(ctx: WebContext) -> tuple[str, go.Figure | None]:
    """Model, SAEs, prompt counts and refusal rates, and which analyses are present."""
    summary = ctx.study.summary()
    rows = [
        ("Study", f"`{summary['path']}`"), ("Model", f"{summary['model']} ({summary['model_revision'] or 'no revision'})"),
        ("Layers", ", ".join(map(str, summary["layers"]))),
        ("SAEs", "; ".join(f"layer {layer}: {info.get('release', '?')} / {info.get('sae_id', '?')} "
                           f"({info.get('d_sae', '?')} latents)" for layer, info in summary["saes"].items()) or "none"),
        ("Prompts", ", ".join(f"{n:,} {label}" for label, n in summary["prompts"].items())),
        ("Tokens", f"{summary['tokens']:,}"),
        ("Refusal rate (fast score)", ", ".join(f"{label} {rate:.1%}" for label, rate in summary["refusal_rate"].items())),
        ("Refused (generation)", ", ".join(f"{label} {rate:.1%}" for label, rate in summary["refused_by_generation"].items()) or "not generated"),
        ("Complete", "yes" if summary["complete"] else "no (still caching, or interrupted)"),
        ("Created", summary["created_at"] or "?"),
    ]
    stages = ["| Analysis | Status |", "|---|---|"]
    for stage, command in ctx.missing.items():
        stages.append(f"| {stage} | " + ("present" if command is None else f"missing — {ctx.next_step(stage)}") + " |")
    text = "## Study\n" + markdown_table(rows) + f"\n\n## Analyses (run `{ctx.run}`)\n" + "\n".join(stages)
    later = headlines(ctx.study, ctx.run)
    if later:
        text += "\n\n" + "\n".join(f"- **{name}**: {line}" for name, line in later)
    figure = None
    if ctx.direction is not None:
        d = ctx.direction
        text += (f"\n\n**Refusal direction**: layer {d.layer}, position {d.position}; mean refusal score "
                 f"{d.baseline_score:+.3f} → {d.ablated_score:+.3f} when ablated.")
        for name, what in (("flip_rate", "harmful prompts flipped to compliance"),
                           ("argmax_change_rate", "harmless prompts whose first token changes")):
            value = float(getattr(d, name, math.nan))  # fields of newer studies
            if not math.isnan(value):
                text += f" {what.capitalize()}: {value:.1%}."
        if len(d.random_argmax_change):
            text += (f" Random directions ablated as a control change {d.random_argmax_change.min():.1%}–"
                     f"{d.random_argmax_change.max():.1%} of them.")
        figure = plots.direction_grid(d.candidate_layer, d.candidate_position, d.refusal_drop, (d.layer, d.position))
    return text, figure


# ----------------------------------------------------------------------------- feature explorer


def _feature_rows(ctx: WebContext, layer: int, query: str, sort: str, descending: bool) -> np.ndarray:
    table = ctx.table(layer)
    check_sort(FEATURES, sort)
    rows = table.filter(query or "")
    return table.order(sort, descending=bool(descending), rows=rows)


def feature_page(ctx: WebContext, layer: object, query: str, sort: str, descending: bool, page: object) -> tuple[pd.DataFrame, str, int]:
    """One page of the feature table after filtering and sorting, a status line, the page shown."""
    try:
        chosen = ctx.pick_layer(layer)
        rows = _feature_rows(ctx, chosen, query, sort, descending)
        number = whole_number(page or 1, "page")
    except InputError as error:
        return pd.DataFrame({"latent": []}), f"⚠️ {error}", 1
    shown, number, pages = page_of(rows, number, ctx.page_size)
    table = ctx.table(chosen)
    frame = _frame({name: table.columns[name][shown] for name in FEATURE_COLUMNS})
    status = f"{len(rows):,} of {len(table):,} latents match · page {number} of {pages} · sorted by {sort}"
    if not len(rows):
        status = (f"No latent matches `{query}`: every term must hold. The columns and words are listed under "
                  "“Columns and filter syntax”.")
    return frame, status, number


def feature_search(ctx: WebContext, layer: object, query: str, sort: str, descending: bool) -> tuple[pd.DataFrame, str, int]:
    """A new filter or sort order: its first page."""
    return feature_page(ctx, layer, query, sort, descending, 1)


def feature_csv(ctx: WebContext, layer: object, query: str, sort: str, descending: bool) -> str | None:
    """Every row matching the filter (not only the page shown), as a CSV file path."""
    chosen = ctx.pick_layer(layer)
    rows = _feature_rows(ctx, chosen, query, sort, descending)
    table = ctx.table(chosen)
    return write_csv(ctx, f"features-layer{chosen}", pd.DataFrame({name: table.columns[name][rows] for name in FEATURE_COLUMNS}))


def feature_view(ctx: WebContext, layer: object, latent: object) -> tuple[str, str, go.Figure | None, str, pd.DataFrame]:
    """Detail of one latent: (summary Markdown, the dashboard's examples HTML (top per label,
    then per activation quantile), histogram by label, logit lens with values and membership
    Markdown, FM partners)."""
    empty = pd.DataFrame({"partner": [], "interaction": []})
    try:
        chosen = ctx.pick_layer(layer)
        index = whole_number(latent, "latent")
        detail = ctx.details.feature_detail(chosen, index)
    except InputError as error:
        return f"⚠️ {error}", "", None, "", empty
    stats = detail.stats
    table = ctx.table(chosen)
    rows = [(name.replace("_", " "), f"{value:.4g}") for name, value in stats.items()]
    for name in ("cosine", "attribution", "fm_weight", "fm_interaction"):
        value = float(table.columns[name][index])
        if not math.isnan(value):
            rows.append((name.replace("_", " "), f"{value:+.4f}"))
    head = f"### Latent {index} · layer {chosen}\n" + markdown_table(rows, ("Statistic", "Value"))
    if detail.dormant:
        head += ("\n\n**Dormant backup**: baseline {baseline:.3f} → {ablated:.3f} when the minimal set is ablated; "
                 "refusal effect {refusal_effect:+.3f}.").format(**detail.dormant)
    board = latent_dashboard(ctx, chosen, index)
    figure = histogram_by_label(board)
    lens = lens_markdown(board)
    if ctx.greedy is None:
        lens += "\n\n" + ctx.missing_note("greedy", "minimal sets")
    elif detail.minimal_sets:
        sets = ", ".join(f"#{s} (prompt {int(ctx.greedy.prompt[s])})" for s in detail.minimal_sets)
        lens += f"\n\n**In minimal sets**: {sets}"
    else:
        lens += "\n\n*In no minimal set.*"
    if ctx.fm is None:
        lens += "\n\n" + ctx.missing_note("fm", "FM fit (interaction partners)")
    partners = pd.DataFrame({"partner": [p for p, _ in detail.fm_partners],
                             "interaction": [round(v, FLOAT_DIGITS) for _, v in detail.fm_partners]})
    return head, dashboard_html(board, float(stats["max_active"])), figure, lens, partners


# ----------------------------------------------------------------------------- tables to CSV


def write_csv(ctx: WebContext, name: str, frame: pd.DataFrame | None) -> str | None:
    """Write a table to a fresh file under the export dir; its path, for a download widget."""
    if frame is None or not len(frame):
        return None
    folder = Path(tempfile.mkdtemp(dir=ctx.export_dir))
    path = folder / f"{ctx.study.path.stem}-{name}.csv"
    frame.to_csv(path, index=False)
    return str(path)

