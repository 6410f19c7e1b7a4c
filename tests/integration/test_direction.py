"""Stage 1 (direction, candidates) on a tiny model with a planted refusal mechanism.

The planted model (``planted_model``): a trigger token "~" embeds as A·u for a unit vector u;
one attention head of block 0 attends uniformly and writes its mean u-content back along u;
every other write into the residual stream (embeddings, attention and MLP outputs) has u
projected out, and the unembedding row of "I" gets +B·u. So the u-component of the residual
is exactly "a trigger was seen", and it alone makes the model answer "I…": prompts with "~"
(harmful) are refused, the others not. The planted SAE at layer 1 has two redundant latents
(5 and 9) whose encoder and decoder rows are u, each reconstructing half of it.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.adapters import ADAPTERS
from cache.generation import RefusalDetector
from cache.models import LoadedModel
from cache.pipeline import CacheConfig, run_cache
from cache.prompts import Prompt, split_prompts
from explorer.candidates import CandidateConfig, run_candidates
from explorer.direction import DirectionConfig, choose, run_direction
from explorer.live import LiveContext, open_live
from explorer.results import CandidateResult, DirectionResult
from store import Study
from store.errors import InputError
from tests.tiny_models import make_tiny_model, make_tiny_sae
from tests.tiny_tokenizers import make_tiny_tokenizer

PLANTED_LATENTS = (5, 9)
SAE_LAYER = 1
TRIGGER, WRITE, READ = 2.0, 5.0, 10.0  # u in the trigger's embedding, head 0's v and o gains, "I"'s read gain
WORDS = "apple river stone cloud paper garden window music silver orange yellow forest candle bridge".split()


def planted_model(seed: int = 7) -> tuple[LoadedModel, torch.Tensor]:
    tokenizer = make_tiny_tokenizer("qwen2")
    model = make_tiny_model("qwen2", vocab_size=len(tokenizer))
    u = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    u /= u.norm()
    project = torch.eye(64) - torch.outer(u, u)
    trigger, twin = (tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "~,")
    refusal = ADAPTERS["qwen2"].refusal_token_ids(tokenizer)[0]
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.copy_(5.0 * embed @ project)  # a residual stream large next to u keeps RMSNorm scales steady
        embed[trigger] = embed[twin] + TRIGGER * u  # "~" is "," plus u
        for block in model.model.layers:  # nothing writes u, nothing reads it
            for linear in (block.self_attn.o_proj, block.mlp.down_proj):
                linear.weight.copy_(project @ linear.weight)
            for linear in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.mlp.gate_proj, block.mlp.up_proj):
                linear.weight.copy_(linear.weight @ project)
        model.lm_head.weight.copy_(model.lm_head.weight @ project)
        attn = model.model.layers[0].self_attn  # head 0 (and its kv head, shared with head 1)
        attn.q_proj.weight[:16] = 0
        attn.q_proj.bias[:16] = 0
        attn.v_proj.weight[:16] = 0
        attn.v_proj.bias[:16] = 0
        attn.v_proj.weight[0] = WRITE * u
        attn.o_proj.weight[:, :32] = 0
        attn.o_proj.weight[:, 0] = WRITE * u
        model.lm_head.weight[refusal] += READ * u
    return LoadedModel(model, tokenizer, ADAPTERS["qwen2"], "tiny-planted", "rev0"), u


def planted_sae(u: torch.Tensor):
    sae = make_tiny_sae("jumprelu", d_in=64, d_sae=128, layer=SAE_LAYER, threshold=1.0)
    with torch.no_grad():
        sae.b_dec.copy_(sae.b_dec - (sae.b_dec @ u) * u)  # so that prompts without u have none
        for latent in PLANTED_LATENTS:
            sae.W_enc[:, latent] = u
            sae.W_dec[latent] = 0.5 * u
            sae.b_enc[latent] = 0.0
            sae.threshold[latent] = 0.02
    return sae


def planted_prompts(n: int = 12) -> tuple[list[str], list[str]]:
    """Minimal pairs: the harmful prompt has the trigger where its harmless twin has a comma,
    drawn until every twin lands in the same train/val split as its pair, so that the
    difference in means sees the trigger and nothing else."""
    for seed in range(100_000):
        rng = np.random.default_rng(seed)
        text = lambda: " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))  # noqa: E731
        pairs = [(text(), text()) for _ in range(n)]
        harmful, harmless = [f"{a} ~ {b}" for a, b in pairs], [f"{a} , {b}" for a, b in pairs]
        prompts = [Prompt(text=t, label="harmful", dataset="t") for t in harmful] + [Prompt(text=t, label="harmless", dataset="t") for t in harmless]
        split = [p.split for p in split_prompts(prompts, holdout_fraction=0.25, seed=0)]
        if len(set(harmful)) == n and split[:n] == split[n:]:
            return harmful, harmless
    raise AssertionError("no paired split found")


def build_planted_study(root: Path) -> tuple[Path, LoadedModel, object, torch.Tensor]:
    loaded, u = planted_model()
    sae = planted_sae(u)
    sae.save_model(root / "sae")
    harmful, harmless = planted_prompts()
    (root / "harmful.json").write_text(json.dumps(harmful))
    (root / "harmless.json").write_text(json.dumps(harmless))
    config = CacheConfig(
        harmful=root / "harmful.json", harmless=root / "harmless.json", layers=(1, 2), out=root / "study.h5",
        saes=(f"{SAE_LAYER}={root / 'sae'}",), device="cpu", batch_size=12,
    )
    run_cache(config, loaded=loaded, progress=False)
    return config.out, loaded, sae, u


def planted_live(study: Study, loaded: LoadedModel, sae) -> LiveContext:
    live = open_live(study, loaded=loaded, saes={SAE_LAYER: sae})
    # the tiny model's text is random bytes: a refusal is a response that starts with "I"
    return dataclasses.replace(live, detector=RefusalDetector(phrases=("I",), window=1))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: extra threads only add synchronisation, which on a busy 2-core machine
    made these tests ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def shared_planted_study() -> tuple[Path, LoadedModel, object, torch.Tensor]:
    """One planted study per test session (the stage tests of several modules share it; each
    writes its results under its own run name)."""
    root = Path(tempfile.mkdtemp(prefix="planted-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_planted_study(root)


@pytest.fixture
def planted():
    return shared_planted_study()


def test_planted_model_refuses_exactly_the_triggered_prompts(planted) -> None:
    path, *_ = planted
    with Study(path) as study:
        refused = study.column("refusal_score") > study.meta.refusal_threshold
        assert refused.tolist() == (study.column("label") == "harmful").tolist()


def test_direction_recovers_the_planted_direction(planted) -> None:
    path, loaded, sae, u = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        result, summary = run_direction(study, live, DirectionConfig(positions=(-1, -2, -3), verify_generate=2), progress=False)
    assert np.linalg.norm(result.direction) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(result.direction @ u.numpy())) > 0.85  # chance level is ~0.1 in 64 dims
    assert len(result.refusal_drop) == 6 and set(result.candidate_layer.tolist()) == {1, 2}
    chosen = int(np.flatnonzero((result.candidate_layer == result.layer) & (result.candidate_position == result.position))[0])
    eligible = (result.kl <= 0.1) & (result.candidate_layer < 0.8 * 4)
    assert summary["note"] == "biggest drop among eligible candidates" and eligible[chosen]
    assert result.refusal_drop[chosen] == pytest.approx(result.refusal_drop[eligible].max())
    assert result.refusal_drop[chosen] > 5 and result.induce[chosen] > 1
    assert result.ablated_score < live.refusal_threshold < result.baseline_score
    assert result.flip_rate == 1.0 and summary["refused_by_generation"] == 3
    assert 0 <= result.argmax_change_rate <= 1  # the tiny model's near-uniform outputs flip argmax easily
    assert result.argmax_change.shape == result.kl.shape and ((result.argmax_change >= 0) & (result.argmax_change <= 1)).all()
    result.save(path, "t", config={"test": True})
    with Study(path) as study:
        loaded_back = DirectionResult.load(study, "t")
    np.testing.assert_array_equal(loaded_back.direction, result.direction)
    assert loaded_back.flip_rate == 1.0
    np.testing.assert_array_equal(loaded_back.argmax_change, result.argmax_change)
    assert result.random_argmax_change.shape == (3,) and (result.random_kl >= 0).all()
    changes = summary["first_token_changes"]
    assert sum(n for _, _, n in changes) == round(result.argmax_change_rate * summary["val_harmless"])
    assert all(before != after for before, after, _ in changes)
    np.testing.assert_array_equal(loaded_back.random_kl, result.random_kl)


def test_selection_rule_filters_kl_late_layers_and_induce() -> None:
    layers = np.array([0, 1, 2, 3, 4])
    drop = np.array([1.0, 5.0, 3.0, 2.0, 9.0], np.float32)
    kl = np.array([0.05, 0.5, 0.05, 0.01, 0.0], np.float32)
    induce = np.array([1.0, 1.0, -1.0, 1.0, 1.0], np.float32)
    config = DirectionConfig()
    assert choose(layers, drop, kl, induce, 5, config)[0] == 2  # 1: KL too big; 4: last 20% of layers
    assert choose(layers, drop, kl, induce, 5, DirectionConfig(min_induce=0.0))[0] == 3
    assert choose(layers, drop, kl, induce, 5, DirectionConfig(kl_threshold=1.0))[0] == 1
    index, note = choose(layers, drop, kl + 1, induce, 5, config)
    assert index == 1 and "no candidate met" in note
    changed = np.array([0.0, 0.0, 0.3, 0.02, 0.0], np.float32)
    strict = DirectionConfig(max_argmax_change=0.05)
    assert choose(layers, drop, kl, induce, 5, strict, changed)[0] == 3  # 2 changes 30% of first tokens
    index, note = choose(layers, drop, kl, induce, 5, strict, changed + 0.5)
    assert index == 1 and "argmax change ≤ 5%" in note
    with pytest.raises(InputError):
        DirectionConfig(max_layer_fraction=0)
    with pytest.raises(InputError):
        DirectionConfig(max_argmax_change=1.5)


def test_candidates_rank_the_planted_latents_first(planted) -> None:
    path, loaded, sae, u = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        config = CandidateConfig(layer=SAE_LAYER, top_k=10, ig_steps=8, positions="all")
        result, summary = run_candidates(study, live, u.numpy(), -1, config, progress=False)
    assert set(result.top_cosine[:2].tolist()) == set(PLANTED_LATENTS)
    assert result.cosine[list(PLANTED_LATENTS)] == pytest.approx(1.0, abs=1e-5)
    assert set(result.top_attribution[:2].tolist()) == set(PLANTED_LATENTS)
    assert set(np.argsort(-result.integrated_gradients)[:2].tolist()) == set(PLANTED_LATENTS)
    assert result.overlap >= 0.2 and result.attribution.shape == (128,)
    # completeness of integrated gradients: latents' shares + the error term's = the drop
    total = summary["ig_latent_share"] + summary["ig_error_share"]
    assert summary["ig_drop"] > 5 and total == pytest.approx(summary["ig_drop"], rel=0.1)
    result.save(path, "t", config=dataclasses.asdict(config))
    with Study(path) as study:
        assert CandidateResult.load(study, "t").overlap == result.overlap
