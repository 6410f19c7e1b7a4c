"""Callbacks of the analysis tabs: minimal sets, FM interactions, dormant latents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from refusal_web import plots
from refusal_web.context import WebContext, whole_number
from refusal_web.views import FLOAT_DIGITS, rounded
from store import InputError

HEATMAP_MAX = 60
"""Most latents drawn in the FM heatmap (the strongest by |w| + interaction norm)."""


def _ids(latents: np.ndarray) -> str:
    return " ".join(map(str, latents.tolist()))


def minimal_sets(ctx: WebContext) -> tuple[str, pd.DataFrame]:
    """Summary Markdown and one row per search: its flipping set, or "no flipping set within top K"."""
    greedy = ctx.greedy
    if greedy is None:
        return ctx.missing_note("greedy", "minimal sets"), pd.DataFrame({"set": []})
    flips, single = greedy.flips(), greedy.per_prompt()
    sizes = np.diff(greedy.set_offsets)
    outcome = {1: "complies", 0: "still refuses", -1: "not checked"}
    searched_on = [str(int(p)) for p in greedy.prompt]
    if not single.all():
        searched_on[-1] = f"joint: {len(greedy.joint_prompts)} prompts"
    nothing = f"no flipping set within top {greedy.k}"
    frame = pd.DataFrame({
        "set": pd.array([s if flips[s] else pd.NA for s in range(len(flips))], dtype="Int64"), "prompt": greedy.prompt,
        "searched_on": searched_on, "size": pd.array([int(sizes[s]) if flips[s] else pd.NA for s in range(len(flips))], dtype="Int64"),
        "latents": [_ids(greedy.latents_of(s)) if flips[s] else nothing for s in range(len(flips))],
        "baseline_score": rounded(greedy.baseline_score),
        "all_k_ablated": rounded(greedy.start_score),
        "set_ablated": [round(float(greedy.final_score[s]), FLOAT_DIGITS) if flips[s] else None for s in range(len(flips))],
        "generation": [outcome.get(int(greedy.flipped[s]), "?") if flips[s] else "—" for s in range(len(flips))],
    })
    found = np.flatnonzero(flips & single)
    shared = set(greedy.latents_of(found[0]).tolist()) if len(found) else set()
    for s in found[1:]:
        shared &= set(greedy.latents_of(s).tolist())
    confirmed = int((greedy.flipped[found] == 1).sum())
    text = (f"**{len(found)} minimal sets that flip** from {int(single.sum())} searched prompts on layer {greedy.layer}, "
            f"searched from the top {greedy.k} candidates ({greedy.order} order); a set flips when the refusal score "
            f"falls below {greedy.threshold:+.2f}; {confirmed} of them confirmed by generation. "
            f"{int((~flips & single).sum())} searches found no flipping set within the top {greedy.k}. "
            + (f"Median size {int(np.median(sizes[found]))}; in every set: {', '.join(map(str, sorted(shared))) or 'none'}."
               if len(found) else ""))
    return text, frame


def first_flipping_set(ctx: WebContext) -> int | None:
    """The set the tab opens on: the first that flips (None when none does)."""
    if ctx.greedy is None:
        return None
    found = np.flatnonzero(ctx.greedy.flips())
    return int(found[0]) if len(found) else None


def trajectory(ctx: WebContext, index: object) -> tuple[go.Figure | None, pd.DataFrame, str]:
    """Refusal score vs number of ablated latents along one set's greedy search, and its steps."""
    greedy = ctx.greedy
    if greedy is None:
        return None, pd.DataFrame({"step": []}), ctx.missing_note("greedy", "minimal sets")
    try:
        chosen = whole_number(index, "set")
        if not 0 <= chosen < len(greedy.prompt):
            raise InputError(f"set {chosen} does not exist (sets 0–{len(greedy.prompt) - 1})")
    except InputError as error:
        return None, pd.DataFrame({"step": []}), f"⚠️ {error}"
    if not greedy.flips()[chosen]:
        return None, pd.DataFrame({"step": []}), (
            f"Search {chosen} (prompt {int(greedy.prompt[chosen])}): **no flipping set within the top {greedy.k}** "
            f"candidates. With all {greedy.k} ablated the refusal score is {greedy.start_score[chosen]:+.3f}, not below "
            f"{greedy.threshold:+.3f}, so the search stopped.")
    sizes, scores, removed = greedy.trajectory_of(chosen)
    title = f"Set {chosen} (prompt {int(greedy.prompt[chosen])}): refusal score vs set size"
    figure = plots.score_vs_size(sizes, scores, removed, greedy.threshold, title)
    steps = pd.DataFrame({"step": np.arange(len(sizes)), "size": sizes, "refusal_score": rounded(scores),
                          "removed": removed})
    text = (f"Set {chosen}: **[{', '.join(map(str, greedy.latents_of(chosen).tolist()))}]**  \n"
            f"Baseline generation: {greedy.baseline_generation[chosen]}  \n"
            f"With the set ablated: {greedy.ablated_generation[chosen]}")
    return figure, steps, text


