"""Stage 1a: the refusal direction (difference in means, chosen as in Arditi et al. 2024).

For every cached layer and post-instruction position, the candidate direction is
mean(harmful) − mean(harmless) of the train-split residuals. Each candidate is scored on the
held-out (val) prompts:

* ``refusal_drop``: mean fall of the refusal score of harmful prompts when the unit direction
  is projected out of the residual stream at every layer;
* ``kl``: mean KL(clean ‖ ablated) of the next-token distributions of harmless prompts;
* ``induce``: mean rise of the refusal score of harmless prompts when the raw difference
  vector is added at its layer (every position).

The chosen candidate has the biggest drop among those with KL ≤ ``kl_threshold`` that lie
below ``max_layer_fraction`` of the depth (and, optionally, induce ≥ ``min_induce``): Arditi
et al.'s rule. Its harmless side effect is not judged against a fixed bar but against the
random-direction controls: the share of harmless first tokens it changes is reported beside
the controls' median (``evaluate`` adds induced refusal and the CE increase).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import pad_left, refusal_log_odds
from cache.generation import greedy_generate
from cache.directions import direction_ablation, direction_addition
from explorer.live import LiveContext, prompt_token_ids, select_prompts
from explorer.results import DirectionResult
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class DirectionConfig:
    layers: tuple[int, ...] | None = None
    """Candidate layers (None = every cached layer)."""
    positions: tuple[int, ...] | None = None
    """Candidate post-instruction positions, negative from the end (None = all of them)."""
    kl_threshold: float = 0.1
    """Largest mean KL on harmless prompts a chosen direction may cause."""
    max_layer_fraction: float = 0.8
    """Only layers < fraction × depth are eligible (directions in the last layers mostly
    act on the output tokens directly)."""
    min_induce: float | None = None
    """If set, the chosen direction must also raise harmless prompts' score by at least this
    when added (Arditi et al. require > 0)."""
    max_val_prompts: int | None = None
    """Score the candidates on at most this many val prompts per label (None = all), to bound
    the cost; the chosen direction is evaluated on all of them."""
    random_controls: int = 3
    """Also project out this many random unit directions (seeded) and report how many harmless
    first tokens each changes: the noise floor the chosen direction's side effect compares to."""
    batch_size: int = 8
    """Prompts per forward."""
    verify_generate: int = 0
    """If > 0: greedy-generate this many tokens for the val harmful prompts, with and without
    the chosen direction ablated, and report the share of refusals that flip to compliance."""

    def __post_init__(self) -> None:
        if self.kl_threshold < 0 or not 0 < self.max_layer_fraction <= 1:
            raise InputError("--kl-threshold must be ≥ 0 and --max-layer-fraction in (0, 1]")
        if self.batch_size < 1 or self.verify_generate < 0 or self.random_controls < 0:
            raise InputError("--batch-size must be ≥ 1, --verify-generate and --random-controls ≥ 0")
        if self.max_val_prompts is not None and self.max_val_prompts < 1:
            raise InputError("--max-val-prompts must be ≥ 1")


def mean_differences(study: Study, layers: Sequence[int], harmful: Sequence[int], harmless: Sequence[int]) -> dict[int, np.ndarray]:
    """Layer → float32 [n_positions, d_model]: mean harmful − mean harmless residual."""
    if not harmful or not harmless:
        raise InputError("the study needs train-split prompts of both labels to compute a direction")
    out = {}
    for layer in layers:
        out[layer] = study.resid(layer, np.asarray(harmful)).mean(0) - study.resid(layer, np.asarray(harmless)).mean(0)
    return out


@torch.no_grad()
def last_logits(live: LiveContext, token_ids: Sequence[Sequence[int]], batch_size: int) -> torch.Tensor:
    """Float32 logits [n, vocab] at the first response position, in left-padded batches.
    Interventions active around the call (hooks) apply."""
    chunks = []
    for start in range(0, len(token_ids), batch_size):
        inputs = pad_left(token_ids[start : start + batch_size], live.pad_id, live.device)
        chunks.append(live.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float().cpu())
    return torch.cat(chunks)


