"""Web tabs of the second paper's analyses (Yeo et al. 2025): latent graph, harm categories,
jailbreak wrappers, sparse probes.

The ``*_view`` functions are plain callbacks (values in, Markdown / DataFrames / Plotly figures
out) tested without a server; ``paper2_tabs`` wires them into ``build_app``'s tab set.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer.results_paper2 import CategoryResult, GraphResult, JailbreakResult, ProbeResult
from explorer.stats import wilson
from refusal_web.context import WebContext


def _rounded(values: Any) -> np.ndarray:
    return np.round(np.asarray(values, np.float64), 4)


def _missing(ctx: WebContext, stage: str, what: str) -> str:
    run = "" if ctx.run == "default" else f" --run {ctx.run}"
    return f"*No {what} in run `{ctx.run}` yet: run `refusal-explorer analyze {stage} {ctx.study.path}{run}` to produce it.*"


def _fmt(value: float, fmt: str) -> str:
    return "n/a" if value is None or math.isnan(float(value)) else format(float(value), fmt)


# ----------------------------------------------------------------------------- graph


def graph_figure(result: GraphResult) -> go.Figure:
    """Three columns: upstream latents, downstream latents, the refusal score; kept edges as
    lines (green: excites, red: inhibits; width ∝ |weight|), latent→score links in grey."""
    up_y = np.linspace(0, 1, len(result.upstream)) if len(result.upstream) > 1 else np.array([0.5])
    down_y = np.linspace(0, 1, len(result.downstream)) if len(result.downstream) > 1 else np.array([0.5])
    biggest = float(np.abs(result.weight[result.kept]).max()) if result.kept.any() else 1.0
    data: list[dict] = []
    for i, j in zip(*np.nonzero(result.kept)):
        w = float(result.weight[i, j])
        data.append({"type": "scatter", "mode": "lines", "x": [0, 1], "y": [float(up_y[i]), float(down_y[j])],
                     "line": {"color": "#16a34a" if w > 0 else "#dc2626", "width": 1 + 5 * abs(w) / biggest},
                     "hoverinfo": "text", "showlegend": False,
                     "text": f"L{result.upstream_layer}#{int(result.upstream[i])} → L{result.downstream_layer}#{int(result.downstream[j])}: "
                             f"weight {w:+.3f} (est. {float(result.estimate[i, j]):+.3f})"})
    for j, y in enumerate(down_y):
        data.append({"type": "scatter", "mode": "lines", "x": [1, 2], "y": [float(y), 0.5], "showlegend": False,
                     "line": {"color": "#9ca3af", "width": 1}, "hoverinfo": "skip"})
    nodes = {
        "type": "scatter", "mode": "markers+text", "textposition": "top center", "showlegend": False,
        "x": [0] * len(up_y) + [1] * len(down_y) + [2], "y": [*up_y.tolist(), *down_y.tolist(), 0.5],
        "text": [f"#{int(u)}" for u in result.upstream] + [f"#{int(d)}" for d in result.downstream] + ["refusal score"],
        "customdata": [[result.upstream_layer, int(u)] for u in result.upstream]
                      + [[result.downstream_layer, int(d)] for d in result.downstream] + [[-1, -1]],
        "hovertext": [f"L{result.upstream_layer}#{int(u)}: score drop {float(s):+.3f} when ablated" for u, s in zip(result.upstream, result.upstream_score)]
                     + [f"L{result.downstream_layer}#{int(d)}: score drop {float(s):+.3f} when ablated" for d, s in zip(result.downstream, result.downstream_score)]
                     + [f"mean {result.baseline_score:+.2f}"],
        "hoverinfo": "text", "marker": {"size": 14, "color": ["#2563eb"] * len(up_y) + ["#f97316"] * len(down_y) + ["#111827"]},
    }
    data.append(nodes)
    axis = {"showgrid": False, "zeroline": False}
    return go.Figure({"data": data, "layout": {
        "height": 420, "margin": {"l": 20, "r": 20, "t": 40, "b": 40}, "plot_bgcolor": "white",
        "title": {"text": f"Layer {result.upstream_layer} → layer {result.downstream_layer} → refusal score ({result.n_edges} edges)"},
        "xaxis": {**axis, "tickvals": [0, 1, 2], "ticktext": [f"layer {result.upstream_layer}", f"layer {result.downstream_layer}", "score"]},
        "yaxis": {**axis, "showticklabels": False},
    }})


def graph_view(ctx: WebContext) -> tuple[str, go.Figure | None, pd.DataFrame]:
    result = GraphResult.load(ctx.study, ctx.run)
    if result is None:
        return _missing(ctx, "graph", "latent graph"), None, pd.DataFrame({"upstream": []})
    edges = result.edges()
    frame = pd.DataFrame({
        "upstream": [e[0] for e in edges], "downstream": [e[1] for e in edges], "weight": _rounded([e[2] for e in edges]),
        "estimate": _rounded([e[3] for e in edges]), "kind": ["excites" if e[2] > 0 else "inhibits" for e in edges],
    })
    verdict = "" if result.n_edges else " **No evidence of upstream→downstream edges above the control floor.**"
    text = (f"**{result.n_edges} edges** of {result.weight.size} pairs between {len(result.upstream)} latents of layer "
            f"{result.upstream_layer} and {len(result.downstream)} of layer {result.downstream_layer}, on {len(result.prompts)} refused "
            f"harmful prompts. Weight = downstream activation lost when the upstream latent is ablated (measured); estimate = "
            f"gradient × activation. Kept: |weight| ≥ {result.threshold:.3f} and above the control floor "
            f"{_fmt(result.control_floor, '.3f')} (random active upstream latents). Agreement: Spearman {_fmt(result.spearman, '+.2f')}, "
            f"signs agree on {_fmt(result.sign_agreement, '.0%')} of kept edges; latent→score Spearman {_fmt(result.score_spearman, '+.2f')}."
            + verdict)
    return text, graph_figure(result), frame


# ----------------------------------------------------------------------------- categories


def categories_view(ctx: WebContext) -> tuple[str, go.Figure | None, pd.DataFrame]:
    result = CategoryResult.load(ctx.study, ctx.run)
    if result is None:
        return _missing(ctx, "categories", "category analysis"), None, pd.DataFrame({"category": []})
    names = [str(n) for n in result.categories.tolist()]
    frame = pd.DataFrame({
        "category": names, "prompts": result.category_size, "refused": result.transfer_refused,
        "top_attribution": [" ".join(map(str, result.top_of(c).tolist())) for c in range(len(names))],
        "specific": [" ".join(map(str, result.specific_of(c).tolist())) for c in range(len(names))],
        "top_activation_diff": [" ".join(map(str, result.top_of(c, "activation").tolist())) for c in range(len(names))],
    })
    rates = result.transfer_rates()
    hover = [[f"{a} latents ablated → {names[b]}: {int(result.transfer_flips[r, b])}/{int(result.transfer_refused[b])} flip "
              f"(95% CI {_fmt(result.transfer_interval(r, b)[0], '.0%')}–{_fmt(result.transfer_interval(r, b)[1], '.0%')})"
              for b in range(len(names))] for r, a in enumerate([*names, "random"])]
    figure = go.Figure({"data": [{"type": "heatmap", "z": np.where(np.isnan(rates), None, rates).tolist(), "x": names,
                                  "y": [*names, "random control"], "zmin": 0, "zmax": 1, "colorscale": "Blues",
                                  "colorbar": {"title": {"text": "flip rate"}, "tickformat": ".0%"},
                                  "text": hover, "hoverinfo": "text"}],
                        "layout": {"height": 380, "title": {"text": "Transfer: flip rate of the column's refused prompts"},
                                   "xaxis": {"title": {"text": "prompts of category"}},
                                   "yaxis": {"title": {"text": "latents ablated"}, "autorange": "reversed"}}})
    chance = result.control_specific
    n_specific = len(result.specific_latents)
    beyond = len(chance) and n_specific > np.percentile(chance, 95)
    text = (f"Layer {result.layer}, {len(names)} categories from `{result.source}`. **Shared by every category** (top "
            f"{result.top_k} by attribution): {', '.join(map(str, result.shared_attribution.tolist())) or 'none'}. "
            f"**Specific**: {n_specific} latents (value elsewhere ≤ {result.specific_ratio:g} × in its category); label-shuffled "
            f"chance {_fmt(chance.mean() if len(chance) else math.nan, '.1f')}."
            + ("" if beyond else " **No evidence of category-specific latents beyond chance.**"))
    return text, figure, frame


# ----------------------------------------------------------------------------- jailbreak


def jailbreak_view(ctx: WebContext) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    result = JailbreakResult.load(ctx.study, ctx.run)
    if result is None:
        return _missing(ctx, "jailbreak", "jailbreak analysis"), pd.DataFrame({"wrapper": []}), pd.DataFrame({"token": []})
    rows = []
    for w, (name, refused, n) in enumerate(result.rates()):
        mask = result.pair_wrapper == w
        plain = result.pair_plain[mask]
        low, high = wilson(refused, n)
        change = (result.wrapped_latents[mask] - result.plain_latents[plain]).mean(0)
        rows.append({"wrapper": name, "kind": str(result.wrapper_kind[w]), "refused": f"{refused}/{n}",
                     "rate": round(refused / n, 3) if n else None, "ci_low": round(low, 3), "ci_high": round(high, 3),
                     "score_change": round(float((result.wrapped_score[mask] - result.plain_score[plain]).mean()), 3),
                     "latent_change": round(float(change.sum()), 3), "most_damped": int(result.latents[int(np.argmin(change))])})
    verified = {t: v for v, t in enumerate(result.verified_token.tolist())}
    tokens = pd.DataFrame({
        "token": result.token, "attribution": _rounded(result.token_attribution), "prompts": result.token_count,
        "occlusion_latent_change": [_rounded(result.verified_latent_change[verified[t]].sum()) if t in verified else None for t in result.token.tolist()],
        "occlusion_score_change": [_rounded(result.verified_score_change[verified[t]]) if t in verified else None for t in result.token.tolist()],
    })
    plain = int((result.plain_score > result.threshold).sum())
    damping = [t for t, a in zip(result.token.tolist(), result.token_attribution) if a < 0]
    text = (f"Layer {result.layer}; refusal latents {', '.join(map(str, result.latents.tolist()))}. Plain prompts refused "
            f"{plain}/{len(result.plain_score)} (fast score > {result.threshold:g}). Tokens: summed input × gradient on the refusal "
            "latents (negative = damps); the top ones are checked by zeroing them (positive occlusion change = confirmed). "
            + (f"Top damping tokens: {', '.join(repr(t) for t in damping[:5])}." if damping else "**No evidence of damping tokens.**"))
    return text, pd.DataFrame(rows), tokens


# ----------------------------------------------------------------------------- probe


def probe_view(ctx: WebContext) -> tuple[str, pd.DataFrame]:
    result = ProbeResult.load(ctx.study, ctx.run)
    if result is None:
        return _missing(ctx, "probe", "probe analysis"), pd.DataFrame({"probe": []})
    rows = []
    for j, probe in enumerate(result.probes.tolist()):
        for t, name in enumerate(result.sets.tolist()):
            rows.append({"probe": probe, "test_set": name, "n": int(result.set_size[t]),
                         "accuracy": round(float(result.accuracy[j, t]), 3),
                         "accuracy_ci": f"{_fmt(result.accuracy_interval[j, t, 0], '.2f')}–{_fmt(result.accuracy_interval[j, t, 1], '.2f')}",
                         "auroc": round(float(result.auroc[j, t]), 3),
                         "auroc_ci": f"{_fmt(result.auroc_interval[j, t, 0], '.2f')}–{_fmt(result.auroc_interval[j, t, 1], '.2f')}"})
    text = (f"Layer {result.layer}: logistic probes trained on {result.n_train} plain prompts, on the refusal latents "
            f"{', '.join(map(str, result.latents.tolist()))}, on {result.random_latents.shape[1]} random active latents "
            f"({result.random_latents.shape[0]} seeds, mean) and on the dense residual. 95% bootstrap intervals over test prompts. "
            "Yeo et al. report, on wrapped prompts, 0.87 (refusal latents) vs 0.50 (random) vs 0.51 (dense) accuracy.")
    return text, pd.DataFrame(rows)


def open_latent(ctx: WebContext, layer: object, latent: object) -> str:
    """The latent's summary card, as the Features tab shows it (errors as a message)."""
    from refusal_web import views

    return views.feature_view(ctx, layer, latent)[0]


