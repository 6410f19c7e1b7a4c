"""A synthetic study file with every analysis filled in, for the viewers' tests and benchmarks.

No model is involved: prompts are random words wrapped in a chat template, SAE codes are random
with a few planted "refusal latents" that fire on the end-of-instruction tokens of harmful
prompts, and the analysis results are consistent with those plants. It lets the TUI and the web
app be tested and timed on any size of study (e.g. 1M tokens × 65k latents) in seconds.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from explorer.results import (
    CandidateResult, DirectionResult, DormantResult, ExperimentResult, FMResult, GreedyResult,
)
from store import PromptBatch, StudySpec, StudyWriter

TEMPLATE_PREFIX = ("<|im_start|>", "user", "\n")
TEMPLATE_SUFFIX = ("<|im_end|>", "\n", "<|im_start|>", "assistant", "\n")
REFUSAL = "I'm sorry, but I can't assist with that."
COMPLIANCE = "Sure, here is a short overview of the steps involved."


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    n_prompts: int = 48
    """Prompts, half harmful and half harmless."""
    words_per_prompt: tuple[int, int] = (4, 16)
    """Range of instruction lengths in words (one token per word)."""
    d_model: int = 32
    d_sae: int = 512
    active_per_token: int = 12
    """Mean number of active latents per token."""
    layers: tuple[int, ...] = (6, 8)
    """Studied layers; the first carries SAE codes and the analyses."""
    refusal_latents: tuple[int, ...] = (3, 17, 42, 101, 250)
    """Latents planted to fire on harmful prompts' end-of-instruction tokens."""
    dormant_latents: tuple[int, ...] = (7, 77)
    """Latents that never fire at baseline and are reported as dormant."""
    harmless_latents: tuple[int, ...] = ()
    """Latents planted to fire only on harmless prompts: once each, on the first instruction
    token, at 1 + prompt index / n_prompts (so every prompt's peak differs)."""
    seed: int = 0
    batch_prompts: int = 2048

    def __post_init__(self) -> None:
        if self.n_prompts < 4 or self.d_sae < 300 or not self.layers:
            raise ValueError("a synthetic study needs ≥ 4 prompts, ≥ 300 latents and a layer")


def _vocab() -> tuple[str, ...]:
    words = [f"{a}{b}" for a in ("ka", "lo", "mi", "su", "te", "ra", "po", "ne") for b in ("n", "r", "sh", "ta", "lo", "mi", "ko", "x")]
    return TEMPLATE_PREFIX + TEMPLATE_SUFFIX[:2] + ("assistant",) + tuple(f" {w}" for w in words)


