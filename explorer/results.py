"""Typed results of the explorer stages, as stored under /analysis/<run>/<stage>.

Each result is a frozen dataclass: array fields become datasets, scalar fields JSON attributes.
The analysis stages write them; the TUI and web app read them. ``load(study, run)`` returns None
when a stage has not been run, so a viewer can say which command produces it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from explorer.fm import interaction_matrix, top_pairs
from store import Study, read_stage, write_stage

T = TypeVar("T", bound="StageResult")


@dataclass(frozen=True, kw_only=True)
class StageResult:
    STAGE: ClassVar[str] = ""
    COMMAND: ClassVar[str] = ""  # the CLI command that produces it, for "not run yet" messages

    def save(self, path: Path, run: str, *, config: dict[str, Any]) -> None:
        arrays, attrs = {}, {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            (arrays if isinstance(value, np.ndarray) else attrs)[field.name] = value
        write_stage(path, run, self.STAGE, arrays=arrays, attrs=attrs, config=config)

    @classmethod
    def load(cls: type[T], study: Study, run: str) -> T | None:
        stage = read_stage(study.file, run, cls.STAGE)
        if stage is None:
            return None
        names = {field.name for field in dataclasses.fields(cls)}
        values = {name: value for name, value in {**stage.attrs, **stage.arrays}.items() if name in names}
        return cls(**values)

    @classmethod
    def config_of(cls, study: Study, run: str) -> dict[str, Any]:
        stage = read_stage(study.file, run, cls.STAGE)
        return {} if stage is None else stage.config


@dataclass(frozen=True, kw_only=True)
class DirectionResult(StageResult):
    """Difference-in-means refusal directions and the chosen one (Arditi et al.)."""

    STAGE: ClassVar[str] = "direction"
    COMMAND: ClassVar[str] = "refusal-explorer analyze direction"
    layer: int  # chosen layer
    position: int  # chosen post-instruction position, negative from the end (-1 = last token)
    direction: np.ndarray  # float32 [d_model], unit norm
    candidate_layer: np.ndarray  # int [n_candidates]: every (layer, position) scored
    candidate_position: np.ndarray  # int [n_candidates]
    refusal_drop: np.ndarray  # float32 [n_candidates]: mean fall of the refusal score when ablated
    kl: np.ndarray  # float32 [n_candidates]: KL on harmless prompts when ablated
    induce: np.ndarray  # float32 [n_candidates]: mean rise of the score on harmless when added
    baseline_score: float  # mean refusal score of the held-out harmful prompts
    ablated_score: float  # the same with the chosen direction ablated
    flip_rate: float = float("nan")  # held-out harmful prompts refused by generation that comply when ablated (nan: not checked)
    argmax_change_rate: float = float("nan")  # held-out harmless prompts whose first-token argmax changes when ablated
    # float32 [n_candidates]: the same share per candidate (empty in runs made before it was recorded)
    argmax_change: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    # float32 [n_controls]: the argmax-change share and KL of random unit directions projected out
    random_argmax_change: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    random_kl: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass(frozen=True, kw_only=True)
class CandidateResult(StageResult):
    """Every latent of one layer scored against the direction."""

    STAGE: ClassVar[str] = "candidates"
    COMMAND: ClassVar[str] = "refusal-explorer analyze candidates"
    layer: int
    cosine: np.ndarray  # float32 [d_sae]: cosine of decoder row with the direction
    attribution: np.ndarray  # float32 [d_sae]: gradient × activation on the refusal score
    integrated_gradients: np.ndarray  # float32 [d_sae]: IG from clean to direction-ablated codes
    top_cosine: np.ndarray  # int [k]: latents by descending cosine
    top_attribution: np.ndarray  # int [k]: latents by descending attribution
    overlap: float  # |top_cosine ∩ top_attribution| / k


@dataclass(frozen=True, kw_only=True)
class GreedyResult(StageResult):
    """Minimal latent sets whose ablation flips refusal, one per searched prompt (or prompt set).

    Sets and trajectories are stored as CSR: set s has latents
    ``set_latents[set_offsets[s]:set_offsets[s+1]]`` and trajectory steps
    ``trajectory_*[trajectory_offsets[s]:trajectory_offsets[s+1]]``.
    """

    STAGE: ClassVar[str] = "greedy"
    COMMAND: ClassVar[str] = "refusal-explorer analyze greedy"
    layer: int
    k: int  # candidates the search started from
    threshold: float  # refusal score below which a prompt counts as flipped
    order: str  # "ascending" or "thresholded"
    prompt: np.ndarray  # int [n_sets]: the prompt each set was searched on
    set_offsets: np.ndarray  # int64 [n_sets+1]
    set_latents: np.ndarray  # int [total]
    baseline_score: np.ndarray  # float32 [n_sets]: nothing ablated
    start_score: np.ndarray  # float32 [n_sets]: all k candidates ablated
    final_score: np.ndarray  # float32 [n_sets]: the minimal set ablated
    flipped: np.ndarray  # int8 [n_sets]: generation with the set ablated complies (1), refuses (0), -1 not checked
    baseline_generation: np.ndarray  # str [n_sets]
    ablated_generation: np.ndarray  # str [n_sets]
    trajectory_offsets: np.ndarray  # int64 [n_sets+1]
    trajectory_size: np.ndarray  # int [steps]: set size after the step
    trajectory_score: np.ndarray  # float32 [steps]: refusal score with that set ablated
    trajectory_removed: np.ndarray  # int [steps]: latent removed at the step (-1: the start)
    joint_prompts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    # int [m]: when non-empty, the last set was searched jointly on these prompts (its prompt is the first)

    def latents_of(self, index: int) -> np.ndarray:
        return self.set_latents[self.set_offsets[index] : self.set_offsets[index + 1]]

    def flips(self) -> np.ndarray:
        """bool [n_sets]: ablating the set brings the refusal score below the threshold. A search
        whose top-k candidates, all ablated, leave the score above it keeps all k: no set at all."""
        return np.asarray(self.final_score < self.threshold, bool)

    def per_prompt(self) -> np.ndarray:
        """bool [n_sets]: searched on one prompt (False for the joint search, if any)."""
        single = np.ones(len(self.prompt), bool)
        if len(self.joint_prompts) and len(single):
            single[-1] = False
        return single

    def counts(self, refused_prompts: int) -> dict[str, int]:
        """What the searches found, as ``info --json`` reports it: flipping sets only."""
        single, flips = self.per_prompt(), self.flips()
        return {"refused_prompts": int(refused_prompts), "searched": int(len(set(self.prompt[single].tolist()))),
                "flipping_sets": int((single & flips).sum()),
                "confirmed_by_generation": int((single & flips & (self.flipped == 1)).sum()), "k": int(self.k)}

    def trajectory_of(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = slice(self.trajectory_offsets[index], self.trajectory_offsets[index + 1])
        return self.trajectory_size[s], self.trajectory_score[s], self.trajectory_removed[s]


@dataclass(frozen=True, kw_only=True)
class ExperimentResult(StageResult):
    """Random ablation experiments: which latents were ablated, and the refusal score."""

    STAGE: ClassVar[str] = "experiments"
    COMMAND: ClassVar[str] = "refusal-explorer analyze experiments"
    layer: int
    scheme: str  # how subsets were sampled, e.g. "bernoulli(p=0.5)+all-on+all-off"
    latents: np.ndarray  # int [n_latents]: the design matrix's columns
    in_minimal_set: np.ndarray  # bool [n_latents]
    design: np.ndarray  # int8 [n_experiments, n_latents]: 1 = ablated
    response: np.ndarray  # float32 [n_experiments]: mean refusal score over the prompts
    prompts: np.ndarray  # int [n_prompts]: the prompts the scores average over
    # float32 [n_experiments, n_prompts]: each prompt's score (empty in runs made before it was recorded)
    prompt_response: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))


@dataclass(frozen=True, kw_only=True)
class FMResult(StageResult):
    """Second-order factorization machine fitted to the experiments, compared with additive effects.

    ``verdict`` is "interactions" when the FM's cross-validated R² beats the linear model's by
    more than ``min_gain`` at the interval's lower end, else "additive" ("" in runs made before
    the comparison existed). Pairs (``pair_*``) are stored only with the first verdict, each
    with its measured interaction f(ij) − f(i) − f(j) + f(∅) per prompt."""

    STAGE: ClassVar[str] = "fm"
    COMMAND: ClassVar[str] = "refusal-explorer analyze fm"
    MODELS: ClassVar[tuple[str, ...]] = ("fm", "linear", "mean")
    layer: int
    latents: np.ndarray  # int [n]
    w0: float
    w: np.ndarray  # float32 [n]
    V: np.ndarray  # float32 [n, k]
    interaction_share: np.ndarray  # float32 [n]: part of each latent's effect due to interactions
    r2_train: float  # FM fitted on every experiment, R² on them
    r2_holdout: float  # FM cross-validated R² (out-of-fold predictions)
    r2_linear_holdout: float  # linear model cross-validated R² on the same folds
    verdict: str = ""
    verdict_text: str = ""  # the verdict in words, with its interval
    rank: int = 0
    folds: int = 0
    confidence: float = float("nan")
    min_gain: float = float("nan")
    r2_cv: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # float64 [3]: fm, linear, mean
    r2_cv_low: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # float64 [3]: interval ends
    r2_cv_high: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    gain: float = float("nan")  # R²_fm − R²_linear, cross-validated
    gain_low: float = float("nan")
    gain_high: float = float("nan")
    pair_i: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # int [p]: latent ids
    pair_j: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    pair_fm: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))  # float32 [p]: <v_i, v_j>
    # float32 [p, P]: measured f(ij) − f(i) − f(j) + f(∅) on each prompt
    pair_measured: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    pair_prompts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # int [P]

    def interaction(self) -> np.ndarray:
        """<v_i, v_j> for every pair [n, n], zero diagonal."""
        return interaction_matrix(self.V)

    def top_pairs(self, n: int = 10, sign: str = "abs") -> list[tuple[int, int, float]]:
        """Strongest FM interactions as (latent, latent, value); sign: positive, negative or abs.
        Unverified: what the viewers and the CLI report are ``verified_pairs``."""
        return [(int(self.latents[i]), int(self.latents[j]), value) for i, j, value in top_pairs(self.V, n, sign)]

    def verified_pairs(self) -> list[dict[str, Any]]:
        """The reported pairs: FM value beside the measured interaction (mean, spread over
        prompts, per prompt) and whether their signs agree."""
        out = []
        for p in range(len(self.pair_i)):
            values = np.asarray(self.pair_measured[p], np.float64)
            mean = float(values.mean()) if values.size else float("nan")
            spread = float(values.std(ddof=1)) if values.size > 1 else float("nan")
            fm = float(self.pair_fm[p])
            out.append({
                "i": int(self.pair_i[p]), "j": int(self.pair_j[p]), "fm": fm, "measured": mean, "measured_sd": spread,
                "measured_per_prompt": [float(v) for v in values], "prompts": [int(q) for q in self.pair_prompts],
                "sign_agrees": bool(np.sign(fm) == np.sign(mean)),
            })
        return out


@dataclass(frozen=True, kw_only=True)
class DormantResult(StageResult):
    """Latents silent at baseline that wake in a context (a set or the direction ablated), each
    tested causally: dormant backups (in flipping contexts) and redundant latents (in sets that
    do not flip). One row per (prompt, context, layer, latent); ``context_*`` arrays list every
    context searched, woken latents or not, so "none found" is on record."""

    STAGE: ClassVar[str] = "dormant"
    COMMAND: ClassVar[str] = "refusal-explorer analyze dormant"
    source_layer: int  # where the sets were ablated
    latent: np.ndarray  # int [m]
    layer: np.ndarray  # int [m]: layer of the latent (source or later)
    baseline_activation: np.ndarray  # float32 [m]: max over the prompt's tokens, nothing ablated
    ablated_activation: np.ndarray  # float32 [m]: the same in the context (woken)
    refusal_effect: np.ndarray  # float32 [m]: f(context + latent) − f(context): suppressing it as well
    restores_refusal: np.ndarray  # bool [m]: in a flipping context, suppressing it lowers the score by > effect_threshold
    position_offsets: np.ndarray  # int64 [m+1]: CSR into position/position_token
    position: np.ndarray  # int [total]: token positions where it fires when awake
    position_token: np.ndarray  # str [total]: those tokens (e.g. BOS, template tokens)
    prompt: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    # int [m]: the prompt each row was measured on; empty: not recorded
    # the fields below are empty / nan in runs made before the causal tests existed
    context: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))  # str [m]: "set 0", "set 0 − 17", "joint", "direction"
    context_score: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))  # float32 [m]: f(context)
    context_flips: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))  # bool [m]: f(context) < threshold
    with_latent_score: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))  # float32 [m]: f(context + latent)
    clamp_effect: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    # float32 [m]: f(latent clamped to its woken activation, nothing ablated) − f(∅); nan: not tested (context does not flip)
    raises_refusal: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))  # bool [m]: clamp_effect > effect_threshold
    backup: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))  # bool [m]: restores_refusal or raises_refusal
    redundant: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))  # bool [m]: context does not flip, context + latent does
    threshold: float = float("nan")  # flip threshold (the greedy stage's)
    effect_threshold: float = float("nan")  # score change that counts (restore_threshold)
    context_prompt: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # int [c]: every context searched
    context_label: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))  # str [c]
    context_baseline: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))  # float32 [c]: f(∅) on its prompt
    context_ablated: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))  # float32 [c]: f(context)
    context_woken: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # int [c]: woken latents tested


@dataclass(frozen=True, kw_only=True)
class WhyResult(StageResult):
    """Per prompt, its latents ranked by attribution to its own refusal score (explorer/why.py).

    CSR over prompts: prompt ``prompt[i]`` has latents ``latent[offsets[i]:offsets[i+1]]``,
    strongest |attribution| first.
    """

    STAGE: ClassVar[str] = "why"
    COMMAND: ClassVar[str] = "refusal-explorer analyze why"
    layer: int
    positions: int  # post-instruction tokens summed over (the last ones of each prompt)
    prompt: np.ndarray  # int [n]
    offsets: np.ndarray  # int64 [n+1]
    latent: np.ndarray  # int [total]
    attribution: np.ndarray  # float32 [total]: Σ over those tokens of activation × ∂score/∂activation
    activation: np.ndarray  # float32 [total]: Σ over those tokens of the activation
    score: np.ndarray  # float32 [n]: the live model's refusal score of the prompt
    total: np.ndarray  # float32 [n]: Σ of every latent's attribution (not only the top ones)

    def ranking(self, prompt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(latents, attribution, activation) of a prompt, strongest first; None if not ranked."""
        hits = np.flatnonzero(self.prompt == prompt)
        if not len(hits):
            return None
        s = slice(self.offsets[hits[0]], self.offsets[hits[0] + 1])
        return self.latent[s], self.attribution[s], self.activation[s]


RESULT_TYPES: tuple[type[StageResult], ...] = (
    DirectionResult, CandidateResult, GreedyResult, ExperimentResult, FMResult, DormantResult, WhyResult,
)
