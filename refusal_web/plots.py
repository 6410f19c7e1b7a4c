"""Plotly figures for the web views.

Plotly (already installed with sae-lens) renders in the browser with a toolbar whose camera
button saves the plot as PNG, so plots are downloadable without a server-side image engine.
Plotly validates every property, so a figure costs a few ms to build (about a second for the
very first, while its validators load: ``warm_up`` pays that at start-up, not on a click).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

# A named template ("plotly_white") is deep-copied into every figure (~15 ms); plain colours are not.
LAYOUT = {
    "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 320, "plot_bgcolor": "white",
    "font": {"family": "system-ui, sans-serif", "size": 12},
}
AXIS = {"gridcolor": "#e5e7eb", "zerolinecolor": "#9ca3af"}


def _figure(data: list[dict], title: str, x_title: str, y_title: str, *, xaxis: dict | None = None,
            yaxis: dict | None = None, **layout: object) -> go.Figure:
    return go.Figure({
        "data": data,
        "layout": {**LAYOUT, "title": {"text": title}, "xaxis": {**AXIS, "title": {"text": x_title}, **(xaxis or {})},
                   "yaxis": {**AXIS, "title": {"text": y_title}, **(yaxis or {})}, **layout},
    })


def warm_up() -> None:
    """Build and serialise one figure so the first user request does not pay Plotly's imports."""
    histogram(np.ones(2), np.arange(3.0), 0).to_json()
    heatmap(np.zeros((2, 2)), ["0", "1"], "").to_json()


def histogram(counts: np.ndarray, edges: np.ndarray, latent: int) -> go.Figure:
    """Bars of a precomputed histogram (counts per bin) of a latent's non-zero activations."""
    centres = (edges[:-1] + edges[1:]) / 2 if len(edges) > 1 else np.zeros(0)
    widths = np.diff(edges) if len(edges) > 1 else np.zeros(0)
    bars = {"type": "bar", "x": centres.tolist(), "y": np.asarray(counts).tolist(), "width": widths.tolist(),
            "marker": {"color": "#f97316"}, "hovertemplate": "activation %{x:.3f}<br>%{y} tokens<extra></extra>"}
    return _figure([bars], f"Latent {latent}: non-zero activations", "activation", "tokens", bargap=0.02)


def score_vs_size(sizes: np.ndarray, scores: np.ndarray, removed: np.ndarray, threshold: float, title: str) -> go.Figure:
    """Refusal score against the number of ablated latents along a greedy trajectory."""
    text = ["start" if r < 0 else f"removed {int(r)}" for r in removed.tolist()]
    line = {"type": "scatter", "mode": "lines+markers", "x": np.asarray(sizes).tolist(), "y": np.asarray(scores).tolist(),
            "text": text, "name": "refusal score", "line": {"color": "#2563eb"},
            "hovertemplate": "%{x} latents ablated<br>score %{y:.3f}<br>%{text}<extra></extra>"}
    x = np.asarray(sizes)
    span = [float(x.min()), float(x.max())] if len(x) else [0.0, 1.0]
    limit = {"type": "scatter", "mode": "lines", "x": span, "y": [threshold, threshold], "name": "flip threshold",
             "line": {"color": "#dc2626", "dash": "dash"}, "hoverinfo": "skip"}
    return _figure([line, limit], title, "latents ablated", "refusal score")


def heatmap(matrix: np.ndarray, labels: list[str], title: str) -> go.Figure:
    """A symmetric interaction matrix, diverging colours centred on zero, with its colour bar;
    ``labels`` are the latent ids of the rows (= columns)."""
    bound = float(np.abs(matrix).max()) if matrix.size else 1.0
    cells = {"type": "heatmap", "z": np.asarray(matrix).tolist(), "x": labels, "y": labels, "colorscale": "RdBu",
             "reversescale": True, "zmin": -bound, "zmax": bound, "zmid": 0.0, "colorbar": {"title": {"text": "⟨v_i, v_j⟩"}},
             "hovertemplate": "latents %{y} × %{x}<br>⟨v_i, v_j⟩ = %{z:.4f}<extra></extra>"}
    side = min(900, 160 + 14 * len(labels))
    return _figure([cells], title, "latent", "latent", height=side,
                   xaxis={"type": "category", "tickangle": -60}, yaxis={"type": "category", "autorange": "reversed"})


def direction_grid(layers: np.ndarray, positions: np.ndarray, drop: np.ndarray, chosen: tuple[int, int]) -> go.Figure:
    """Refusal-score drop when ablating each (layer, position) candidate direction."""
    xs, ys = sorted(set(positions.tolist())), sorted(set(layers.tolist()))
    z = np.full((len(ys), len(xs)), np.nan)
    for layer, position, value in zip(layers.tolist(), positions.tolist(), drop.tolist()):
        z[ys.index(layer), xs.index(position)] = value
    cells = {"type": "heatmap", "z": np.where(np.isnan(z), None, z).tolist(), "x": [str(x) for x in xs],
             "y": [str(y) for y in ys], "colorscale": "Viridis", "colorbar": {"title": {"text": "score drop"}},
             "hovertemplate": "layer %{y}, position %{x}<br>score drop %{z:.3f}<extra></extra>"}
    return _figure([cells], f"Direction candidates (chosen: layer {chosen[0]}, position {chosen[1]})",
                   "position from end", "layer", xaxis={"type": "category"}, yaxis={"type": "category"})
