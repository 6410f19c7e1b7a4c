"""Stage 3a: random ablation experiments over the minimal-set latents and their neighbours.

The design's columns are the latents of the greedy stage's minimal sets (union over the sets
that flip) plus the other latents active on the same prompts at layer L in the cached codes,
ranked by their summed activation there and capped at ``max_other``. Each row of the design
is one ablation subset (1 = ablated at every token of every prompt), its response the mean
fast refusal score over the prompts, evaluated with ``AblationEvaluator`` (forwards from layer
L only, many subsets per batch). The rows, in order:

1. all-off (nothing ablated: the baseline) and all-on (every column ablated);
2. the minimal set alone (when there are other columns), single-latent rows (``singles``) and
   all-but-one rows (``leave_one_out``), when asked for;
3. a 2×2 factorial block per candidate pair (pairs of minimal-set latents, at most ``pairs``):
   i alone, j alone and both, on the empty background, on the rest of the minimal set and on
   ``pair_backgrounds`` random backgrounds (each background also alone), so every candidate
   pair's interaction f(ij) − f(i) − f(j) + f(∅) is measured directly in several contexts;
4. random rows, seeded: ``uniform-size`` (the default) draws a subset size uniformly in 1..n,
   then a uniform subset, so small and large subsets (where pairs of redundant latents show)
   are both common; ``bernoulli`` ablates each latent with probability ``p``.

How many: ``n_experiments`` random rows, or by default as many as bring the design to
``rows_per_parameter`` (10) rows per parameter of an FM of rank ``fm_rank`` over the columns
(1 + n + n·rank parameters), the sizing ``analyze fm`` checks before it fits.

The scheme is recorded in the result as one string (and the config beside it), e.g.
``all-off+all-on+minimal+singles(24)+pairs(10x4)+uniform-size x200;seed=0``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import LiveContext, checked_prompts, prompt_token_ids
from explorer.results import ExperimentResult, GreedyResult
from store import Study
from store.errors import InputError

Sampling = Literal["bernoulli", "uniform-size"]


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    n_experiments: int | None = None
    """Random rows (on top of the fixed and factorial rows); None = enough for
    ``rows_per_parameter`` rows per parameter of a rank-``fm_rank`` FM over the columns."""
    fm_rank: int = 2
    """FM rank the default experiment count is sized for."""
    rows_per_parameter: float = 10.0
    """Design rows per FM parameter when ``n_experiments`` is None."""
    pairs: int = 10
    """Candidate pairs (of minimal-set latents, in order) given a 2×2 factorial block; 0 = none."""
    pair_backgrounds: int = 2
    """Random backgrounds per candidate pair besides the empty one and the rest of the minimal set."""
    sampling: Sampling = "uniform-size"
    """``bernoulli``: each latent ablated with probability ``p``; ``uniform-size``: a subset
    size uniform in 1..n, then a uniform subset of that size."""
    p: float = 0.5
    """Ablation probability per latent for ``bernoulli``."""
    max_other: int = 48
    """At most this many latents besides the minimal sets (the most active on the prompts)."""
    singles: bool = True
    """Add one row per latent ablating it alone."""
    leave_one_out: bool = False
    """Add one row per latent ablating every column but it."""
    prompts: tuple[int, ...] | None = None
    """Prompts the responses average over (None = the prompts of the greedy sets that flip)."""
    max_prompts: int = 8
    """At most this many prompts (the first ones)."""
    include_joint: bool = True
    """Count a joint greedy set (searched on several prompts) among the minimal sets."""
    seed: int = 0
    """Seeds the random rows."""
    max_batch: int = 32
    """Rows (subset × prompt) per batched forward from layer L."""

    def __post_init__(self) -> None:
        if (self.n_experiments is not None and self.n_experiments < 0) or self.max_other < 0:
            raise InputError("--n-experiments and --max-other must be ≥ 0")
        if self.fm_rank < 1 or self.rows_per_parameter <= 0:
            raise InputError("--fm-rank must be ≥ 1 and --rows-per-parameter > 0")
        if self.pairs < 0 or self.pair_backgrounds < 0:
            raise InputError("--pairs and --pair-backgrounds must be ≥ 0")
        if self.max_prompts < 1 or self.max_batch < 1:
            raise InputError("--max-prompts and --max-batch must be ≥ 1")
        if self.sampling not in ("bernoulli", "uniform-size"):
            raise InputError(f"--sampling must be bernoulli or uniform-size, not {self.sampling!r}")
        if not 0 < self.p < 1:
            raise InputError(f"--p must lie strictly between 0 and 1, got {self.p}")


@dataclass(frozen=True, kw_only=True)
class MinimalSet:
    """One greedy set whose ablation flips its prompt(s)."""

    index: int  # the set's index in the GreedyResult
    prompts: tuple[int, ...]  # study prompt indices it was searched on
    latents: tuple[int, ...]


def flipping_sets(greedy: GreedyResult, *, include_joint: bool = True) -> list[MinimalSet]:
    """The greedy sets whose ablation pushed the score below the threshold (a set whose start
    did not flip is the untouched top-K and says nothing about minimality)."""
    n_sets = len(greedy.prompt)
    joint = len(greedy.joint_prompts) > 0
    out = []
    for s in range(n_sets):
        if not greedy.final_score[s] < greedy.threshold:
            continue
        is_joint = joint and s == n_sets - 1
        if is_joint and not include_joint:
            continue
        prompts = tuple(int(p) for p in greedy.joint_prompts) if is_joint else (int(greedy.prompt[s]),)
        out.append(MinimalSet(index=s, prompts=prompts, latents=tuple(int(i) for i in greedy.latents_of(s))))
    return out


def active_mass(study: Study, layer: int, prompts: Sequence[int]) -> np.ndarray:
    """Summed cached activation of every latent over the tokens of ``prompts``, float64 [d_sae]."""
    codes = study.codes(layer)
    mass = np.zeros(codes.d_sae, np.float64)
    for p in prompts:
        _indptr, indices, values = codes.prompt_codes(int(p))
        np.add.at(mass, indices.astype(np.int64), np.abs(values.astype(np.float64)))
    return mass


def choose_columns(minimal: Sequence[int], mass: np.ndarray, max_other: int) -> np.ndarray:
    """Minimal-set latents (sorted) then the ``max_other`` most active other latents
    (descending mass, ties by id)."""
    minimal = np.unique(np.asarray(minimal, np.int64))
    others = np.flatnonzero(mass > 0)
    others = others[~np.isin(others, minimal)]
    others = others[np.lexsort((others, -mass[others]))][:max_other]
    return np.concatenate([minimal, others]).astype(np.int64)


def sized_experiments(n_latents: int, n_fixed: int, config: ExperimentConfig) -> int:
    """Random rows: ``config.n_experiments``, or enough to reach ``rows_per_parameter`` rows per
    parameter of a rank-``fm_rank`` FM over ``n_latents`` columns (the fixed rows count too)."""
    if config.n_experiments is not None:
        return config.n_experiments
    parameters = 1 + n_latents + n_latents * config.fm_rank
    return max(0, int(np.ceil(config.rows_per_parameter * parameters)) - n_fixed)


def candidate_pairs(n_minimal: int, limit: int) -> list[tuple[int, int]]:
    """Column pairs (i < j) among the first ``n_minimal`` columns, at most ``limit``, in order."""
    return list(itertools.islice(itertools.combinations(range(n_minimal), 2), limit))


def _uniform_size_rows(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """m rows over n columns: a size uniform in 1..n, then a uniform subset of that size."""
    if m == 0 or n == 0:
        return np.zeros((m, n), np.int8)
    sizes = rng.integers(1, n + 1, m)
    ranks = np.argsort(np.argsort(rng.random((m, n)), axis=1), axis=1)  # a uniform permutation per row
    return (ranks < sizes[:, None]).astype(np.int8)


def factorial_rows(n_latents: int, n_minimal: int, config: ExperimentConfig, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The 2×2 factorial blocks (rows int8, number of pairs): for each candidate pair (i, j) and
    background B (empty, the rest of the minimal set, ``pair_backgrounds`` random subsets of the
    other columns): B, B+i, B+j, B+i+j (rows equal to earlier ones are kept: they are repeats)."""
    pairs = candidate_pairs(n_minimal, config.pairs)
    rows = []
    for i, j in pairs:
        others = np.array([c for c in range(n_latents) if c not in (i, j)], np.int64)
        backgrounds = [np.zeros(n_latents, np.int8)]
        rest = np.zeros(n_latents, np.int8)
        rest[[c for c in range(n_minimal) if c not in (i, j)]] = 1
        if rest.any():
            backgrounds.append(rest)
        for row in _uniform_size_rows(rng, config.pair_backgrounds, len(others)):
            background = np.zeros(n_latents, np.int8)
            background[others] = row
            backgrounds.append(background)
        for background in backgrounds:
            for a, b in ((0, 0), (1, 0), (0, 1), (1, 1)):
                row = background.copy()
                row[i], row[j] = a, b
                rows.append(row)
    return (np.stack(rows) if rows else np.zeros((0, n_latents), np.int8)), len(pairs)