def mean_kl(clean: torch.Tensor, edited: torch.Tensor) -> float:
    """Mean KL(clean ‖ edited) of next-token distributions [n, vocab]."""
    log_p, log_q = torch.log_softmax(clean, -1), torch.log_softmax(edited, -1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def argmax_change_rate(clean: torch.Tensor, edited: torch.Tensor) -> float:
    """Share of rows [n, vocab] whose argmax (the greedy first token) differs."""
    return float((clean.argmax(-1) != edited.argmax(-1)).float().mean())


def choose(
    layers: np.ndarray, drop: np.ndarray, kl: np.ndarray, induce: np.ndarray, n_layers: int, config: DirectionConfig,
) -> tuple[int, str]:
    """Index of the chosen candidate and a note on how it was chosen."""
    early = layers < config.max_layer_fraction * n_layers
    eligible = early & (kl <= config.kl_threshold)
    limits = [f"KL ≤ {config.kl_threshold:g}"]
    if config.min_induce is not None:
        eligible &= induce >= config.min_induce
        limits.append(f"induce ≥ {config.min_induce:g}")
    if eligible.any():
        return int(np.where(eligible, drop, -np.inf).argmax()), "biggest drop among eligible candidates"
    pool = early if early.any() else np.ones_like(early)
    return int(np.where(pool, drop, -np.inf).argmax()), (
        f"no candidate met {' and '.join(limits)}; took the biggest drop outside the last layers"
    )


def run_direction(study: Study, live: LiveContext, config: DirectionConfig, *, progress: bool = True) -> tuple[DirectionResult, dict[str, Any]]:
    """Compute and score every candidate; returns the result and a summary for printing."""
    meta = study.meta
    layers = tuple(config.layers) if config.layers is not None else meta.layers
    missing = [layer for layer in layers if layer not in meta.layers]
    if missing:
        raise InputError(f"layer {missing[0]} is not cached in this study (layers: {', '.join(map(str, meta.layers))})")
    n_pos = meta.n_positions
    positions = tuple(config.positions) if config.positions is not None else tuple(range(-n_pos, 0))
    bad = [p for p in positions if not -n_pos <= p < 0]
    if bad:
        raise InputError(f"position {bad[0]} is not a post-instruction position; use -{n_pos}..-1")
    diffs = mean_differences(
        study, layers, select_prompts(study, label="harmful", split="train"), select_prompts(study, label="harmless", split="train"),
    )
    all_harmful = select_prompts(study, label="harmful", split="val")
    all_harmless = select_prompts(study, label="harmless", split="val")
    if not all_harmful or not all_harmless:
        raise InputError("the study has no val-split prompts of both labels; re-cache with --holdout-fraction > 0")
    # candidates are scored on at most max_val_prompts per label; the chosen one on all of them
    cap = config.max_val_prompts
    harmful_ids, harmless_ids = prompt_token_ids(study, all_harmful), prompt_token_ids(study, all_harmless)
    base_harmful = last_logits(live, harmful_ids, config.batch_size)
    base_harmless = last_logits(live, harmless_ids, config.batch_size)
    score = lambda logits: refusal_log_odds(logits, live.refusal_ids).numpy()  # noqa: E731
    base_h, base_s = score(base_harmful), score(base_harmless)
    grid = [(layer, p) for layer in layers for p in positions]
    drop, kl, induce, changed = (np.zeros(len(grid), np.float32) for _ in range(4))
    for c, (layer, p) in enumerate(tqdm(grid, desc="scoring directions", unit="cand", disable=not progress)):
        raw = torch.from_numpy(diffs[layer][p + n_pos])
        if not torch.isfinite(raw.norm()) or raw.norm() == 0:
            drop[c], kl[c], induce[c], changed[c] = -np.inf, np.inf, -np.inf, 1.0
            continue
        with direction_ablation(live.model, raw):
            drop[c] = float((base_h[:cap] - score(last_logits(live, harmful_ids[:cap], config.batch_size))).mean())
            ablated_harmless = last_logits(live, harmless_ids[:cap], config.batch_size)
        kl[c] = mean_kl(base_harmless[:cap], ablated_harmless)
        changed[c] = argmax_change_rate(base_harmless[:cap], ablated_harmless)
        with direction_addition(live.model, raw.to(live.device), layer):
            induce[c] = float((score(last_logits(live, harmless_ids[:cap], config.batch_size)) - base_s[:cap]).mean())
    cand_layer = np.array([g[0] for g in grid], np.int64)
    cand_pos = np.array([g[1] for g in grid], np.int64)
    best, note = choose(cand_layer, drop, kl, induce, live.n_layers, config)
    layer, position = grid[best]
    raw = diffs[layer][position + n_pos]
    unit = (raw / np.linalg.norm(raw)).astype(np.float32)
    with direction_ablation(live.model, torch.from_numpy(unit)):
        ablated_h = score(last_logits(live, harmful_ids, config.batch_size))
        ablated_s_logits = last_logits(live, harmless_ids, config.batch_size)
    argmax_change = argmax_change_rate(base_harmless, ablated_s_logits)
    first_token_changes = changed_first_tokens(live, base_harmless, ablated_s_logits)
    control_change, control_kl = random_controls(live, harmless_ids, base_harmless, config)
    flip_rate, n_refused = math.nan, 0
    if config.verify_generate:
        flip_rate, n_refused = verify_by_generation(live, harmful_ids, unit, config)
    result = DirectionResult(
        layer=int(layer), position=int(position), direction=unit, candidate_layer=cand_layer, candidate_position=cand_pos,
        refusal_drop=drop, kl=kl, induce=induce, argmax_change=changed, baseline_score=float(base_h.mean()), ablated_score=float(ablated_h.mean()),
        flip_rate=flip_rate, argmax_change_rate=argmax_change, random_argmax_change=control_change, random_kl=control_kl,
    )
    summary = {
        "layer": int(layer), "position": int(position), "note": note, "refusal_drop": float(drop[best]), "kl": float(kl[best]),
        "induce": float(induce[best]), "baseline_score": result.baseline_score, "ablated_score": result.ablated_score,
        "val_harmful": len(all_harmful), "val_harmless": len(all_harmless), "argmax_change_rate": argmax_change,
        "flip_rate": flip_rate, "refused_by_generation": n_refused, "verified": bool(config.verify_generate),
        "harmful_refused_fast": int((base_h > live.refusal_threshold).sum()),
        "harmful_refused_fast_ablated": int((ablated_h > live.refusal_threshold).sum()),
        "random_argmax_change": control_change.tolist(), "random_kl": control_kl.tolist(),
        "random_argmax_change_median": float(np.median(control_change)) if len(control_change) else math.nan,
        "first_token_changes": first_token_changes,
    }
    return result, summary


def changed_first_tokens(live: LiveContext, clean: torch.Tensor, edited: torch.Tensor) -> list[tuple[str, str, int]]:
    """(clean first token, edited first token, count) for the rows whose argmax changed, most
    frequent first: the evidence of what the side effect looks like."""
    before, after = clean.argmax(-1).tolist(), edited.argmax(-1).tolist()
    decode = live.loaded.tokenizer.decode
    pairs = Counter((decode([a]), decode([b])) for a, b in zip(before, after) if a != b)
    return [(a, b, n) for (a, b), n in pairs.most_common()]


@torch.no_grad()
def random_controls(
    live: LiveContext, harmless_ids: list[list[int]], base_harmless: torch.Tensor, config: DirectionConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Harmless argmax-change rate and KL when seeded random unit directions are projected out.

    On a small model many harmless prompts have near-tied first tokens, so any ablation flips
    some of them; these controls say how much of the chosen direction's side effect is that."""
    generator = torch.Generator().manual_seed(0)
    changed, kls = np.zeros(config.random_controls, np.float32), np.zeros(config.random_controls, np.float32)
    for k in range(config.random_controls):
        direction = torch.randn(int(live.model.config.hidden_size), generator=generator)
        with direction_ablation(live.model, direction):
            edited = last_logits(live, harmless_ids, config.batch_size)
        changed[k], kls[k] = argmax_change_rate(base_harmless, edited), mean_kl(base_harmless, edited)
    return changed, kls


def verify_by_generation(live: LiveContext, token_ids: list[list[int]], unit: np.ndarray, config: DirectionConfig) -> tuple[float, int]:
    """Share of the prompts refused by generation (+ detector) that comply with the direction
    projected out; and how many were refused to begin with."""
    tokenizer, model = live.loaded.tokenizer, live.model
    before, after = [], []
    for start in range(0, len(token_ids), config.batch_size):
        chunk = token_ids[start : start + config.batch_size]
        before += greedy_generate(model, tokenizer, chunk, config.verify_generate)
        with direction_ablation(model, torch.from_numpy(unit)):
            after += greedy_generate(model, tokenizer, chunk, config.verify_generate)
    refused = [live.detector.is_refusal(text) for text in before]
    flipped = [r and not live.detector.is_refusal(text) for r, text in zip(refused, after)]
    n_refused = int(sum(refused))
    return (float(sum(flipped)) / n_refused if n_refused else math.nan), n_refused


def config_dict(config: DirectionConfig) -> dict[str, Any]:
    return asdict(config)
