"""The "why did the model refuse this prompt?" view, computed without any UI library.

Both viewers render ``WhyView``: the prompt's latents ranked by attribution to its own refusal
score (the ``why`` stage), its flipping minimal set and what ablating it does (``greedy``), the
dormant latents that wake when that set is ablated (``dormant``), and the FM partners of its
top latents (``fm``). Every part that has not been computed says which command computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from explorer.browse import StudyBrowser
from explorer.results import DirectionResult, DormantResult, FMResult, GreedyResult, WhyResult

RANKED_FALLBACK = 15


@dataclass(frozen=True)
class RankedLatent:
    latent: int
    attribution: float  # NaN in the fallback ranking (no why stage)
    activation: float  # summed over the post-instruction tokens (or its peak there, in the fallback)
    in_set: bool  # in this prompt's flipping minimal set


@dataclass(frozen=True)
class WhyView:
    index: int
    label: str
    text: str
    refusal_score: float
    refused: int  # by generation: 1, 0, -1 not generated
    layer: int | None
    ranking: list[RankedLatent]
    ranking_note: str  # how the ranking was made, or what to run for the attribution ranking
    set_latents: list[int] = field(default_factory=list)  # the flipping minimal set, empty if none
    set_index: int | None = None
    set_score: float | None = None  # refusal score with the set ablated
    set_generation: str = ""  # greedy generation with the set ablated
    set_confirmed: int = -1  # the generation complies (1), still refuses (0), not checked (-1)
    set_note: str = ""  # when there is no set: why (not searched / no flipping set within top K)
    direction_note: str = ""  # what ablating the refusal direction does
    dormant: list[tuple[int, int, float, float]] = field(default_factory=list)  # (latent, layer, baseline, ablated)
    dormant_note: str = ""
    partners: list[tuple[int, int, float]] = field(default_factory=list)  # (latent, partner, <v_i, v_j>)
    partners_note: str = ""


def _fallback_ranking(browser: StudyBrowser, layer: int, index: int) -> list[tuple[int, float]]:
    """Without the why stage: the latents with the highest peak over the post-instruction tokens
    (never the system prompt's or the first token's, which every prompt shares)."""
    study = browser.study
    indptr, indices, values = browser.codes(layer).prompt_codes(index)
    n_tokens = len(indptr) - 1
    first_row = max(0, n_tokens - int(study.meta.n_positions))
    lo = int(indptr[first_row] - indptr[0])
    indices, values = indices[lo:], values[lo:]
    if not len(indices):
        return []
    peaks = np.zeros(int(indices.max()) + 1, np.float32)
    np.maximum.at(peaks, indices, values)
    order = np.argsort(-peaks, kind="stable")[:RANKED_FALLBACK]
    return [(int(i), float(peaks[i])) for i in order if peaks[i] > 0]


def why_view(browser: StudyBrowser, index: int, layer: int | None = None) -> WhyView:
    study = browser.study
    record = study.prompt(index)
    why, greedy = browser.result(WhyResult), browser.result(GreedyResult)
    fm, dormant, direction = browser.result(FMResult), browser.result(DormantResult), browser.result(DirectionResult)
    run = "" if browser.run == "default" else f" --run {browser.run}"
    path = study.path

    # --- the prompt's flipping minimal set
    set_latents: list[int] = []
    set_index = set_score = None
    set_generation, set_confirmed, set_note = "", -1, ""
    if greedy is None:
        set_note = f"No minimal sets searched yet: run `refusal-explorer analyze greedy {path}{run}`."
    else:
        searches = np.flatnonzero((greedy.prompt == index) & greedy.per_prompt())
        flipping = [int(s) for s in searches if greedy.flips()[s]]
        if flipping:
            s = flipping[0]
            set_index, set_latents = s, [int(x) for x in greedy.latents_of(s)]
            set_score, set_generation = float(greedy.final_score[s]), str(greedy.ablated_generation[s])
            set_confirmed = int(greedy.flipped[s])
        elif len(searches):
            s = int(searches[0])
            set_note = (f"No flipping set within the top {greedy.k} candidates: with all {greedy.k} ablated the refusal "
                        f"score is {greedy.start_score[s]:+.2f}, not below {greedy.threshold:+.2f}.")
        else:
            set_note = (f"No minimal set searched on this prompt yet: run `refusal-explorer analyze greedy {path} "
                        f"--prompts {index}{run}`.")
    in_set = set(set_latents)

    # --- the ranking
    ranking: list[RankedLatent] = []
    shown_layer = layer
    if why is not None and why.ranking(index) is not None and (layer is None or layer == why.layer):
        latents, attribution, activation = why.ranking(index)
        shown_layer = why.layer
        ranking = [RankedLatent(int(l), float(a), float(v), int(l) in in_set) for l, a, v in zip(latents, attribution, activation)]
        hits = np.flatnonzero(why.prompt == index)
        note = (f"Latents of layer {why.layer} ranked by attribution to this prompt's refusal score "
                f"({why.score[hits[0]]:+.2f}): gradient × activation with the SAE error held fixed, summed over the "
                f"last {why.positions} (post-instruction) tokens; all latents together: {why.total[hits[0]]:+.2f}.")
    else:
        if shown_layer is None:
            shown_layer = why.layer if why is not None else (greedy.layer if greedy is not None else next(
                (l for l in study.meta.layers if study.has_codes(l)), None))
        if shown_layer is not None and study.has_codes(shown_layer):
            ranking = [RankedLatent(l, float("nan"), v, l in in_set) for l, v in _fallback_ranking(browser, shown_layer, index)]
        missing = ("this prompt was not ranked" if why is not None else "no per-prompt attribution yet")
        note = (f"Peak activation over the post-instruction tokens (layer {shown_layer}), not attribution: {missing}; "
                f"run `refusal-explorer analyze why {path}{run}`.")

    # --- the direction, dormant latents, FM partners
    direction_note = ("No refusal direction yet: run `refusal-explorer analyze direction`." if direction is None else
                      f"Projecting the refusal direction (layer {direction.layer}) out of every layer moves the mean "
                      f"harmful refusal score {direction.baseline_score:+.2f} → {direction.ablated_score:+.2f} "
                      "(held-out prompts; not measured per prompt).")
    dormant_rows, dormant_note = [], ""
    if dormant is None:
        dormant_note = "No dormant-latent analysis yet: run `refusal-explorer analyze dormant`."
    elif not len(dormant.prompt):
        dormant_note = "This study's dormant analysis did not record which prompt each latent woke on."
    else:
        for i in np.flatnonzero(dormant.prompt == index):
            dormant_rows.append((int(dormant.latent[i]), int(dormant.layer[i]), float(dormant.baseline_activation[i]),
                                 float(dormant.ablated_activation[i])))
        if not dormant_rows:
            dormant_note = "No dormant latent was measured waking on this prompt."
    partners, partners_note = [], ""
    if fm is None:
        partners_note = "No FM fit yet: run `refusal-explorer analyze fm`."
    else:
        matrix = browser.fm_interaction()
        position = {int(l): j for j, l in enumerate(fm.latents)}
        for item in ranking[:8]:
            j = position.get(item.latent)
            if j is None or matrix is None or fm.layer != shown_layer:
                continue
            row = matrix[j]
            for k in np.argsort(-np.abs(row))[:3]:
                if row[k] != 0 and k != j:
                    partners.append((item.latent, int(fm.latents[k]), float(row[k])))
        if not partners:
            partners_note = "None of the top latents is in the FM fit."
    return WhyView(
        index=index, label=record.label, text=record.text, refusal_score=record.refusal_score, refused=record.refused,
        layer=shown_layer, ranking=ranking, ranking_note=note, set_latents=set_latents, set_index=set_index,
        set_score=set_score, set_generation=set_generation, set_confirmed=set_confirmed, set_note=set_note,
        direction_note=direction_note, dormant=dormant_rows, dormant_note=dormant_note, partners=partners,
        partners_note=partners_note,
    )
