"""The live panel's strength sweep: the refusal score of a prompt as the edited latents' value
goes through a range (scale factor or clamp level), plotted against the unedited score; and
what "send to Live" fills in the panel from the Sets, Features and Prompts tabs.

Only the fast refusal score is computed (one forward per value, no generation), through the
same ``LiveModel`` and input checks as the panel's Generate button (``refusal_web.live``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import plotly.graph_objects as go

from refusal_web.context import WebContext
from refusal_web.live import LiveLimits, LiveModel, build_edits, check_request, describe_edits
from refusal_web.plots import AXIS, LAYOUT
from store import InputError, Study

SWEEP_MODES = ("scale", "clamp")


def parse_sweep(text: str, limits: LiveLimits) -> list[float]:
    """Values from "0, 5, 10" or a range "-10:10:5" (from:to:points); at most
    ``limits.max_sweep_points``, each within ±max_abs_value."""
    text = (text or "").strip()
    if not text:
        raise InputError("give the sweep's values, e.g. 0, 5, 10 or -10:10:5 (from:to:points)")
    number = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    ranged = re.fullmatch(rf"({number})\s*:\s*({number})\s*:\s*(\d+)", text)
    if ranged:
        low, high, points = float(ranged.group(1)), float(ranged.group(2)), int(ranged.group(3))
        if points < 2:
            raise InputError("a sweep range needs at least 2 points (from:to:points)")
        if points > limits.max_sweep_points:
            raise InputError(f"too many sweep points ({points}); at most {limits.max_sweep_points}")
        values = np.linspace(low, high, points).tolist()
    else:
        terms = [t for t in re.split(r"[\s,;]+", text) if t]
        bad = [t for t in terms if not re.fullmatch(number, t)]
        if bad:
            raise InputError(f"invalid sweep value {bad[0]!r}: use numbers (0, 5, 10) or a range from:to:points")
        values = sorted({float(t) for t in terms})
        if len(values) > limits.max_sweep_points:
            raise InputError(f"too many sweep points ({len(values)}); at most {limits.max_sweep_points}")
    outside = [v for v in values if not math.isfinite(v) or abs(v) > limits.max_abs_value]
    if outside:
        raise InputError(f"sweep value {outside[0]:g} is beyond ±{limits.max_abs_value:g}")
    return values


def sweep_figure(values: list[float], scores: list[float], baseline: float, threshold: float, mode: str, what: str) -> go.Figure:
    line = {"type": "scatter", "mode": "lines+markers", "x": values, "y": scores, "name": "edited",
            "line": {"color": "#2563eb"}, "hovertemplate": f"{mode} %{{x:g}}<br>score %{{y:.3f}}<extra></extra>"}
    span = [min(values), max(values)]
    base = {"type": "scatter", "mode": "lines", "x": span, "y": [baseline, baseline], "name": "unedited",
            "line": {"color": "#6b7280", "dash": "dot"}, "hoverinfo": "skip"}
    limit = {"type": "scatter", "mode": "lines", "x": span, "y": [threshold, threshold], "name": "refusal threshold",
             "line": {"color": "#dc2626", "dash": "dash"}, "hoverinfo": "skip"}
    return go.Figure({"data": [line, base, limit], "layout": {
        **LAYOUT, "title": {"text": f"Refusal score vs {mode} value · {what}"}, "legend": {"orientation": "h", "y": -0.25},
        "xaxis": {**AXIS, "title": {"text": "scale factor" if mode == "scale" else "clamp level"}},
        "yaxis": {**AXIS, "title": {"text": "refusal score (log-odds)"}}}})


def live_sweep(model: LiveModel, study: Study, limits: LiveLimits, run: str, prompt: str, layer: int | None,
               latents_text: str, mode: str, sweep_text: str, direction: bool) -> tuple[go.Figure | None, str]:
    """(plot, status) of the refusal score at each sweep value, every edited latent set to it
    (an ``id=value`` of the latents field is overridden by the sweep). Bad input: no plot, one line."""
    try:
        prompt, _ = check_request(prompt, None, limits)
        if mode not in SWEEP_MODES:
            raise InputError("the sweep varies a scale factor or a clamp level: choose scale or clamp")
        values = parse_sweep(sweep_text, limits)
        plain_ids = " ".join(term.split("=")[0] for term in re.split(r"[\s,;]+", latents_text or "") if term)
        if not plain_ids:
            raise InputError("enter the latent ids to sweep")
        edit_lists = [build_edits(study, layer=layer, latents_text=plain_ids, mode=mode, value=v, direction=direction,
                                  limits=limits, run=run) for v in values]
        baseline = model.refusal_score(prompt, edits=[])
        scores = [model.refusal_score(prompt, edits=edits) for edits in edit_lists]
    except InputError as error:
        return None, f"⚠️ {error}"
    what = describe_edits(edit_lists[0]).split(" clamped")[0].split(" scaled")[0]
    threshold = float(study.meta.refusal_threshold)
    crossing = [v for v, s in zip(values, scores) if (s > threshold) != (baseline > threshold)]
    status = (f"Unedited score **{baseline:+.3f}** (threshold {threshold:+.2f}). "
              + " · ".join(f"{v:g}: {s:+.3f}" for v, s in zip(values, scores))
              + (f". The decision flips at {mode} {', '.join(f'{v:g}' for v in crossing)}." if crossing
                 else ". No value in the sweep flips the decision."))
    return sweep_figure(values, scores, baseline, threshold, mode, what), status


# ----------------------------------------------------------------------------- what "send to Live" fills
# Plain functions of the study (tested without a server): the live panel's fields by name.


def latent_to_live(layer: object, latent: object) -> dict[str, Any] | None:
    """The Features tab's latent, to edit live (the prompt and the edit mode are kept)."""
    if latent is None or layer is None:
        return None
    return {"latents": str(int(latent)), "layer": int(layer)}


def set_to_live(ctx: WebContext, index: object) -> dict[str, Any] | None:
    """A minimal set: its prompt and latents, ablated. A search that did not flip has no set:
    only its prompt is sent."""
    greedy = ctx.greedy
    if greedy is None or index is None or not 0 <= int(index) < len(greedy.prompt):
        return None
    s = int(index)
    fill: dict[str, Any] = {"prompt": ctx.study.prompt(int(greedy.prompt[s])).text}
    if greedy.flips()[s]:
        fill |= {"latents": ", ".join(map(str, greedy.latents_of(s).tolist())), "layer": int(greedy.layer), "mode": "ablate"}
    return fill


def prompt_to_live(ctx: WebContext, index: object) -> dict[str, Any] | None:
    """A study prompt; with its flipping minimal set, ablated, when it has one."""
    from explorer.browse_why import why_view

    if index is None or not 0 <= int(index) < ctx.study.n_prompts:
        return None
    prompt = int(index)
    fill: dict[str, Any] = {"prompt": ctx.study.prompt(prompt).text}
    if ctx.layer is not None:
        why = why_view(ctx.details, prompt, ctx.layer)
        if why.set_latents:
            fill |= {"latents": ", ".join(map(str, why.set_latents)), "layer": int(why.layer), "mode": "ablate"}
    return fill
