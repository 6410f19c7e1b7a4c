"""`analyze probe`: do a few refusal latents carry "harmful vs harmless" better than random
latents or the dense residual, in and out of distribution (Yeo et al. 2025: on wrapped prompts,
7 refusal latents 0.87 accuracy, 7 random latents 0.50, a dense residual probe 0.51)?

Features at the SAE layer, averaged over the post-instruction tokens of each prompt:
(a) the codes of the top-k refusal latents (from `analyze candidates`), (b) the codes of k
random latents active on the training prompts (``seeds`` draws), (c) the dense residual.
Each probe is an L2-regularised logistic regression (``explorer.stats.LogisticProbe``) trained
on the study's train-split prompts (harmful = 1, harmless = 0) and tested on:

* ``in-distribution``: the study's val split;
* ``wrapped``: the val prompts of both labels wrapped in the jailbreak templates of
  ``explorer.wrappers`` (the same framings `analyze jailbreak` uses), labels kept;
* ``second data set``: optional harmful and harmless prompt files.

Accuracy (threshold 0.5) and AUROC with 95% bootstrap intervals over the test prompts; for the
random latents the metric is the mean over seeds and the interval resamples prompts for all
seeds at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cache.prompts import CSV_DEFAULT_COLUMNS, load_prompts
from explorer.live import LiveContext, prompt_token_ids, select_prompts
from explorer.live_features import encode_texts, pooled_features
from explorer.results_paper2 import ProbeResult
from explorer.stats import LogisticProbe, accuracy, auroc
from explorer.tables import filter_rows, pick_column, read_rows
from explorer.wrappers import pick_wrappers
from store import Study
from store.errors import InputError

PROBES = ("refusal latents", "random latents", "dense residual")


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    layer: int
    k: int = 7
    """Latents per sparse probe (the paper's 7): the top k of `analyze candidates` by --ranking."""
    ranking: Literal["integrated_gradients", "attribution", "cosine"] = "integrated_gradients"
    """How the candidates are ranked (Paper B ranks by integrated gradients)."""
    seeds: int = 5
    """Random-latent probes, each with its own k random active latents."""
    max_train: int = 64
    """Train-split prompts per label."""
    max_test: int = 32
    """Val-split prompts per label (in distribution; the wrapped set wraps these)."""
    wrappers: tuple[str, ...] | None = None
    """Built-in wrappers for the out-of-distribution set (default: all)."""
    max_wrapped: int = 4
    """Val prompts per label that each wrapper wraps."""
    ood_harmful: Path | None = None
    """Second data set: harmful prompt file (with --ood-harmless)."""
    ood_harmless: Path | None = None
    """Second data set: harmless prompt file (with --ood-harmful)."""
    ood_harmful_where: tuple[str, ...] | None = None
    """Row filters COLUMN=VALUE on the harmful file (a table), e.g. FunctionalCategory=standard."""
    ood_harmless_where: tuple[str, ...] | None = None
    """Row filters COLUMN=VALUE on the harmless file (a table), e.g. label=safe for XSTest."""
    max_ood: int = 32
    """Prompts per label of the second data set."""
    l2: float = 1.0
    """L2 penalty of the logistic regressions (on standardised features)."""
    n_boot: int = 1000
    """Bootstrap resamples for the intervals (0: none)."""
    seed: int = 0
    """Seed of the random latents and of the bootstrap."""
    batch_size: int = 8
    """Prompts per forward."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.seeds < 1 or self.max_train < 2 or self.max_test < 1 or self.max_wrapped < 0 or self.max_ood < 1:
            raise InputError("--k, --seeds, --max-test, --max-ood must be ≥ 1, --max-train ≥ 2, --max-wrapped ≥ 0")
        if self.l2 <= 0 or self.n_boot < 0 or self.batch_size < 1:
            raise InputError("--l2 must be > 0, --n-boot ≥ 0, --batch-size ≥ 1")
        if (self.ood_harmful is None) != (self.ood_harmless is None):
            raise InputError("give both --ood-harmful and --ood-harmless (a second data set needs both labels)")


def seeds_metric(metric: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    """Metric of [S, n] probabilities as the mean over the S rows (nan if any row's is nan)."""

    def mean(labels: np.ndarray, probabilities: np.ndarray) -> float:
        return float(np.mean([metric(labels, row) for row in probabilities]))

    return mean


def bootstrap_rows(
    metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, probabilities: np.ndarray, n_boot: int, seed: int,
) -> tuple[float, float]:
    """95% percentile interval resampling test prompts (the last axis of ``probabilities``)."""
    if n_boot < 1 or len(labels) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(labels), len(labels))
        value = metric(labels[rows], probabilities[..., rows])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return (math.nan, math.nan)
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def second_set(path: Path, label: str, where: Sequence[str]) -> list[str]:
    """Prompt texts of one label's file; with row filters the file is read as a table."""
    if not where:
        return [p.text for p in load_prompts(path, label=label)]
    rows = filter_rows(path, read_rows(path), where)
    column = pick_column(path, rows, None, CSV_DEFAULT_COLUMNS, "prompt")
    return list(dict.fromkeys(text for row in rows if (text := row.get(column, "").strip())))


def _features(live: LiveContext, ids: Sequence[Sequence[int]], layer: int, batch: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    return pooled_features(live, ids, layer, batch, progress=progress)


def run_probe(
    study: Study, live: LiveContext, latents: Sequence[int], config: ProbeConfig, *, progress: bool = True,
) -> tuple[ProbeResult, dict[str, Any]]:
    latents = [int(i) for i in latents][: config.k]
    if len(latents) < config.k:
        raise InputError(f"need {config.k} refusal latents, got {len(latents)}; run `refusal-explorer analyze candidates` (or lower --k)")
    train_h = select_prompts(study, label="harmful", split="train")[: config.max_train]
    train_s = select_prompts(study, label="harmless", split="train")[: config.max_train]
    test_h = select_prompts(study, label="harmful", split="val")[: config.max_test]
    test_s = select_prompts(study, label="harmless", split="val")[: config.max_test]
    if min(len(train_h), len(train_s)) < 2:
        raise InputError("the probe needs at least 2 train-split prompts of each label")
    if not test_h or not test_s:
        raise InputError("the study has no val-split prompts of both labels; re-cache with --holdout-fraction > 0")

    def study_set(harmful: list[int], harmless: list[int]) -> tuple[list[list[int]], np.ndarray]:
        return prompt_token_ids(study, harmful + harmless), np.r_[np.ones(len(harmful)), np.zeros(len(harmless))].astype(np.int64)

    sets: list[tuple[str, list[list[int]], np.ndarray]] = [("in-distribution", *study_set(test_h, test_s))]
    if config.max_wrapped:
        texts = study.column("text")
        wrappers = pick_wrappers(config.wrappers)
        wrapped, labels = [], []
        for label, prompts in ((1, test_h[: config.max_wrapped]), (0, test_s[: config.max_wrapped])):
            for wrapper in wrappers:
                wrapped += [wrapper.wrap(str(texts[p])) for p in prompts]
                labels += [label] * len(prompts)
        sets.append(("wrapped", encode_texts(live, wrapped), np.array(labels, np.int64)))
    if config.ood_harmful is not None and config.ood_harmless is not None:
        harmful = second_set(config.ood_harmful, "harmful", config.ood_harmful_where or ())[: config.max_ood]
        harmless = second_set(config.ood_harmless, "harmless", config.ood_harmless_where or ())[: config.max_ood]
        sets.append(("second data set", encode_texts(live, harmful + harmless), np.r_[np.ones(len(harmful)), np.zeros(len(harmless))].astype(np.int64)))

    train_ids, train_y = study_set(train_h, train_s)
    train_codes, train_resid = _features(live, train_ids, config.layer, config.batch_size, progress)
    active = np.nonzero((train_codes != 0).any(0))[0]
    pool = np.array([i for i in active if int(i) not in set(latents)], np.int64)
    if len(pool) < config.k:
        raise InputError(f"only {len(pool)} other latents are active on the train prompts; lower --k")
    rng = np.random.default_rng(config.seed)
    random_sets = np.stack([np.sort(rng.choice(pool, size=config.k, replace=False)) for _ in range(config.seeds)])

    def fit(columns: np.ndarray | None) -> LogisticProbe:
        x = train_resid if columns is None else train_codes[:, columns]
        return LogisticProbe(l2=config.l2).fit(x, train_y)

    refusal_probe = fit(np.array(latents))
    random_probes = [fit(cols) for cols in random_sets]
    dense_probe = fit(None)
    train_accuracy = [
        accuracy(train_y, refusal_probe.predict_proba(train_codes[:, latents])),
        float(np.mean([accuracy(train_y, p.predict_proba(train_codes[:, cols])) for p, cols in zip(random_probes, random_sets)])),
        accuracy(train_y, dense_probe.predict_proba(train_resid)),
    ]

    T = len(sets)
    acc = np.zeros((3, T), np.float32)
    roc = np.zeros((3, T), np.float32)
    acc_ci = np.zeros((3, T, 2), np.float32)
    roc_ci = np.zeros((3, T, 2), np.float32)
    seed_acc = np.zeros((config.seeds, T), np.float32)
    seed_roc = np.zeros((config.seeds, T), np.float32)
    for t, (_name, ids, y) in enumerate(sets):
        codes, resid = _features(live, ids, config.layer, config.batch_size, progress)
        probabilities = [
            refusal_probe.predict_proba(codes[:, latents])[None],
            np.stack([p.predict_proba(codes[:, cols]) for p, cols in zip(random_probes, random_sets)]),
            dense_probe.predict_proba(resid)[None],
        ]
        for s in range(config.seeds):
            seed_acc[s, t] = accuracy(y, probabilities[1][s])
            seed_roc[s, t] = auroc(y, probabilities[1][s])
        for j, prob in enumerate(probabilities):
            acc[j, t] = seeds_metric(accuracy)(y, prob)
            roc[j, t] = seeds_metric(auroc)(y, prob)
            acc_ci[j, t] = bootstrap_rows(seeds_metric(accuracy), y, prob, config.n_boot, config.seed + t)
            roc_ci[j, t] = bootstrap_rows(seeds_metric(auroc), y, prob, config.n_boot, config.seed + t)

    result = ProbeResult(
        layer=config.layer, latents=np.array(latents, np.int64), random_latents=random_sets.astype(np.int64),
        probes=np.array(PROBES, dtype=object), sets=np.array([s[0] for s in sets], dtype=object),
        set_size=np.array([len(s[2]) for s in sets], np.int64), set_positives=np.array([int(s[2].sum()) for s in sets], np.int64),
        accuracy=acc, accuracy_interval=acc_ci, auroc=roc, auroc_interval=roc_ci, random_seed_accuracy=seed_acc,
        random_seed_auroc=seed_roc, train_accuracy=np.array(train_accuracy, np.float32), n_train=len(train_y), l2=config.l2,
    )
    return result, summarise(result)


def summarise(result: ProbeResult) -> dict[str, Any]:
    rows = []
    for j, probe in enumerate(result.probes.tolist()):
        for t, name in enumerate(result.sets.tolist()):
            rows.append({
                "probe": probe, "set": name, "n": int(result.set_size[t]), "accuracy": float(result.accuracy[j, t]),
                "accuracy_interval": result.accuracy_interval[j, t].tolist(), "auroc": float(result.auroc[j, t]),
                "auroc_interval": result.auroc_interval[j, t].tolist(),
            })
    verdicts = []
    for t, name in enumerate(result.sets.tolist()):
        ours = result.auroc_interval[0, t]
        for j in (1, 2):
            other = result.auroc_interval[j, t]
            if ours[0] > other[1]:
                verdicts.append(f"{name}: refusal latents beat {result.probes[j]} (AUROC intervals do not overlap)")
            elif other[0] > ours[1]:
                verdicts.append(f"{name}: {result.probes[j]} beat the refusal latents (AUROC intervals do not overlap)")
            else:
                verdicts.append(f"{name}: no evidence of a difference between refusal latents and {result.probes[j]} (AUROC intervals overlap)")
    return {
        "layer": result.layer, "latents": result.latents.tolist(), "k": len(result.latents), "seeds": len(result.random_latents),
        "n_train": result.n_train, "train_accuracy": dict(zip(result.probes.tolist(), map(float, result.train_accuracy))),
        "sets": dict(zip(result.sets.tolist(), map(int, result.set_size))), "rows": rows, "verdicts": verdicts,
    }


def format_summary(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"probe      layer {summary['layer']}: logistic probes on {summary['k']} refusal latents {summary['latents']}, "
        f"{summary['k']} random active latents ({summary['seeds']} seeds, mean), the dense residual; trained on {summary['n_train']} plain prompts",
        f"{'probe':<16} {'test set':<16} {'n':>4}  {'accuracy (95% CI)':<22} {'AUROC (95% CI)':<22}",
    ]
    for row in summary["rows"]:
        lines.append(
            f"{row['probe']:<16} {row['set']:<16} {row['n']:>4}  {_ci(row['accuracy'], row['accuracy_interval']):<22} "
            f"{_ci(row['auroc'], row['auroc_interval']):<22}"
        )
    lines += [f"verdict    {v}" for v in summary["verdicts"]]
    return lines


def _ci(value: float, interval: Sequence[float]) -> str:
    if math.isnan(value):
        return "n/a"
    low, high = interval
    return f"{value:.2f} ({low:.2f}–{high:.2f})" if not math.isnan(low) else f"{value:.2f}"


def config_dict(config: ProbeConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