def _batch(config: SyntheticConfig, rng: np.random.Generator, start: int, stop: int) -> PromptBatch:
    vocab = _vocab()
    n = stop - start
    harmful = (np.arange(start, stop) % 2) == 0
    token_ids, texts = [], []
    word_ids = np.arange(6, len(vocab))
    prefix = [vocab.index(t) for t in TEMPLATE_PREFIX]
    suffix = [0 if t == "<|im_start|>" else vocab.index(t) for t in TEMPLATE_SUFFIX]
    for _ in range(n):
        words = rng.choice(word_ids, rng.integers(*config.words_per_prompt))
        texts.append("".join(vocab[w] for w in words).strip())
        token_ids.append(np.array(prefix + list(words) + suffix, np.int32))
    lengths = np.array([len(t) for t in token_ids])
    n_tokens = int(lengths.sum())
    per_token = rng.poisson(config.active_per_token, n_tokens).clip(1, config.d_sae // 4)
    indptr = np.concatenate([[0], np.cumsum(per_token)]).astype(np.int64)
    dormant = np.array(config.dormant_latents)
    indices = rng.integers(0, config.d_sae, int(indptr[-1])).astype(np.int32)
    indices[np.isin(indices, dormant)] += 1  # dormant latents stay silent at baseline
    values = rng.gamma(2.0, 0.5, len(indices)).astype(np.float32)
    # planted refusal latents: strong on the last template tokens of harmful prompts
    ends = np.cumsum(lengths)
    for p in np.flatnonzero(harmful):
        for row in range(ends[p] - 3, ends[p]):
            slot = slice(indptr[row], indptr[row] + min(len(config.refusal_latents), per_token[row]))
            chosen = np.array(config.refusal_latents[: slot.stop - slot.start], np.int32)
            indices[slot] = chosen
            values[slot] = 4.0 + rng.random(len(chosen))
    if config.harmless_latents:
        taken = {*config.harmless_latents, *config.dormant_latents, *config.refusal_latents}
        filler = next(j for j in range(config.d_sae - 1, 0, -1) if j not in taken)
        indices[np.isin(indices, config.harmless_latents)] = filler  # silent elsewhere
        starts = ends - lengths
        for p in np.flatnonzero(~harmful):
            row = starts[p] + len(TEMPLATE_PREFIX)
            chosen = np.array(config.harmless_latents[: per_token[row]], np.int32)
            indices[indptr[row] : indptr[row] + len(chosen)] = chosen
            values[indptr[row] : indptr[row] + len(chosen)] = 1.0 + (start + p) / config.n_prompts
    # CSR rows must hold each latent once, sorted
    rows = np.repeat(np.arange(n_tokens), per_token)
    key = rows * config.d_sae + indices
    key, first = np.unique(key, return_index=True)
    rows, indices, values = key // config.d_sae, (key % config.d_sae).astype(np.int32), values[first]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_tokens))]).astype(np.int64)
    score = np.where(harmful, rng.normal(1.5, 0.7, n), rng.normal(-3.0, 0.7, n)).astype(np.float32)
    resid_rows = n * len(TEMPLATE_SUFFIX)
    return PromptBatch(
        text=texts, label=["harmful" if h else "harmless" for h in harmful], dataset=["synthetic"] * n,
        split=["train" if (start + i) % 5 else "val" for i in range(n)], category=[""] * n,
        generation=[REFUSAL if s > 0 else COMPLIANCE for s in score], token_ids=token_ids,
        refusal_score=score, refused=(score > 0).astype(np.int8),
        resid={layer: rng.normal(size=(resid_rows, config.d_model)).astype(np.float16) for layer in config.layers},
        codes={config.layers[0]: (indptr, indices, values)},
    )


def make_synthetic_study(path: Path, config: SyntheticConfig = SyntheticConfig(), *, run: str = "default") -> Path:
    """Write a complete synthetic study (codes, statistics and every analysis stage) to ``path``."""
    rng = np.random.default_rng(config.seed)
    layer = config.layers[0]
    decoder = rng.normal(size=(config.d_sae, config.d_model)).astype(np.float32)
    vocab = _vocab()
    spec = StudySpec(
        model_id="synthetic/tiny-chat", model_revision="synthetic", layers=config.layers, d_model=config.d_model,
        n_positions=len(TEMPLATE_SUFFIX), vocab=vocab, sae_layers={layer: config.d_sae},
        sae_info={layer: {"release": "synthetic", "sae_id": f"layer_{layer}", "architecture": "topk", "d_sae": config.d_sae}},
        sae_arrays={layer: {
            "decoder_norm": np.linalg.norm(decoder, axis=1).astype(np.float32),
            "logit_lens_top": rng.integers(6, len(vocab), (config.d_sae, 8)).astype(np.int32),
            "logit_lens_bottom": rng.integers(6, len(vocab), (config.d_sae, 8)).astype(np.int32),
            # the lens as values: latent j promotes its top tokens by j/100 + 1, 0.9, … (suppresses: the negatives)
            "logit_lens_top_value": (np.arange(config.d_sae)[:, None] / 100 + np.linspace(1, 0.3, 8)).astype(np.float32),
            "logit_lens_bottom_value": -(np.arange(config.d_sae)[:, None] / 100 + np.linspace(1, 0.3, 8)).astype(np.float32),
        }},
        identity={"synthetic": config.seed}, config={"synthetic": True, "seed": config.seed}, refusal_threshold=0.0,
    )
    with StudyWriter.create(path, spec, overwrite=True) as writer:
        for start in range(0, config.n_prompts, config.batch_prompts):
            writer.append(_batch(config, rng, start, min(config.n_prompts, start + config.batch_prompts)))
        writer.finalize()
    _write_analyses(path, run, config, rng, decoder)
    return path


def _write_analyses(path: Path, run: str, config: SyntheticConfig, rng: np.random.Generator, decoder: np.ndarray) -> None:
    layer, planted = config.layers[0], np.array(config.refusal_latents)
    direction = decoder[planted].sum(0)
    direction /= np.linalg.norm(direction)
    grid = [(lay, pos) for lay in config.layers for pos in range(-len(TEMPLATE_SUFFIX), 0)]
    drop = rng.random(len(grid)).astype(np.float32)
    drop[0] = 5.0
    DirectionResult(
        layer=layer, position=grid[0][1], direction=direction.astype(np.float32),
        candidate_layer=np.array([g[0] for g in grid]), candidate_position=np.array([g[1] for g in grid]),
        refusal_drop=drop, kl=(rng.random(len(grid)) * 0.2).astype(np.float32),
        induce=rng.random(len(grid)).astype(np.float32), baseline_score=1.5, ablated_score=-3.5,
        flip_rate=0.9, argmax_change_rate=0.125, random_argmax_change=np.array([0.04, 0.08], np.float32),
        random_kl=np.array([0.01, 0.02], np.float32),
    ).save(path, run, config={"synthetic": True})
    cosine = (decoder @ direction / np.linalg.norm(decoder, axis=1)).astype(np.float32)
    attribution = (rng.normal(0, 0.05, config.d_sae)).astype(np.float32)
    attribution[planted] += 1.0
    k = 20
    top_cos, top_attr = np.argsort(-cosine)[:k], np.argsort(-attribution)[:k]
    CandidateResult(
        layer=layer, cosine=cosine, attribution=attribution, integrated_gradients=attribution * 0.9,
        top_cosine=top_cos, top_attribution=top_attr, overlap=len(set(top_cos) & set(top_attr)) / k,
    ).save(path, run, config={"k": k})
    sets = [planted[:3], planted[1:4], planted[[0, 2, 4]]]
    sizes = [np.arange(k, len(s) - 1, -1) for s in sets]
    GreedyResult(
        layer=layer, k=k, threshold=0.0, order="ascending", prompt=np.array([0, 2, 4]),
        set_offsets=np.concatenate([[0], np.cumsum([len(s) for s in sets])]), set_latents=np.concatenate(sets),
        baseline_score=np.array([1.6, 1.4, 2.0], np.float32), start_score=np.full(3, -4.0, np.float32),
        final_score=np.array([-0.5, -0.3, -0.8], np.float32), flipped=np.array([1, 1, 0], np.int8),
        baseline_generation=np.array([REFUSAL] * 3), ablated_generation=np.array([COMPLIANCE, COMPLIANCE, REFUSAL]),
        trajectory_offsets=np.concatenate([[0], np.cumsum([len(s) for s in sizes])]),
        trajectory_size=np.concatenate(sizes),
        trajectory_score=np.concatenate([np.linspace(-4.0, -0.5, len(s)) for s in sizes]).astype(np.float32),
        trajectory_removed=np.concatenate([np.r_[-1, rng.integers(0, config.d_sae, len(s) - 1)] for s in sizes]),
    ).save(path, run, config={"k": k})
    latents = np.unique(np.concatenate([planted, rng.choice(config.d_sae, 11, replace=False)]))
    n = len(latents)
    w, V = rng.normal(0, 0.3, n), rng.normal(0, 0.3, (n, 4))
    w[np.isin(latents, planted)] -= 1.0
    design = (rng.random((256, n)) < 0.5).astype(np.int8)
    design[0], design[1] = 0, 1
    response = 1.5 + design @ w + 0.5 * (((design @ V) ** 2).sum(1) - (design @ V**2).sum(1))
    ExperimentResult(
        layer=layer, scheme="bernoulli(p=0.5)+all-on+all-off", latents=latents, in_minimal_set=np.isin(latents, planted),
        design=design, response=response.astype(np.float32), prompts=np.array([0, 2, 4]),
    ).save(path, run, config={"n_experiments": 256})
    FMResult(
        layer=layer, latents=latents, w0=1.5, w=w.astype(np.float32), V=V.astype(np.float32),
        interaction_share=rng.random(n).astype(np.float32), r2_train=0.97, r2_holdout=0.94, r2_linear_holdout=0.71,
        verdict="interactions", rank=4, folds=5, confidence=0.95, min_gain=0.01,
        verdict_text="interactions explain 23.0% more variance than additive effects (95% CI 19.0–27.0%)",
        r2_cv=np.array([0.94, 0.71, -0.01]), r2_cv_low=np.array([0.92, 0.66, -0.03]), r2_cv_high=np.array([0.96, 0.75, 0.0]),
        gain=0.23, gain_low=0.19, gain_high=0.27, pair_i=latents[[0, 1]], pair_j=latents[[2, 3]],
        pair_fm=np.array([0.8, -0.4], np.float32), pair_measured=np.array([[0.7, 0.9, 0.6], [0.1, 0.2, 0.05]], np.float32),
        pair_prompts=np.array([0, 2, 4]),
    ).save(path, run, config={"rank": 4})
    dormant = np.array(config.dormant_latents)
    offsets = np.arange(len(dormant) + 1) * 2
    DormantResult(
        source_layer=layer, latent=dormant, layer=np.full(len(dormant), layer),
        baseline_activation=np.zeros(len(dormant), np.float32), ablated_activation=np.array([2.5, 1.2], np.float32)[: len(dormant)],
        refusal_effect=np.array([-0.8, -0.1], np.float32)[: len(dormant)], restores_refusal=np.array([True, False])[: len(dormant)],
        position_offsets=offsets, position=np.tile([0, -1], len(dormant)), position_token=np.tile(["<|im_start|>", "\n"], len(dormant)),
        prompt=np.zeros(len(dormant), np.int64), context=np.array(["set 0", "set 0 − 3"], dtype=object)[: len(dormant)],
        context_score=np.array([-0.5, 0.4], np.float32)[: len(dormant)], context_flips=np.array([True, False])[: len(dormant)],
        with_latent_score=np.array([-1.3, 0.3], np.float32)[: len(dormant)],
        clamp_effect=np.array([0.6, np.nan], np.float32)[: len(dormant)], raises_refusal=np.array([True, False])[: len(dormant)],
        backup=np.array([True, False])[: len(dormant)], redundant=np.zeros(len(dormant), bool), threshold=0.0, effect_threshold=0.05,
        context_prompt=np.zeros(2, np.int64), context_label=np.array(["set 0", "set 0 − 3"], dtype=object),
        context_baseline=np.full(2, 1.6, np.float32), context_ablated=np.array([-0.5, 0.4], np.float32),
        context_woken=np.ones(2, np.int64),
    ).save(path, run, config={"synthetic": True})
    _write_why(path, run, config, rng)


def copy_without(source: Path, path: Path, *groups: str) -> Path:
    """A copy of the study ``source`` at ``path`` with ``groups`` deleted (a study that lacks them)."""
    shutil.copy(source, path)
    with h5py.File(path, "r+") as file:
        for group in groups:
            del file[group]
    return path


def make_greedy(layer: int, prompts: list[int], sets: list[list[int]], *, threshold: float = 100.0, final: list[float] | None = None) -> GreedyResult:
    """A hand-written greedy result: set s was found on prompt ``prompts[s]``."""
    n = len(sets)
    final_score = np.array(final if final is not None else [threshold - 1.0] * n, np.float32)
    return GreedyResult(
        layer=layer, k=8, threshold=threshold, order="ascending", prompt=np.array(prompts, np.int64),
        set_offsets=np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64),
        set_latents=np.concatenate([np.array(s, np.int64) for s in sets]),
        baseline_score=np.zeros(n, np.float32), start_score=np.zeros(n, np.float32), final_score=final_score,
        flipped=np.full(n, -1, np.int8), baseline_generation=np.array([""] * n, dtype=object),
        ablated_generation=np.array([""] * n, dtype=object), trajectory_offsets=np.arange(n + 1, dtype=np.int64),
        trajectory_size=np.array([len(s) for s in sets], np.int64), trajectory_score=final_score.copy(),
        trajectory_removed=np.full(n, -1, np.int64),
    )


