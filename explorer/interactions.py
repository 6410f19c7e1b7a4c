"""Stage 3b: the factorization machine over the ablation experiments, and FM scoring of the cache.

``run_fm`` answers one question before it names any pair: do pairwise interactions explain
the experiments better than additive effects? It cross-validates the FM against a linear
(ridge) model and the mean (``explorer.fm_compare``) and states the verdict with a paired
bootstrap interval. Only when the interval's lower end clears ``min_gain`` are pairs reported,
and each of those is verified by intervention: ``measure`` (see ``explorer.pair_checks``)
ablates none / i / j / both on the experiments' prompts and returns the measured interaction
f(ij) − f(i) − f(j) + f(∅) per prompt, stored beside the FM's ⟨v_i, v_j⟩.

The FM's rank is chosen so that there are ≥ ``rows_per_parameter`` experiments per parameter
(or given; then a shortfall is reported, not hidden). Its parameters are refitted on all rows.

``score_cached_codes`` scores the fitted FM over the study's cached SAE codes with the numba
kernels: a token's (or a prompt's) row is the set of FM latents active there (binary, the
default) or their activations. With binary rows the score reads as "the refusal score the FM
predicts if the latents active here were ablated", so ``w0 − score`` is how much refusal the
latents active on that token / prompt drive. A prompt's row is the union over its tokens
(real-valued: the maximum activation per latent), matching experiments that ablate a latent
at every token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from explorer.fm import FMConfig, fit_fm, interaction_share, top_pairs
from explorer.fm_compare import MODELS, CompareConfig, ModelComparison, choose_rank, compare_models, fm_parameters
from explorer.kernels import build_index_map, fm_score_binary_csr, fm_score_csr
from explorer.results import ExperimentResult, FMResult
from store import Study
from store.errors import InputError

BLOCK_TOKENS = 1 << 18
"""Tokens of cached codes read and scored at once (bounds memory on large studies)."""

MIN_EXPERIMENTS = 10
"""Fewer experiments than this cannot say anything about pairwise interactions."""

PairMeasure = Callable[[Sequence[tuple[int, int]]], tuple[np.ndarray, np.ndarray]]
"""Latent-id pairs → (measured interaction per pair and prompt float [pairs, P], prompts int [P])."""


@dataclass(frozen=True, kw_only=True)
class FMStageConfig:
    """How ``analyze fm`` fits, compares and verifies."""

    rank: int | None = None
    """Factor dimension k of V; None = the largest (≤ max-rank) with ≥ rows-per-parameter experiments per FM parameter."""
    max_rank: int = 8
    """Upper bound of the automatic rank."""
    rows_per_parameter: float = 10.0
    """Experiments needed per FM parameter (1 + n + n·rank) for the automatic rank."""
    folds: int = 5
    """k-fold cross-validation of the FM, the linear model and the mean."""
    bootstrap: int = 2000
    """Paired bootstrap resamples for the R² intervals."""
    confidence: float = 0.95
    """Level of the intervals."""
    min_gain: float = 0.01
    """Gain in cross-validated R² (FM − linear) the interval's lower end must exceed to report interactions."""
    top_pairs: int = 5
    """Pairs (strongest |⟨v_i,v_j⟩|) verified by intervention and reported, when interactions are supported."""
    l2_w: float = 1e-4
    """L2 penalty on the linear weights (standardised target); the linear model uses the same."""
    l2_v: float = 1e-3
    """L2 penalty on the factors."""
    lr: float = 0.05
    """Adam learning rate."""
    max_epochs: int = 400
    """Upper bound on passes over the rows."""
    patience: int = 25
    """Early-stopping patience in epochs (on a 10% validation part of the fitting rows)."""
    seed: int = 0
    """Seeds the folds, the bootstrap and the fits."""
    max_batch: int = 32
    """Rows (ablation × prompt) per batched forward when verifying pairs."""

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise InputError(f"--rank must be a positive integer, got {self.rank}")
        if self.max_rank < 1 or self.rows_per_parameter <= 0 or self.top_pairs < 0 or self.max_batch < 1:
            raise InputError("--max-rank and --max-batch must be ≥ 1, --rows-per-parameter > 0 and --top-pairs ≥ 0")
        try:
            self.fit_config(1)
            self.compare_config()
        except ValueError as error:
            raise InputError(f"bad FM option: {error}") from None

    def fit_config(self, rank: int) -> FMConfig:
        return FMConfig(rank=rank, l2_w=self.l2_w, l2_v=self.l2_v, lr=self.lr, max_epochs=self.max_epochs,
                        patience=self.patience, seed=self.seed, holdout_fraction=0.0)

    def compare_config(self) -> CompareConfig:
        return CompareConfig(folds=self.folds, bootstrap=self.bootstrap, confidence=self.confidence,
                             min_gain=self.min_gain, seed=self.seed)


