"""`analyze categories`: refusal latents per harm category, which are shared by every category
and which are specific to one, and whether one category's latents transfer to another
(Yeo et al. 2025).

Prompts: the study's harmful prompts and their ``category`` column, or a table file with any
category column (HarmBench's ``SemanticCategory``, JailbreakBench's ``Category``), encoded with
the study's chat template. Per category, at the SAE layer and the post-instruction tokens:

* ``attribution``: mean over the category's prompts of gradient × activation of the refusal
  score (positive: the latent pushes towards refusal);
* ``activation difference``: mean code over the category's prompts − mean over harmless ones.

A category's latents are its top ``top_k`` by a measure (positive values only). ``shared``: in
every category's top list. ``specific`` to c: in c's top list while its value in every other
category is at most ``specific_ratio`` × its value in c. Chance level: the same counts with the
category labels shuffled among the prompts (``shuffles`` times).

Transfer: ablate category A's top latents (by attribution) at the post-instruction tokens and
count, among B's prompts refused at baseline (fast score above the study's threshold), those
that fall below it (flips), with Wilson intervals; a row of k random active latents is the
control.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import LiveContext, prompt_token_ids, select_prompts
from explorer.live_features import attribution_per_prompt, encode_texts, pooled_codes_of, pooled_features, post_instruction_mask
from explorer.results_paper2 import CategoryResult
from explorer.tables import categorised_prompts
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class CategoryConfig:
    layer: int
    """The SAE layer whose latents are compared."""
    prompts: Path | None = None
    """Table of harmful prompts with a category column (default: the study's harmful prompts)."""
    category_column: str = "category"
    """The column naming each prompt's category (e.g. SemanticCategory for HarmBench)."""
    text_column: str | None = None
    """The prompt column (default: the first of instruction, prompt, text, goal, forbidden_prompt, Behavior)."""
    where: tuple[str, ...] | None = None
    """Row filters COLUMN=VALUE on the table, e.g. FunctionalCategory=standard."""
    min_prompts: int = 3
    """Categories with fewer prompts are left out."""
    max_per_category: int = 8
    """Prompts used per category (the first ones)."""
    max_harmless: int = 16
    """Harmless prompts of the study (train split) the activation difference is taken against."""
    top_k: int = 10
    """A category's latents: its top-k by each measure (positive values only)."""
    specific_ratio: float = 0.25
    """Specific to c: at most this share of its value in c in every other category."""
    shuffles: int = 20
    """Label shuffles for the chance level of the shared/specific counts."""
    seed: int = 0
    """Seed of the shuffles and of the random control set."""
    max_batch: int = 32
    """Rows (set × prompt) per batched forward of the transfer matrix."""
    batch_size: int = 8
    """Prompts per forward or gradient pass."""

    def __post_init__(self) -> None:
        if self.min_prompts < 1 or self.max_per_category < self.min_prompts or self.max_harmless < 1:
            raise InputError("--min-prompts and --max-harmless must be ≥ 1 and --max-per-category ≥ --min-prompts")
        if self.top_k < 1 or not 0 <= self.specific_ratio < 1 or self.shuffles < 0:
            raise InputError("--top-k must be ≥ 1, --specific-ratio in [0, 1), --shuffles ≥ 0")
        if self.max_batch < 1 or self.batch_size < 1:
            raise InputError("--max-batch and --batch-size must be ≥ 1")


def top_lists(values: np.ndarray, k: int) -> list[list[int]]:
    """Per row of values [C, d] its top-k columns with a positive value."""
    out = []
    for row in values:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([int(i) for i in order if row[i] > 0])
    return out


def shared_and_specific(values: np.ndarray, k: int, ratio: float) -> tuple[list[int], list[list[int]]]:
    """Latents in every category's top-k, and per category those specific to it (in its top-k,
    at most ``ratio`` × its value in every other category)."""
    tops = top_lists(values, k)
    shared = sorted(set.intersection(*(set(t) for t in tops))) if tops else []
    specific = []
    for c, top in enumerate(tops):
        others = np.delete(values, c, axis=0)
        specific.append([i for i in top if (others[:, i] <= ratio * values[c, i]).all()])
    return shared, specific


def group_means(per_prompt: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    return np.stack([per_prompt[groups == g].mean(0) for g in range(n_groups)])


def _gather(study: Study, live: LiveContext, config: CategoryConfig) -> tuple[list[list[int]], list[str], str]:
    """Token ids and category of every category prompt, and where they came from."""
    if config.prompts is not None:
        rows = categorised_prompts(config.prompts, category_column=config.category_column, text_column=config.text_column, where=config.where or ())
        return encode_texts(live, [text for text, _ in rows]), [category for _, category in rows], str(config.prompts)
    if config.category_column != "category" or config.where:
        raise InputError("--category-column and --where apply to a --prompts table; the study's own prompts have one category column")
    harmful = select_prompts(study, label="harmful")
    categories = study.column("category")
    chosen = [p for p in harmful if categories[p]]
    if not chosen:
        raise InputError("the study's harmful prompts carry no category; give a table with --prompts FILE --category-column NAME")
    return prompt_token_ids(study, chosen), [str(categories[p]) for p in chosen], "study"


def run_categories(study: Study, live: LiveContext, config: CategoryConfig, *, progress: bool = True) -> tuple[CategoryResult, dict[str, Any]]:
    token_ids, labels, source = _gather(study, live, config)
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    names = sorted(c for c, n in counts.items() if n >= config.min_prompts)
    if len(names) < 2:
        raise InputError(
            f"only {len(names)} categor{'y has' if len(names) == 1 else 'ies have'} ≥ {config.min_prompts} prompts "
            f"(counts: {dict(sorted(counts.items()))}); lower --min-prompts or give more prompts"
        )
    rows: list[int] = []
    for name in names:
        rows += [i for i, label in enumerate(labels) if label == name][: config.max_per_category]
    ids = [token_ids[i] for i in rows]
    group = np.array([names.index(labels[i]) for i in rows], np.int64)
    harmless = select_prompts(study, label="harmless", split="train")[: config.max_harmless]
    if not harmless:
        raise InputError("the study has no harmless train prompts to compare activations against")

    n_pos = live.n_positions
    positions = tuple(range(-n_pos, 0))
    ev = AblationEvaluator.from_live(live, ids, EvaluatorConfig(layer=config.layer, positions=positions, max_batch=config.max_batch))
    masks = [post_instruction_mask(len(i), n_pos, ev.sae.W_dec.device) for i in ids]
    attribution = attribution_per_prompt(ev, masks, config.batch_size, progress=progress)  # [P, d_sae]
    codes = pooled_codes_of(ev, masks)  # [P, d_sae]
    harmless_codes, _ = pooled_features(live, prompt_token_ids(study, harmless), config.layer, config.batch_size)
    C = len(names)
    attr_c = group_means(attribution, group, C)
    diff_c = group_means(codes, group, C) - harmless_codes.mean(0)[None]
    k, ratio = config.top_k, config.specific_ratio
    shared_a, specific_a = shared_and_specific(attr_c, k, ratio)
    shared_d, specific_d = shared_and_specific(diff_c, k, ratio)

    # chance level: shuffle the category labels among the prompts, same group sizes
    rng = np.random.default_rng(config.seed)
    control_specific = np.zeros(config.shuffles, np.float32)
    control_shared = np.zeros(config.shuffles, np.float32)
    for s in range(config.shuffles):
        shuffled = rng.permutation(group)
        shared_s, specific_s = shared_and_specific(group_means(attribution, shuffled, C), k, ratio)
        control_specific[s] = sum(len(x) for x in specific_s)
        control_shared[s] = len(shared_s)

    # transfer: each category's top-k attribution latents ablated on every prompt, + a random control
    tops = top_lists(attr_c, k)
    active = ev.active_latents()
    chosen = set(i for top in tops for i in top)
    pool = np.array([i for i in active if int(i) not in chosen], np.int64)
    control = np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False)) if len(pool) else np.zeros(0, np.int64)
    sets = [*tops, control.tolist()]
    scores = ev.scores_of_sets(sets)  # [C+1, P]
    refused = ev.baseline > live.refusal_threshold
    flips = np.zeros((C + 1, C), np.int64)
    drop = np.zeros((C + 1, C), np.float32)
    n_refused = np.array([int(refused[group == b].sum()) for b in range(C)], np.int64)
    for a in range(C + 1):
        for b in range(C):
            members = group == b
            flips[a, b] = int((refused & members & (scores[a] <= live.refusal_threshold)).sum())
            drop[a, b] = float((ev.baseline[members] - scores[a][members]).mean())

    offsets = lambda lists: np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)  # noqa: E731
    flat = lambda lists: np.array([i for x in lists for i in x], np.int64)  # noqa: E731
    result = CategoryResult(
        layer=config.layer, source=source, categories=np.array(names, dtype=object),
        category_size=np.bincount(group, minlength=C).astype(np.int64), n_harmless=len(harmless),
        attribution=attr_c.astype(np.float32), activation_diff=diff_c.astype(np.float32),
        top_offsets=offsets(tops), top_latents=flat(tops),
        top_activation_offsets=offsets(top_lists(diff_c, k)), top_activation_latents=flat(top_lists(diff_c, k)),
        shared_attribution=np.array(shared_a, np.int64), shared_activation=np.array(shared_d, np.int64),
        specific_offsets=offsets(specific_a), specific_latents=flat(specific_a),
        specific_activation_offsets=offsets(specific_d), specific_activation_latents=flat(specific_d),
        control_specific=control_specific, control_shared=control_shared,
        transfer_flips=flips, transfer_refused=n_refused, transfer_drop=drop, control_latents=control.astype(np.int64),
        threshold=float(live.refusal_threshold), top_k=k, specific_ratio=ratio,
    )
    return result, summarise(result)