def fm_interactions(ctx: WebContext) -> tuple[str, go.Figure | None, pd.DataFrame, pd.DataFrame]:
    """(verdict and fit summary, interaction heatmap or None, verified pairs, per-latent weights).

    The heatmap and the pairs appear only when the FM beats the additive model; each pair
    comes with its measured interaction (four ablations on the experiments' prompts)."""
    fm = ctx.fm
    if fm is None:
        note = ctx.missing_note("fm", "FM fit")
        if ctx.experiments is None:
            note += " It needs the ablation experiments first: " + ctx.next_step("experiments") + "."
        return note, None, pd.DataFrame({"latent_i": []}), pd.DataFrame({"latent": []})
    minimal = set()
    if ctx.experiments is not None:
        minimal = set(ctx.experiments.latents[ctx.experiments.in_minimal_set].tolist())
    weights = pd.DataFrame({"latent": fm.latents, "w": rounded(fm.w),
                            "interaction_share": rounded(fm.interaction_share),
                            "in_minimal_set": [int(latent) in minimal for latent in fm.latents]})
    pairs = fm.verified_pairs()
    pair_frame = pd.DataFrame({
        "latent_i": [p["i"] for p in pairs], "latent_j": [p["j"] for p in pairs],
        "fm": [round(p["fm"], FLOAT_DIGITS) for p in pairs], "measured": [round(p["measured"], FLOAT_DIGITS) for p in pairs],
        "measured_sd": [round(p["measured_sd"], FLOAT_DIGITS) for p in pairs],
        "sign": ["agrees" if p["sign_agrees"] else "⚠ disagrees" for p in pairs],
    })
    if not fm.verdict:  # a run made before the comparison: say so, show nothing as evidence
        text = (f"This FM (R² train {fm.r2_train:.3f}, held-out {fm.r2_holdout:.3f}, linear {fm.r2_linear_holdout:.3f}) was fitted "
                f"before the FM-vs-linear test; rerun {ctx.command_for('fm')} for a verdict and verified pairs.")
        return text, None, pair_frame, weights
    r2 = ", ".join(f"{name} {fm.r2_cv[k]:.3f} [{fm.r2_cv_low[k]:.3f}, {fm.r2_cv_high[k]:.3f}]" for k, name in enumerate(fm.MODELS))
    text = (f"**{fm.verdict_text[:1].upper() + fm.verdict_text[1:]}.**  \nCross-validated R² ({fm.folds} folds, "
            f"{fm.confidence:.0%} bootstrap intervals): {r2}. FM rank {fm.rank} on {len(fm.latents)} latents, layer {fm.layer}.")
    if fm.verdict != "interactions":
        return text + " No pair is shown: the FM does not explain the experiments better than additive effects.", None, pair_frame, weights
    matrix = fm.interaction()
    strength = np.abs(fm.w) + np.linalg.norm(fm.V, axis=1)
    shown = np.sort(np.argsort(-strength, kind="stable")[:HEATMAP_MAX])
    labels = [str(int(latent)) for latent in fm.latents[shown]]
    title = f"FM pairwise interactions ⟨v_i, v_j⟩, layer {fm.layer}" + (
        f" ({len(shown)} strongest of {len(fm.latents)} latents)" if len(shown) < len(fm.latents) else "")
    figure = plots.heatmap(matrix[np.ix_(shown, shown)], labels, title)
    text += (" Pairs: the FM's ⟨v_i, v_j⟩ beside the measured f(ij) − f(i) − f(j) + f(∅) (mean and sd over the experiments' "
             "prompts); negative: the two back each other up (redundancy).")
    return text, figure, pair_frame, weights


