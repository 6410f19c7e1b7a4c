"""Typed results of the second paper's stages (Yeo et al. 2025): graph, categories,
jailbreak, probe, stored under /analysis/<run>/<stage> like the other stages' results.

Kept apart from the stages' code so viewers read them without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from explorer.results import StageResult
from explorer.stats import wilson


@dataclass(frozen=True, kw_only=True)
class GraphResult(StageResult):
    """Upstream (layer U) → downstream (layer D) latent edges and each latent's effect on the score."""

    STAGE: ClassVar[str] = "graph"
    COMMAND: ClassVar[str] = "refusal-explorer analyze graph"
    upstream_layer: int
    downstream_layer: int
    upstream: np.ndarray  # int [U]
    downstream: np.ndarray  # int [D]
    weight: np.ndarray  # float32 [U, D]: measured a_d(clean) − a_d(u ablated)
    estimate: np.ndarray  # float32 [U, D]: gradient × activation of the same
    kept: np.ndarray  # bool [U, D]: edges above the threshold and the control floor
    upstream_score: np.ndarray  # float32 [U]: measured score drop when u is ablated
    upstream_score_estimate: np.ndarray  # float32 [U]
    downstream_score: np.ndarray  # float32 [D]
    downstream_score_estimate: np.ndarray  # float32 [D]
    upstream_activation: np.ndarray  # float32 [U]: mean clean code over post-instruction tokens and prompts
    downstream_activation: np.ndarray  # float32 [D]
    control_latents: np.ndarray  # int [C]: random active U-latents
    control_weight: np.ndarray  # float32 [C, D]
    prompts: np.ndarray  # int [P]
    threshold: float  # the absolute |weight| threshold applied
    control_floor: float  # 95th percentile of |control_weight| (nan without controls)
    spearman: float  # rank correlation of weight and estimate over every u→d pair
    sign_agreement: float  # share of kept edges whose estimate has the measured sign (nan: none kept)
    score_spearman: float  # the same for the latent→score edges (U and D together)
    baseline_score: float  # mean refusal score of the prompts

    @property
    def n_edges(self) -> int:
        return int(self.kept.sum())

    def edges(self) -> list[tuple[int, int, float, float]]:
        """Kept edges (upstream latent, downstream latent, weight, estimate), strongest first."""
        rows = [
            (int(self.upstream[i]), int(self.downstream[j]), float(self.weight[i, j]), float(self.estimate[i, j]))
            for i, j in zip(*np.nonzero(self.kept))
        ]
        return sorted(rows, key=lambda edge: -abs(edge[2]))


def _csr(offsets: np.ndarray, values: np.ndarray, index: int) -> np.ndarray:
    return values[offsets[index] : offsets[index + 1]]