def stage_rank(m: int, n: int, config: FMStageConfig) -> int:
    """The rank to fit: the configured one, or the automatic one; an InputError when even
    rank 1 lacks the experiments."""
    if config.rank is not None:
        return config.rank
    rank = choose_rank(m, n, max_rank=config.max_rank, rows_per_parameter=config.rows_per_parameter)
    if rank < 1:
        need = math.ceil(config.rows_per_parameter * fm_parameters(n, 1))
        raise InputError(
            f"{m} experiments over {n} latents are too few for a rank-1 FM ({fm_parameters(n, 1)} parameters need ≥ {need}); "
            f"rerun `refusal-explorer analyze experiments` with more --n-experiments (or fewer latents, --max-other), or pass --rank"
        )
    return rank


def run_fm(
    experiments: ExperimentResult, config: FMStageConfig = FMStageConfig(), *, measure: PairMeasure | None = None,
    progress: bool = False,
) -> tuple[FMResult, dict[str, Any]]:
    """Compare the FM with additive effects; report and verify pairs only if it wins.

    ``measure`` verifies pairs by intervention (needed only when the verdict is
    "interactions"; without it the pairs are left out and the summary says so)."""
    X = np.asarray(experiments.design, np.float64)  # [m, n]
    y = np.asarray(experiments.response, np.float64)  # [m]
    m, n = X.shape
    if m < max(MIN_EXPERIMENTS, 2 * config.folds):
        raise InputError(
            f"only {m} experiments; rerun `refusal-explorer analyze experiments` with a larger --n-experiments"
        )
    rank = stage_rank(m, n, config)
    fit_config = config.fit_config(rank)
    try:
        comparison = compare_models(X, y, fit_config, config.compare_config(), progress=progress)
        fit = fit_fm(X, y, fit_config)  # all rows (early stopping watches 10% of them)
    except ValueError as error:
        raise InputError(f"cannot fit the FM: {error}; rerun `refusal-explorer analyze experiments` with a larger --n-experiments") from None
    share = interaction_share(fit, X)
    latents = np.asarray(experiments.latents, np.int64)
    pairs: list[tuple[int, int, float]] = []
    measured, prompts = np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    verified, unverified = False, ""
    if comparison.verdict == "interactions" and config.top_pairs:
        pairs = [(int(latents[i]), int(latents[j]), value) for i, j, value in top_pairs(fit.V, config.top_pairs, "abs")]
        if measure is not None and pairs:
            try:
                values, prompt_ids = measure([(a, b) for a, b, _ in pairs])
            except InputError as error:  # e.g. a study that records no model: say why, name no pair
                unverified = str(error)
            else:
                measured, prompts = np.asarray(values, np.float32), np.asarray(prompt_ids, np.int64)
                verified = True
    if not verified:
        pairs = []
    result = FMResult(
        layer=int(experiments.layer), latents=latents, w0=float(fit.w0),
        w=fit.w.astype(np.float32), V=fit.V.astype(np.float32), interaction_share=share.astype(np.float32),
        r2_train=float(fit.train_r2), r2_holdout=float(comparison.r2["fm"]), r2_linear_holdout=float(comparison.r2["linear"]),
        verdict=comparison.verdict, verdict_text=comparison.sentence(), rank=rank, folds=comparison.folds,
        confidence=comparison.confidence, min_gain=comparison.min_gain,
        r2_cv=np.array([comparison.r2[k] for k in MODELS], np.float64),
        r2_cv_low=np.array([comparison.r2_low[k] for k in MODELS], np.float64),
        r2_cv_high=np.array([comparison.r2_high[k] for k in MODELS], np.float64),
        gain=float(comparison.gain), gain_low=float(comparison.gain_low), gain_high=float(comparison.gain_high),
        pair_i=np.array([a for a, _, _ in pairs], np.int64), pair_j=np.array([b for _, b, _ in pairs], np.int64),
        pair_fm=np.array([v for _, _, v in pairs], np.float32), pair_measured=measured, pair_prompts=prompts,
    )
    predicted = score_design(result, experiments.design)
    order = np.argsort(result.w, kind="stable")
    summary = {
        **comparison.as_dict(), "n_latents": int(n), "rank": rank, "fm_parameters": fm_parameters(n, rank),
        "rows_per_parameter": m / fm_parameters(n, rank), "r2_train": result.r2_train,
        "epochs": fit.epochs, "best_epoch": fit.best_epoch,
        "kernel_max_error": float(np.abs(predicted - fit.predict(X)).max()),
        "strongest_main": [(int(result.latents[i]), float(result.w[i])) for i in order[:5]],
        "pairs": result.verified_pairs(),
        "pairs_note": _pairs_note(comparison, config, measure is not None, unverified),
    }
    return result, summary