def sample_design(n_latents: int, n_minimal: int, config: ExperimentConfig) -> tuple[np.ndarray, str]:
    """Design int8 [rows, n_latents] (1 = ablated; the first ``n_minimal`` columns are the
    minimal sets') and the scheme string describing it."""
    if n_latents < 1:
        raise InputError("no latents to experiment on")
    rows = [np.zeros(n_latents, np.int8), np.ones(n_latents, np.int8)]
    parts = ["all-off", "all-on"]
    if 0 < n_minimal < n_latents:
        rows.append(np.r_[np.ones(n_minimal, np.int8), np.zeros(n_latents - n_minimal, np.int8)])
        parts.append("minimal")
    eye = np.eye(n_latents, dtype=np.int8)
    if config.singles:
        rows.extend(eye)
        parts.append(f"singles({n_latents})")
    if config.leave_one_out:
        rows.extend(1 - eye)
        parts.append(f"leave-one-out({n_latents})")
    rng = np.random.default_rng(config.seed)
    block, n_pairs = factorial_rows(n_latents, n_minimal, config, rng)
    if n_pairs:
        parts.append(f"pairs({n_pairs}x{block.shape[0] // n_pairs})")
    fixed = np.concatenate([np.stack(rows), block])
    m = sized_experiments(n_latents, fixed.shape[0], config)
    if config.sampling == "bernoulli":
        random_rows = (rng.random((m, n_latents)) < config.p).astype(np.int8)
        parts.append(f"bernoulli(p={config.p:g})x{m}")
    else:
        random_rows = _uniform_size_rows(rng, m, n_latents)
        parts.append(f"uniform-size x{m}")
    design = np.concatenate([fixed, random_rows])
    return design, "+".join(parts) + f";seed={config.seed}"