@dataclass(frozen=True, kw_only=True)
class CategoryResult(StageResult):
    """Refusal latents per harm category: shared, specific, and the transfer matrix.

    Per-category lists are CSR: category c's top latents by attribution are
    ``top_latents[top_offsets[c]:top_offsets[c+1]]`` (likewise the other lists)."""

    STAGE: ClassVar[str] = "categories"
    COMMAND: ClassVar[str] = "refusal-explorer analyze categories"
    layer: int
    source: str  # "study" or the table file the prompts came from
    categories: np.ndarray  # str [C]
    category_size: np.ndarray  # int [C]: prompts used per category
    n_harmless: int
    attribution: np.ndarray  # float32 [C, d_sae]: mean gradient × activation on the refusal score
    activation_diff: np.ndarray  # float32 [C, d_sae]: mean code − mean harmless code
    top_offsets: np.ndarray  # int64 [C+1]
    top_latents: np.ndarray  # int: top-k by attribution, positive only
    top_activation_offsets: np.ndarray
    top_activation_latents: np.ndarray  # int: top-k by activation difference
    shared_attribution: np.ndarray  # int: in every category's top-k by attribution
    shared_activation: np.ndarray
    specific_offsets: np.ndarray
    specific_latents: np.ndarray  # int: specific to each category, by attribution
    specific_activation_offsets: np.ndarray
    specific_activation_latents: np.ndarray
    control_specific: np.ndarray  # float32 [shuffles]: specific count with shuffled labels
    control_shared: np.ndarray  # float32 [shuffles]
    transfer_flips: np.ndarray  # int [C+1, C]: row a's set ablated, flips among column b's refused prompts (last row: random control)
    transfer_refused: np.ndarray  # int [C]: refused prompts per category at baseline
    transfer_drop: np.ndarray  # float32 [C+1, C]: mean refusal-score drop
    control_latents: np.ndarray  # int [k]: the random control set
    threshold: float
    top_k: int
    specific_ratio: float

    def top_of(self, index: int, measure: str = "attribution") -> np.ndarray:
        if measure == "attribution":
            return _csr(self.top_offsets, self.top_latents, index)
        return _csr(self.top_activation_offsets, self.top_activation_latents, index)

    def specific_of(self, index: int, measure: str = "attribution") -> np.ndarray:
        if measure == "attribution":
            return _csr(self.specific_offsets, self.specific_latents, index)
        return _csr(self.specific_activation_offsets, self.specific_activation_latents, index)

    def transfer_rates(self) -> np.ndarray:
        """Flip rate [C+1, C] (nan where a category has no refused prompt)."""
        refused = self.transfer_refused[None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(refused > 0, self.transfer_flips / np.maximum(refused, 1), np.nan)

    def transfer_interval(self, a: int, b: int) -> tuple[float, float]:
        return wilson(int(self.transfer_flips[a, b]), int(self.transfer_refused[b]))


@dataclass(frozen=True, kw_only=True)
class JailbreakResult(StageResult):
    """Plain vs wrapped harmful requests: refusal scores, refusal latents, damping tokens.

    Pairs are flat: pair m wraps plain prompt ``pair_plain[m]`` with wrapper ``pair_wrapper[m]``."""

    STAGE: ClassVar[str] = "jailbreak"
    COMMAND: ClassVar[str] = "refusal-explorer analyze jailbreak"
    layer: int
    latents: np.ndarray  # int [k]: the refusal latents followed
    wrappers: np.ndarray  # str [W]
    wrapper_kind: np.ndarray  # str [W]
    plain_text: np.ndarray  # str [N]
    wrapped_text: np.ndarray  # str [M]
    pair_plain: np.ndarray  # int [M]
    pair_wrapper: np.ndarray  # int [M]
    plain_score: np.ndarray  # float32 [N]: fast refusal score
    wrapped_score: np.ndarray  # float32 [M]
    plain_latents: np.ndarray  # float32 [N, k]: mean code over the post-instruction tokens
    wrapped_latents: np.ndarray  # float32 [M, k]
    token: np.ndarray  # str [T]: wrapper tokens, most damping (most negative summed attribution) first
    token_attribution: np.ndarray  # float32 [T]: summed input × gradient on Σ refusal latents
    token_count: np.ndarray  # int [T]: wrapped prompts containing it
    verified_token: np.ndarray  # str [V]: top damping tokens checked by occlusion
    verified_latent_change: np.ndarray  # float32 [V, k]: mean code change when the token is zeroed (positive: it damped the latent)
    verified_score_change: np.ndarray  # float32 [V]
    verified_rows: np.ndarray  # int [V]: prompts the check averaged over
    threshold: float
    source: str  # "templates" or the pairs file

    def rates(self) -> list[tuple[str, int, int]]:
        """(wrapper, refused, n) per wrapper at the study's threshold."""
        return [
            (str(name), int((self.wrapped_score[self.pair_wrapper == w] > self.threshold).sum()), int((self.pair_wrapper == w).sum()))
            for w, name in enumerate(self.wrappers)
        ]


@dataclass(frozen=True, kw_only=True)
class ProbeResult(StageResult):
    """Logistic probes (refusal latents, random latents, dense residual) in and out of distribution."""

    STAGE: ClassVar[str] = "probe"
    COMMAND: ClassVar[str] = "refusal-explorer analyze probe"
    layer: int
    latents: np.ndarray  # int [k]: the refusal latents
    random_latents: np.ndarray  # int [seeds, k]
    probes: np.ndarray  # str [3]: "refusal latents", "random latents", "dense residual"
    sets: np.ndarray  # str [T]: "in-distribution", "wrapped", "second data set"
    set_size: np.ndarray  # int [T]
    set_positives: np.ndarray  # int [T]: harmful prompts in the set
    accuracy: np.ndarray  # float32 [3, T] (random latents: mean over seeds)
    accuracy_interval: np.ndarray  # float32 [3, T, 2]: 95% bootstrap over test prompts
    auroc: np.ndarray  # float32 [3, T]
    auroc_interval: np.ndarray  # float32 [3, T, 2]
    random_seed_accuracy: np.ndarray  # float32 [seeds, T]
    random_seed_auroc: np.ndarray  # float32 [seeds, T]
    train_accuracy: np.ndarray  # float32 [3]
    n_train: int
    l2: float


PAPER2_RESULT_TYPES: tuple[type[StageResult], ...] = (GraphResult, CategoryResult, JailbreakResult, ProbeResult)


def refusal_latents(candidates: object, ranking: str, k: int) -> list[int]:
    """The top k latents of a ``CandidateResult`` by ``ranking``, or a one-line error when that
    ranking was not computed (IG skipped with --ig-steps 0)."""
    from explorer.candidates import top_latents
    from store.errors import InputError

    values = np.asarray(getattr(candidates, ranking, np.zeros(0)))
    if not values.size or not np.any(values):
        raise InputError(f"the candidates stage has no {ranking} scores (run it with --ig-steps > 0, or pick --ranking attribution)")
    return top_latents(candidates, ranking, k)  # type: ignore[arg-type]