def summarise(result: CategoryResult) -> dict[str, Any]:
    n_specific = int(len(result.specific_latents))
    chance = result.control_specific
    beyond = bool(len(chance)) and n_specific > float(np.percentile(chance, 95))
    C = len(result.categories)
    rates = result.transfer_rates()
    diag = [rates[a, a] for a in range(C) if not math.isnan(rates[a, a])]
    off = [rates[a, b] for a in range(C) for b in range(C) if a != b and not math.isnan(rates[a, b])]
    return {
        "layer": result.layer, "source": result.source, "categories": result.categories.tolist(),
        "sizes": result.category_size.tolist(), "shared_attribution": result.shared_attribution.tolist(),
        "shared_activation": result.shared_activation.tolist(),
        "specific_attribution": {str(c): result.specific_of(i).tolist() for i, c in enumerate(result.categories)},
        "specific_activation": {str(c): result.specific_of(i, "activation").tolist() for i, c in enumerate(result.categories)},
        "n_specific": n_specific, "n_specific_activation": int(len(result.specific_activation_latents)),
        "chance_specific_mean": float(chance.mean()) if len(chance) else math.nan,
        "chance_specific_p95": float(np.percentile(chance, 95)) if len(chance) else math.nan,
        "chance_shared_mean": float(result.control_shared.mean()) if len(result.control_shared) else math.nan,
        "specific_beyond_chance": beyond,
        "transfer_rate": [[None if math.isnan(v) else float(v) for v in row] for row in rates],
        "transfer_refused": result.transfer_refused.tolist(), "transfer_flips": result.transfer_flips.tolist(),
        "mean_diagonal": float(np.mean(diag)) if diag else math.nan, "mean_off_diagonal": float(np.mean(off)) if off else math.nan,
        "control_rate": [None if math.isnan(v) else float(v) for v in rates[C]],
        "transfer_interval": [[list(result.transfer_interval(a, b)) for b in range(C)] for a in range(C + 1)],
    }