def _write_why(path: Path, run: str, config: SyntheticConfig, rng: np.random.Generator) -> None:
    """Per-prompt attribution rankings over the latents active on each prompt's post-instruction
    tokens (as the real stage gives: a silent latent has no attribution): on a harmful prompt the
    planted latents lead, rotated so that prompts differ; a harmless prompt's carry little."""
    from explorer.results import WhyResult
    from store import Study

    planted = list(config.refusal_latents)
    latents, attribution, offsets = [], [], [0]
    with Study(path) as study:
        codes, n_post = study.codes(config.layers[0]), len(TEMPLATE_SUFFIX)
        for p in range(config.n_prompts):
            indptr, indices, values = codes.prompt_codes(p)
            start = int(indptr[-n_post - 1] - indptr[0])
            peak: dict[int, float] = {}
            for i, v in zip(indices[start:].tolist(), values[start:].tolist()):
                peak[i] = max(peak.get(i, 0.0), v)
            active = sorted(peak, key=lambda i: -peak[i])  # strongest first, as attribution tends to be
            harmful = p % 2 == 0  # _batch alternates harmful, harmless
            shift = p % len(planted)
            lead = [i for i in planted[shift:] + planted[:shift] if i in active] if harmful else []
            rest = [i for i in active if i not in lead]
            ids = lead + rest[:6]
            values = np.sort(rng.random(len(ids)).astype(np.float32))[::-1] * (2.0 if harmful else 0.2)
            latents += ids
            attribution += values.tolist()
            offsets.append(len(latents))
    n = config.n_prompts
    WhyResult(
        layer=config.layers[0], positions=len(TEMPLATE_SUFFIX), prompt=np.arange(n), offsets=np.array(offsets, np.int64),
        latent=np.array(latents, np.int64), attribution=np.array(attribution, np.float32),
        activation=np.abs(np.array(attribution, np.float32)) * 3, score=np.linspace(2, -2, n).astype(np.float32),
        total=np.linspace(2, -2, n).astype(np.float32),
    ).save(path, run, config={"synthetic": True})