def _pairs_note(comparison: ModelComparison, config: FMStageConfig, can_measure: bool, unverified: str) -> str:
    if comparison.verdict != "interactions":
        return "none reported: the FM does not beat the additive model"
    if not config.top_pairs:
        return "none asked for (--top-pairs 0)"
    if not can_measure or unverified:
        return f"not reported: they could not be verified by intervention ({unverified or 'no model'})"
    return "verified by intervention: f(ij) − f(i) − f(j) + f(∅) on the experiments' prompts"


def compare_only(experiments: ExperimentResult, config: FMStageConfig = FMStageConfig()) -> ModelComparison:
    """The cross-validated comparison alone (no refit, no pairs), e.g. for benchmarks."""
    X = np.asarray(experiments.design, np.float64)
    rank = stage_rank(X.shape[0], X.shape[1], config)
    return compare_models(X, np.asarray(experiments.response, np.float64), config.fit_config(rank), config.compare_config())


def score_design(fm: FMResult, design: np.ndarray) -> np.ndarray:
    """FM prediction float64 [m] of every binary design row, with the numba binary kernel."""
    design = np.asarray(design)
    if design.ndim != 2 or design.shape[1] != len(fm.latents):
        raise InputError(f"the design has {design.shape[-1]} columns, the FM {len(fm.latents)}: refit with `analyze fm`")
    rows, cols = np.nonzero(design)  # row-major: each row's columns in order
    indptr = np.zeros(design.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=design.shape[0]), out=indptr[1:])
    return fm_score_binary_csr(indptr, cols.astype(np.int32), fm.w0, fm.w, fm.V)


@dataclass(frozen=True, kw_only=True, eq=False)
class CachedScores:
    """The FM scored over every committed prompt and token of one layer's cached codes."""

    layer: int
    binary: bool
    """True: rows are "latent active" indicators; False: activation values."""
    w0: float
    """The FM's bias: the score of a row with no FM latent in it."""
    token_offsets: np.ndarray
    """int64 [n_prompts + 1]: prompt p's tokens are ``token_score[offsets[p]:offsets[p+1]]``."""
    token_score: np.ndarray
    """float64 [n_tokens]: FM score of the latents active at each token."""
    prompt_score: np.ndarray
    """float64 [n_prompts]: FM score of the latents active anywhere in the pooled tokens."""
    prompt_tokens: int | None = None
    """Tokens pooled per prompt, counted from its end (None = all of them)."""

    @property
    def prompt_drive(self) -> np.ndarray:
        """float64 [n_prompts]: predicted fall of the refusal score if the prompt's active FM
        latents were ablated (w0 − score); large = those latents drive refusal."""
        return self.w0 - self.prompt_score

    def token_drive(self, prompt: int) -> np.ndarray:
        """float64 [n_tokens of the prompt]: w0 − score per token."""
        return self.w0 - self.token_score[self.token_offsets[prompt] : self.token_offsets[prompt + 1]]

    def top_prompts(self, n: int = 10) -> list[tuple[int, float]]:
        """The ``n`` prompts with the largest drive, as (prompt, drive)."""
        drive = self.prompt_drive
        order = np.argsort(-drive, kind="stable")[:n]
        return [(int(p), float(drive[p])) for p in order]