def choose_prompts(study: Study, sets: Sequence[MinimalSet], config: ExperimentConfig) -> list[int]:
    if config.prompts is not None:
        chosen = checked_prompts(study, config.prompts)
    else:
        chosen = list(dict.fromkeys(p for s in sets for p in s.prompts))
    return chosen[: config.max_prompts]


def evaluate_design(
    ev: AblationEvaluator, latents: np.ndarray, design: np.ndarray, *, progress: bool = True, desc: str = "experiments",
    estimate: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Refusal scores float32 [rows, P] of every design row (its columns' latents ablated).

    ``estimate`` (when given) receives one line with the expected cost of the whole design,
    extrapolated from the first batched forward, before the rest runs."""
    rows_per_call = max(1, ev.config.max_batch // ev.n_prompts)
    out = np.zeros((design.shape[0], ev.n_prompts), np.float32)
    columns = torch.as_tensor(latents, dtype=torch.long)
    calls = -(-design.shape[0] // rows_per_call)
    with tqdm(total=design.shape[0], desc=desc, unit="subset", disable=not progress) as bar:
        for start in range(0, design.shape[0], rows_per_call):
            began = time.perf_counter()
            block = torch.as_tensor(design[start : start + rows_per_call] != 0)  # [b, n_latents]
            masks = torch.zeros(block.shape[0], ev.d_sae, dtype=torch.bool)
            masks[:, columns] = block
            out[start : start + block.shape[0]] = ev.scores(masks)
            bar.update(block.shape[0])
            if start == 0 and estimate is not None:
                seconds = (time.perf_counter() - began) * calls
                estimate(
                    f"cost       {design.shape[0]} subsets × {ev.n_prompts} prompts = {design.shape[0] * ev.n_prompts} rows in "
                    f"{calls} batched forwards from layer {ev.layer}: about {_duration(seconds)} (from the first forward)"
                )
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_experiments(
    study: Study, live: LiveContext, greedy: GreedyResult, config: ExperimentConfig, *, progress: bool = True,
    estimate: Callable[[str], None] | None = None,
) -> tuple[ExperimentResult, dict[str, Any]]:
    """Sample the design, evaluate it on the prompts, and return the result and a summary."""
    layer = int(greedy.layer)
    sets = flipping_sets(greedy, include_joint=config.include_joint)
    if not sets:
        raise InputError("no greedy set flips its prompt; rerun `refusal-explorer analyze greedy` with a larger --k")
    prompts = choose_prompts(study, sets, config)
    if not prompts:
        raise InputError("no prompts to run experiments on; pass --prompts")
    if not study.has_codes(layer):
        raise InputError(f"layer {layer} has no SAE codes in this study; re-cache it with `refusal-explorer cache --sae {layer}=…`")
    minimal = sorted({i for s in sets for i in s.latents})
    latents = choose_columns(minimal, active_mass(study, layer, prompts), config.max_other)
    n_minimal = len(minimal)
    design, scheme = sample_design(len(latents), n_minimal, config)
    started = time.perf_counter()
    ev = AblationEvaluator.from_live(
        live, prompt_token_ids(study, prompts), EvaluatorConfig(layer=layer, max_batch=config.max_batch),
    )
    if latents.max(initial=-1) >= ev.d_sae:
        raise InputError(f"latent {int(latents.max())} is out of range: the SAE at layer {layer} has {ev.d_sae} latents")
    scores = evaluate_design(ev, latents, design, progress=progress, estimate=estimate)  # [rows, P]
    seconds = time.perf_counter() - started
    response = scores.mean(axis=1).astype(np.float32)
    result = ExperimentResult(
        layer=layer, scheme=scheme, latents=latents, in_minimal_set=np.arange(len(latents)) < n_minimal,
        design=design, response=response, prompts=np.asarray(prompts, np.int64), prompt_response=scores,
    )
    threshold = float(greedy.threshold)
    summary = {
        "layer": layer, "prompts": prompts, "n_rows": int(design.shape[0]), "n_latents": int(len(latents)),
        "n_minimal": n_minimal, "scheme": scheme, "all_off": float(response[0]), "all_on": float(response[1]),
        "minimal": float(response[2]) if "+minimal" in scheme else None,
        "mean": float(response.mean()), "below_threshold": float((response < threshold).mean()), "threshold": threshold,
        "mean_ablated": float(design.sum(1).mean()), "seconds": seconds,
        "fm_parameters": 1 + len(latents) + len(latents) * config.fm_rank, "fm_rank": config.fm_rank,
        "forwards_from_layer": ev.n_forwards, "rows": ev.n_rows, "prepare_forwards": ev.n_prepare_forwards,
    }
    return result, summary
