"""Stage 2: greedy filtering to a minimal latent set whose ablation flips refusal (as in Beyond I'm Sorry).
The search itself is explorer/greedy_search.py; the searches of several prompts run side by side
there, sharing batched forwards (``--side-by-side``).

Per refused harmful prompt (and optionally jointly over all of them):

1. Start from the top-K candidates (by cosine, attribution or IG; by default only latents
   active on the prompt). If ablating all K does not push the refusal score below the
   threshold, the search stops there and says so (``start_score`` ≥ ``threshold``).
2. Backward elimination. At each step every single removal ``S \\ {i}`` is scored in one
   batched ``AblationEvaluator`` call, and one latent is dropped (ascending order starts with
   a prefix pass, see ``search``):
   * ``ascending``: the latent whose removal raises the score least (ascending effect),
     provided the flip still holds;
   * ``thresholded`` (Beyond I'm Sorry): as ascending, but a latent whose removal changes p(refusal
     token) by more than ``p_threshold`` is kept even if the flip would still hold.
   The search ends when no latent can be dropped: every remaining latent is needed.
3. The final set is verified by greedy generation with it ablated and the phrase detector.

For a joint search the flip must hold on every prompt, and scores are prompt means.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.generation import greedy_generate
from cache.interventions import RowMaskEdit, sae_edits
from explorer.candidates import top_latents
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.greedy_search import Order, SearchTrace, search, search_many  # noqa: F401 (search: re-exported)
from explorer.live import LiveContext, checked_prompts, prompt_token_ids, select_prompts
from explorer.results import CandidateResult, GreedyResult
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class GreedyConfig:
    layer: int
    """The SAE layer whose latents are ablated."""
    k: int = 32
    """Candidates the search starts from."""
    ranking: Literal["cosine", "attribution", "integrated_gradients"] = "cosine"
    """Which candidate ranking picks the top K."""
    active_only: bool = True
    """Pick the top K among latents active on the prompt(s) (ablating a silent latent does nothing)."""
    order: Order = "ascending"
    """Elimination rule (see the module docstring)."""
    p_threshold: float = 0.01
    """thresholded: a latent stays if removing it changes p(refusal token) by more than this."""
    threshold: float | None = None
    """Refusal score (log-odds) below which a prompt counts as flipped (None = the study's)."""
    prompts: tuple[int, ...] | None = None
    """Prompts to search (None = harmful prompts the fast score calls refused)."""
    max_prompts: int = 8
    """At most this many prompts (the first ones)."""
    time_budget_s: float | None = None
    """Start no new search after this many seconds (None = no limit); the searches done are kept
    and the summary says how many prompts were left unsearched."""
    joint: bool = False
    """Also search one set that must flip every prompt at once (appended as the last set)."""
    generate: int = 24
    """Tokens generated to verify each final set (0 = no verification)."""
    max_batch: int = 32
    """Rows per batched forward from layer L."""
    prefix_pass: bool = True
    """ascending: drop the longest flipping prefix of the single-removal ranking in two
    batched forwards before eliminating step by step (same kind of result, far fewer steps)."""
    side_by_side: int = 8
    """Searches run at once, their trial sets scored in shared batched forwards (1 = one prompt
    after the other); the sets found are the same, the forwards fewer and fuller."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_prompts < 1 or self.max_batch < 1 or self.generate < 0 or self.side_by_side < 1:
            raise InputError("--k, --max-prompts, --max-batch and --side-by-side must be ≥ 1, --generate ≥ 0")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise InputError("--time-budget-s must be positive")
        if self.order not in ("ascending", "thresholded"):
            raise InputError(f"--order must be ascending or thresholded, not {self.order!r}")
        if self.ranking not in ("cosine", "attribution", "integrated_gradients"):
            raise InputError(f"--ranking must be cosine, attribution or integrated_gradients, not {self.ranking!r}")
        if not 0 <= self.p_threshold <= 1:
            raise InputError("--p-threshold must be within [0, 1]")


def verify(
    live: LiveContext, layer: int, token_ids: Sequence[Sequence[int]], latent_sets: Sequence[Sequence[int]], max_new_tokens: int,
    batch: int = 8,
) -> tuple[list[str], list[str], list[bool]]:
    """Greedy generations without and with each row's latents ablated (every position, the
    generated tokens too), and whether the ablated one complies per the phrase detector."""
    sae = live.sae(layer)
    d_sae = int(sae.cfg.d_sae)
    before, after = [], []
    for start in range(0, len(token_ids), batch):
        chunk = [list(t) for t in token_ids[start : start + batch]]
        sets = latent_sets[start : start + batch]
        mask = torch.zeros(len(chunk), d_sae, dtype=torch.bool)
        for row, latents in enumerate(sets):
            mask[row, [int(i) for i in latents]] = True
        before += greedy_generate(live.model, live.loaded.tokenizer, chunk, max_new_tokens)
        with sae_edits(live.model, {layer: sae}, [RowMaskEdit(layer=layer, mask=mask)]):
            after += greedy_generate(live.model, live.loaded.tokenizer, chunk, max_new_tokens)
    complies = [not live.detector.is_refusal(text) for text in after]
    return before, after, complies


def run_greedy(
    study: Study, live: LiveContext, candidates: CandidateResult, config: GreedyConfig, *, progress: bool = True,
) -> tuple[GreedyResult, dict[str, Any]]:
    """Search every chosen prompt (and the joint set); returns the result and a summary."""
    if candidates.layer != config.layer:
        raise InputError(f"the candidates were ranked at layer {candidates.layer}, not {config.layer}; run analyze candidates --layer {config.layer}")
    threshold = live.refusal_threshold if config.threshold is None else float(config.threshold)
    if config.prompts is not None:
        chosen = checked_prompts(study, config.prompts)
    else:
        chosen = select_prompts(study, label="harmful", refused=True)
    chosen = chosen[: config.max_prompts]
    if not chosen:
        raise InputError("no refused harmful prompts to search (by the study's fast score); pass --prompts")
    token_ids = prompt_token_ids(study, chosen)
    ev = AblationEvaluator.from_live(live, token_ids, EvaluatorConfig(layer=config.layer, max_batch=config.max_batch))
    refused = [p for p in range(len(chosen)) if ev.baseline[p] > threshold]
    if not refused:
        raise InputError(f"none of the chosen prompts is refused (score > {threshold:g}) by the live model")
    groups = [[p] for p in refused] + ([refused] if config.joint and len(refused) > 1 else [])
    started = time.monotonic()
    searches = []
    for group in groups:
        active = ev.active_latents(group[0]) if len(group) == 1 else ev.active_latents()
        searches.append((group, top_latents(candidates, config.ranking, config.k, allowed=active if config.active_only else None)))

    def may_start(n_started: int) -> bool:  # out of time: keep what was searched (the summary counts the rest)
        return n_started == 0 or config.time_budget_s is None or time.monotonic() - started <= config.time_budget_s

    with tqdm(total=len(groups), desc=f"greedy ({config.order})", unit="set", disable=not progress) as bar:
        traces = search_many(ev, searches, threshold=threshold, order=config.order, p_threshold=config.p_threshold,
                             prefix_pass=config.prefix_pass, side_by_side=config.side_by_side, may_start=may_start,
                             on_done=bar.update)
    flipped = np.full(len(traces), -1, np.int8)
    base_gen, abl_gen = [""] * len(traces), [""] * len(traces)
    if config.generate:
        rows = [(s, p) for s, t in enumerate(traces) if t.start_flips for p in t.prompts]
        before, after, complies = verify(
            live, config.layer, [token_ids[p] for _s, p in rows], [traces[s].final for s, _p in rows], config.generate,
        )
        for s, t in enumerate(traces):
            mine = [r for r, (set_index, _p) in enumerate(rows) if set_index == s]
            if mine:
                flipped[s] = int(all(complies[r] for r in mine))
                base_gen[s], abl_gen[s] = before[mine[0]], after[mine[0]]
    joint = len(groups) > len(refused) and len(traces) == len(groups)
    result = _result(traces, chosen, config, threshold, flipped, base_gen, abl_gen, joint=joint)
    summary = _summary(traces, result, ev, chosen)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["unsearched"] = len(refused) - sum(len(t.prompts) == 1 for t in traces)
    return result, summary


def _result(
    traces: list[SearchTrace], chosen: list[int], config: GreedyConfig, threshold: float, flipped: np.ndarray,
    base_gen: list[str], abl_gen: list[str], *, joint: bool,
) -> GreedyResult:
    sets = [np.asarray(sorted(t.final), np.int64) for t in traces]
    return GreedyResult(
        layer=config.layer, k=config.k, threshold=threshold, order=config.order,
        prompt=np.array([chosen[t.prompts[0]] for t in traces], np.int64),
        set_offsets=np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64),
        set_latents=np.concatenate(sets) if sets else np.zeros(0, np.int64),
        baseline_score=np.array([t.baseline for t in traces], np.float32),
        start_score=np.array([t.start_score for t in traces], np.float32),
        final_score=np.array([t.final_score for t in traces], np.float32),
        flipped=flipped, baseline_generation=np.array(base_gen, dtype=object), ablated_generation=np.array(abl_gen, dtype=object),
        trajectory_offsets=np.concatenate([[0], np.cumsum([len(t.sizes) for t in traces])]).astype(np.int64),
        trajectory_size=np.concatenate([t.sizes for t in traces]).astype(np.int64),
        trajectory_score=np.concatenate([t.scores for t in traces]).astype(np.float32),
        trajectory_removed=np.concatenate([t.removed for t in traces]).astype(np.int64),
        joint_prompts=np.array([chosen[p] for p in traces[-1].prompts], np.int64) if joint else np.zeros(0, np.int64),
    )


def _summary(traces: list[SearchTrace], result: GreedyResult, ev: AblationEvaluator, chosen: list[int]) -> dict[str, Any]:
    found = [t for t in traces if t.start_flips and len(t.prompts) == 1]
    finals = [set(t.final) for t in found]
    pairs = [len(a & b) / max(1, len(a | b)) for i, a in enumerate(finals) for b in finals[i + 1 :]]
    counts: dict[int, int] = {}
    for s in finals:
        for latent in s:
            counts[latent] = counts.get(latent, 0) + 1
    return {
        "prompts": [chosen[t.prompts[0]] for t in traces if len(t.prompts) == 1],
        "searched": sum(len(t.prompts) == 1 for t in traces), "start_flips": len(found),
        "no_flip_at_k": [chosen[t.prompts[0]] for t in traces if not t.start_flips and len(t.prompts) == 1],
        "sizes": [len(t.final) for t in found],
        "verified": int((result.flipped == 1).sum()), "verified_fail": int((result.flipped == 0).sum()),
        "mean_jaccard": float(np.mean(pairs)) if pairs else float("nan"),
        "shared_latents": sorted((latent for latent, n in counts.items() if n > 1), key=lambda latent: -counts[latent])[:10],
        "joint_size": len(traces[-1].final) if len(traces[-1].prompts) > 1 and traces[-1].start_flips else None,
        "joint_start_flips": traces[-1].start_flips if len(traces[-1].prompts) > 1 else None,
        "forwards_from_layer": ev.n_forwards, "rows": ev.n_rows, "prepare_forwards": ev.n_prepare_forwards,
    }