def _prompt_rows(
    per_entry: np.ndarray, indices: np.ndarray, values: np.ndarray, n_prompts: int, d_sae: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-prompt CSR (union of the entries' latents, value = max activation); ``per_entry`` is
    the block-relative prompt of each stored entry."""
    keys = per_entry.astype(np.int64) * d_sae + indices.astype(np.int64)
    order = np.lexsort((-values, keys))  # per key, the largest value first
    keys, vals = keys[order], values[order]
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, vals = keys[first], vals[first]
    prompt_of = keys // d_sae
    out_indptr = np.zeros(n_prompts + 1, np.int64)
    np.cumsum(np.bincount(prompt_of, minlength=n_prompts), out=out_indptr[1:])
    return out_indptr, (keys % d_sae).astype(np.int32), vals.astype(np.float32)


def score_cached_codes(
    study: Study, fm: FMResult, *, binary: bool = True, prompt_tokens: int | None = None, block_tokens: int = BLOCK_TOKENS,
) -> CachedScores:
    """Score the FM over every token and prompt of the study's codes at the FM's layer.

    A prompt's row pools the latents of its last ``prompt_tokens`` tokens (None = every token).
    Pooling the post-instruction tokens asks which latents fire where refusal is decided; pooling
    every token lets a shared system prompt give every prompt the same latents."""
    if prompt_tokens is not None and prompt_tokens < 1:
        raise InputError("prompt_tokens must be ≥ 1 (or None for every token)")
    layer = int(fm.layer)
    if layer not in study.meta.layers or not study.has_codes(layer):
        raise InputError(f"layer {layer} has no SAE codes in this study; the FM was fitted on another study?")
    d_sae = study.codes(layer).d_sae
    if len(fm.latents) and int(np.max(fm.latents)) >= d_sae:
        raise InputError(f"the FM's latent {int(np.max(fm.latents))} is out of range for the {d_sae} latents at layer {layer}")
    index_map = build_index_map(np.asarray(fm.latents, np.int64), d_sae)
    group = study.file[f"layers/{layer}/codes"]
    offsets = np.asarray(study.token_offsets, np.int64)
    n_prompts, n_tokens = len(offsets) - 1, int(offsets[-1])
    token_score = np.full(n_tokens, fm.w0, np.float64)
    prompt_score = np.full(n_prompts, fm.w0, np.float64)
    p0 = 0
    while p0 < n_prompts:
        # whole prompts per block, at least one, about block_tokens tokens
        p1 = max(p0 + 1, int(np.searchsorted(offsets, offsets[p0] + block_tokens, side="right")) - 1)
        p1 = min(p1, n_prompts)
        t0, t1 = int(offsets[p0]), int(offsets[p1])
        indptr = group["indptr"][t0 : t1 + 1].astype(np.int64)
        e0, e1 = int(indptr[0]), int(indptr[-1])
        indptr -= e0
        indices = group["indices"][e0:e1].astype(np.int32)
        values = group["values"][e0:e1].astype(np.float32)
        token_score[t0:t1] = _score(indptr, indices, values, fm, index_map, binary)
        lengths = np.diff(offsets[p0 : p1 + 1])
        token_prompt = np.repeat(np.arange(p1 - p0), lengths)
        per_entry, entry_indices, entry_values = np.repeat(token_prompt, np.diff(indptr)), indices, values
        if prompt_tokens is not None:
            from_end = np.repeat(offsets[p0 + 1 : p1 + 1] - t0, lengths) - 1 - np.arange(t1 - t0)  # 0 = last token
            keep = np.repeat(from_end < prompt_tokens, np.diff(indptr))
            per_entry, entry_indices, entry_values = per_entry[keep], indices[keep], values[keep]
        rows = _prompt_rows(per_entry, entry_indices, entry_values, p1 - p0, d_sae)
        prompt_score[p0:p1] = _score(*rows, fm, index_map, binary)
        p0 = p1
    return CachedScores(
        layer=layer, binary=binary, w0=float(fm.w0), token_offsets=offsets, token_score=token_score, prompt_score=prompt_score,
        prompt_tokens=prompt_tokens,
    )


def _score(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, fm: FMResult, index_map: np.ndarray, binary: bool) -> np.ndarray:
    if binary:
        return fm_score_binary_csr(indptr, indices, fm.w0, fm.w, fm.V, index_map)
    return fm_score_csr(indptr, indices, values, fm.w0, fm.w, fm.V, index_map)


def format_r2(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _r2_cell(cell: dict[str, float | None]) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return f"{f(cell['r2'])} [{f(cell['low'])}, {f(cell['high'])}]"


def fm_summary_lines(summary: dict[str, Any]) -> list[str]:
    """The CLI's text for ``run_fm``'s summary (verdict first, pairs only with their evidence)."""
    r2 = summary["r2"]
    lines = [
        f"fm         {summary['n_latents']} latents, rank {summary['rank']} ({summary['fm_parameters']} parameters, "
        f"{summary['rows_per_parameter']:.1f} experiments each), {summary['n_experiments']} experiments; "
        f"{summary['folds']}-fold cross-validation",
        f"R² (CV)    FM {_r2_cell(r2['fm'])}, linear {_r2_cell(r2['linear'])}, mean {_r2_cell(r2['mean'])} "
        f"({summary['confidence']:.0%} bootstrap intervals)",
        f"verdict    {summary['sentence']}",
    ]
    if summary["rows_per_parameter"] < 10:
        lines.append(f"caution    only {summary['rows_per_parameter']:.1f} experiments per FM parameter (< 10): the FM may overfit")
    pairs = summary["pairs"]
    lines.append(f"pairs      {summary['pairs_note']}" + (f" (prompts {pairs[0]['prompts']})" if pairs else ""))
    for pair in pairs:
        sd = "n/a" if math.isnan(pair["measured_sd"]) else f"{pair['measured_sd']:.2f}"
        lines.append(
            f"           {pair['i']}×{pair['j']}: FM ⟨v_i,v_j⟩ {pair['fm']:+.2f}, measured {pair['measured']:+.2f} (sd {sd} over "
            f"{len(pair['prompts'])} prompts)" + ("" if pair["sign_agrees"] else "  ⚠ sign disagrees")
        )
    lines.append("main       most negative w (ablating lowers refusal): " + ", ".join(f"{i} {w:+.2f}" for i, w in summary["strongest_main"]))
    return lines
