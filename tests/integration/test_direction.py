"""Stage 1 (direction, candidates) on a tiny model with a planted refusal mechanism
(tests/planted.py describes the mechanism)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from explorer.candidates import CandidateConfig, run_candidates
from explorer.direction import DirectionConfig, choose, run_direction
from explorer.results import CandidateResult, DirectionResult
from store import Study
from store.errors import InputError
from tests.planted import PLANTED_LATENTS, SAE_LAYER, planted_live

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    assert summary["random_argmax_change_median"] == pytest.approx(float(np.median(result.random_argmax_change)))
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
    with pytest.raises(InputError):
        DirectionConfig(max_layer_fraction=0)
    assert not hasattr(DirectionConfig(), "max_argmax_change")  # no fixed side-effect bar: read it against the random controls


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


def test_the_summary_says_when_flips_were_not_counted_by_generation() -> None:
    from explorer.cli.stages.direction import generation_clause

    facts = {"verified": True, "refused_by_generation": 29, "flip_rate": 27 / 29}
    assert generation_clause(facts) == "generation flips 93% of 29 refused; "
    assert generation_clause(facts | {"verified": False}).startswith("not verified by generation")
    assert generation_clause(facts | {"refused_by_generation": 0}).startswith("no val prompt refused by generation")