def dormant_latents(ctx: WebContext) -> tuple[str, pd.DataFrame]:
    """Woken latents with their causal tests: dormant backups and redundant latents first."""
    table = ctx.dormant
    if table is None:
        return ctx.missing_note("dormant", "dormant-latent analysis"), pd.DataFrame({"latent": []})
    where = [
        " ".join(f"{int(p)}:{t}" for p, t in zip(table.position[a:b].tolist(), table.position_token[a:b].tolist()))
        .replace("\n", "↵")
        for a, b in zip(table.position_offsets[:-1], table.position_offsets[1:])
    ]
    frame = pd.DataFrame({
        "latent": table.latent, "layer": table.layer,
        "baseline": rounded(table.baseline_activation),
        "ablated": rounded(table.ablated_activation),
        "refusal_effect": rounded(table.refusal_effect),
        "restores_refusal": table.restores_refusal.astype(bool), "fires_at": where,
    })
    if len(table.backup) != len(table.latent):  # a run made before the causal tests
        restoring = int(table.restores_refusal.sum())
        text = (f"**{len(table.latent)} latents** wake up when the minimal set of layer {table.source_layer} is ablated; "
                f"{restoring} of them restore refusal (negative refusal effect: ablating them too lowers the score again). "
                f"Rerun {ctx.command_for('dormant')} for the backup and redundancy tests.")
        return text, frame
    frame.insert(2, "prompt", table.prompt)
    frame.insert(3, "context", table.context.astype(str))
    frame["clamp_effect"] = rounded(table.clamp_effect)
    frame["verdict"] = np.where(table.backup, "dormant backup", np.where(table.redundant, "redundant", "–"))
    frame = frame.iloc[np.lexsort((table.refusal_effect, ~table.redundant, ~table.backup))].reset_index(drop=True)
    backups = len({(int(p), int(layer), int(j)) for p, layer, j, b in zip(table.prompt, table.layer, table.latent, table.backup) if b})
    redundant = int(table.redundant.sum())
    found = (f"**{backups} dormant backups, {redundant} redundant (latent, set) pairs**" if backups or redundant
             else "**None found**: no woken latent passed a causal test")
    text = (f"{found} among {len(table.latent)} woken latents in {len(table.context_label)} contexts (sets ablated at layer "
            f"{table.source_layer}, each set less one latent, the refusal direction). A *dormant backup* is silent at baseline, "
            f"wakes in a flipping context, and suppressing it lowers the score further (refusal_effect) or clamping it to its "
            f"woken value on the untouched prompt raises refusal (clamp_effect), by more than {table.effect_threshold:g}. "
            f"*Redundant*: the set alone does not flip, the set and the latent do.")
    return text, frame


def dormant_card(ctx: WebContext, row: list | None) -> tuple[str, int | None, int | None]:
    """A clicked dormant row (its values as shown: latent, layer, prompt, context, …): the prompt,
    the context it woke in, its activations and causal tests; and the latent and prompt to open."""
    table = ctx.dormant
    if table is None or not row:
        return "", None, None
    latent, layer = int(row[0]), int(row[1])
    hits = (table.latent == latent) & (table.layer == layer)
    tested = len(table.prompt) == len(table.latent) and len(table.context) == len(table.latent)
    if tested and len(row) > 3:
        hits &= (table.prompt == int(row[2])) & (table.context.astype(str) == str(row[3]))
    if not hits.any():
        return f"⚠️ latent {latent} is not in the dormant table of layer {layer}", None, None
    i = int(np.flatnonzero(hits)[0])
    low, high = int(table.position_offsets[i]), int(table.position_offsets[i + 1])
    where = ", ".join(f"{int(p)}:`{str(t).replace(chr(10), '↵')}`" for p, t in zip(table.position[low:high], table.position_token[low:high]))
    lines = [f"### Latent {latent} · layer {layer}"]
    prompt = int(table.prompt[i]) if len(table.prompt) == len(table.latent) else None
    if prompt is not None:
        record = ctx.study.prompt(prompt)
        lines.append(f"**Prompt {prompt}** ({record.label}, refusal score {record.refusal_score:+.3f}): {record.text[:300]}")
    if tested:
        context = str(table.context[i])
        latents = ""
        if context.startswith("set ") and ctx.greedy is not None:
            parts = context.removeprefix("set ").split(" − ")
            if parts[0].isdigit() and int(parts[0]) < len(ctx.greedy.prompt):
                latents = f" (latents {_ids(ctx.greedy.latents_of(int(parts[0])))}" + (f", less {parts[1]}" if len(parts) > 1 else "") + ")"
        flips = "flips" if table.context_flips[i] else "does not flip"
        lines.append(f"**Context** `{context}`{latents} ablated: score {float(table.context_score[i]):+.3f} ({flips}); "
                     f"with latent {latent} suppressed as well {float(table.with_latent_score[i]):+.3f} "
                     f"(refusal effect {float(table.refusal_effect[i]):+.3f}).")
        clamp = float(table.clamp_effect[i])
        if not np.isnan(clamp):
            lines.append(f"Clamped to its woken value on the untouched prompt: refusal score {clamp:+.3f}.")
        verdict = "dormant backup" if table.backup[i] else "redundant" if table.redundant[i] else "no causal effect beyond the threshold"
        lines.append(f"**Verdict**: {verdict}.")
    lines.append(f"Activation {float(table.baseline_activation[i]):.3f} at baseline → {float(table.ablated_activation[i]):.3f} "
                 f"woken, at tokens {where or '—'}.")
    return "\n\n".join(lines), latent, prompt