def config_dict(config: CategoryConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def format_summary(summary: dict[str, Any], top_k: int) -> list[str]:
    names = summary["categories"]
    lines = [
        f"categories layer {summary['layer']}, {len(names)} categories from {summary['source']} "
        f"({', '.join(f'{n} {s}' for n, s in zip(names, summary['sizes']))})",
        f"shared     in every category's top {top_k} by attribution: {summary['shared_attribution'] or 'none'}"
        f" (label-shuffled chance: {summary['chance_shared_mean']:.1f}); by activation difference: {summary['shared_activation'] or 'none'}",
        f"specific   {summary['n_specific']} by attribution (label-shuffled chance: mean {summary['chance_specific_mean']:.1f}, "
        f"95th pct {summary['chance_specific_p95']:.1f}); {summary['n_specific_activation']} by activation difference",
    ]
    if not summary["specific_beyond_chance"]:
        lines.append("           no evidence of category-specific latents beyond chance (count within the shuffled-label range)")
    for name in names:
        spec = summary["specific_attribution"][name]
        if spec:
            lines.append(f"  {name:<24} specific: {spec}")
    width = max(len(n) for n in names + ["random"])
    lines.append("transfer   rows: latents ablated (category's top set); columns: fast-score flips among refused prompts")
    lines.append(" " * (width + 3) + " ".join(f"{n[:8]:>8}" for n in names))
    for a, row in enumerate([*names, "random"]):
        rates = summary["transfer_rate"][a]
        lines.append(f"  {row:<{width}} " + " ".join("     n/a" if r is None else f"{r:>8.0%}" for r in rates))
    lines.append(
        f"           mean diagonal {summary['mean_diagonal']:.0%}, off-diagonal {summary['mean_off_diagonal']:.0%}; "
        f"refused per category {summary['transfer_refused']}"
    )
    return lines