# ----------------------------------------------------------------------------- tabs


def paper2_tabs(ctx: WebContext) -> None:
    """Add the Graph, Categories, Jailbreak and Probe tabs (call inside ``gr.Tabs()``)."""
    with gr.Tab("Graph", id="graph"):
        text, figure, frame = graph_view(ctx)
        gr.Markdown(text, elem_id="graph-summary")
        if figure is not None:
            gr.Plot(figure, label="Layered graph (hover for weights; camera icon: PNG)")
            edges = gr.Dataframe(frame, interactive=False, label="Kept edges (click a row to open its downstream latent)", max_height=300)
            with gr.Row():
                layer = gr.Number(label="Layer", precision=0)
                latent = gr.Number(label="Latent", precision=0)
                show = gr.Button("Open latent")
            card = gr.Markdown(elem_id="graph-latent")
            result = GraphResult.load(ctx.study, ctx.run)

            def pick(event: gr.SelectData) -> tuple[int, int]:
                row = event.index[0] if isinstance(event.index, (list, tuple)) else int(event.index)
                column = event.index[1] if isinstance(event.index, (list, tuple)) else 1
                value = frame.iloc[row]
                if column == 0:
                    return result.upstream_layer, int(value["upstream"])
                return result.downstream_layer, int(value["downstream"])

            show.click(partial(open_latent, ctx), [layer, latent], card, api_name="graph_latent")
            edges.select(pick, None, [layer, latent]).then(partial(open_latent, ctx), [layer, latent], card)
    with gr.Tab("Categories", id="categories"):
        text, figure, frame = categories_view(ctx)
        gr.Markdown(text, elem_id="categories-summary")
        if figure is not None:
            gr.Dataframe(frame, interactive=False, label="Refusal latents per category", max_height=320)
            gr.Plot(figure, label="Transfer matrix (camera icon: PNG)")
    with gr.Tab("Jailbreak", id="jailbreak"):
        text, wrappers, tokens = jailbreak_view(ctx)
        gr.Markdown(text, elem_id="jailbreak-summary")
        if len(wrappers):
            gr.Dataframe(wrappers, interactive=False, label="Per wrapper", max_height=360)
            gr.Dataframe(tokens, interactive=False, label="Damping tokens", max_height=360)
    with gr.Tab("Probe", id="probe"):
        text, table = probe_view(ctx)
        gr.Markdown(text, elem_id="probe-summary")
        if len(table):
            gr.Dataframe(table, interactive=False, label="Probe accuracy and AUROC", max_height=400)
