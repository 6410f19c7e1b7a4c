"""Stage 3b: the factorization machine over the ablation experiments, and FM scoring of the cache.

``run_fm`` fits ``explorer.fm`` to a stored ``ExperimentResult`` (x = which latents were
ablated, y = mean refusal score) and returns an ``FMResult``: w0, w, V, each latent's
interaction share, R² on the training and holdout experiments and a ridge baseline's holdout
R² on the same split.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from explorer.fm import FMConfig, fit_fm, interaction_share
from explorer.kernels import build_index_map, fm_score_binary_csr, fm_score_csr
from explorer.results import ExperimentResult, FMResult
from store import Study
from store.errors import InputError

BLOCK_TOKENS = 1 << 18
"""Tokens of cached codes read and scored at once (bounds memory on large studies)."""

MIN_EXPERIMENTS = 10
"""Fewer experiments than this cannot say anything about pairwise interactions."""


def run_fm(experiments: ExperimentResult, config: FMConfig = FMConfig()) -> tuple[FMResult, dict[str, Any]]:
    """Fit the FM to the experiments; returns the result and a summary for the CLI."""
    X = np.asarray(experiments.design, np.float64)  # [m, n]
    y = np.asarray(experiments.response, np.float64)  # [m]
    if X.shape[0] < MIN_EXPERIMENTS:
        raise InputError(
            f"only {X.shape[0]} experiments; rerun `refusal-explorer analyze experiments` with a larger --n-experiments"
        )
    try:
        fit = fit_fm(X, y, config)
    except ValueError as error:
        raise InputError(f"cannot fit the FM: {error}; rerun `refusal-explorer analyze experiments` with a larger --n-experiments") from None
    share = interaction_share(fit, X)
    result = FMResult(
        layer=int(experiments.layer), latents=np.asarray(experiments.latents, np.int64), w0=float(fit.w0),
        w=fit.w.astype(np.float32), V=fit.V.astype(np.float32), interaction_share=share.astype(np.float32),
        r2_train=float(fit.train_r2), r2_holdout=float(fit.holdout_r2), r2_linear_holdout=float(fit.linear_holdout_r2),
    )
    predicted = score_design(result, experiments.design)
    order = np.argsort(result.w, kind="stable")
    shared = np.flatnonzero(np.nan_to_num(share, nan=-1.0) >= 0.5)
    summary = {
        "n_experiments": int(X.shape[0]), "n_latents": int(X.shape[1]), "rank": config.rank,
        "r2_train": result.r2_train, "r2_holdout": result.r2_holdout, "r2_linear_train": float(fit.linear_train_r2),
        "r2_linear_holdout": result.r2_linear_holdout, "epochs": fit.epochs, "best_epoch": fit.best_epoch,
        "n_holdout": int(fit.holdout_index.size),
        "kernel_max_error": float(np.abs(predicted - fit.predict(X)).max()),
        "strongest_main": [(int(result.latents[i]), float(result.w[i])) for i in order[:5]],
        "positive_pairs": result.top_pairs(5, "positive"), "negative_pairs": result.top_pairs(5, "negative"),
        "interaction_driven": [
            (int(result.latents[i]), float(share[i])) for i in shared[np.argsort(-share[shared], kind="stable")][:10]
        ],
    }
    return result, summary


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
