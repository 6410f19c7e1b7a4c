"""The live backend of the web app on a tiny model: scores, streamed generation, edits."""

from pathlib import Path

import numpy as np
import pytest

from cache.generation import greedy_generate
from cache.sae import load_sae
from explorer.live import open_live
from explorer.live_model import StudyLiveModel
from explorer.results import DirectionResult
from store import Study
from store.errors import InputError
from tests.tiny_models import TINY_HARMFUL as HARMFUL, TINY_HARMLESS as HARMLESS, cache_tiny_study, make_tiny_sae, tiny_loaded as tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyLiveModel, Path]:
    tmp = tmp_path_factory.mktemp("live")
    loaded = tiny("qwen2")
    path = cache_tiny_study(tmp, loaded, HARMFUL, HARMLESS, layers=(1,), saes={1: make_tiny_sae("topk", d_in=64, d_sae=128, layer=1)})
    with Study(path) as study:
        context = open_live(study, loaded=loaded, saes={1: load_sae(str(tmp / "sae1"))})
    return StudyLiveModel(context), path


def test_baseline_score_is_the_cached_fast_score(setup) -> None:
    model, path = setup
    with Study(path) as study:
        for index, text in enumerate(HARMFUL[:2]):
            assert model.refusal_score(text, edits=[]) == pytest.approx(study.prompt(index).refusal_score, abs=1e-4)


def test_streamed_generation_equals_greedy_generate(setup) -> None:
    model, _ = setup
    loaded = model.live.loaded
    pieces = list(model.generate(HARMLESS[0], edits=[], max_new_tokens=6))
    expected = greedy_generate(loaded.model, loaded.tokenizer, [loaded.adapter.encode(loaded.tokenizer, HARMLESS[0])], 6)[0]
    assert "".join(pieces).rstrip() == expected


def test_latent_edits_change_the_score_and_are_validated(setup) -> None:
    model, _ = setup
    baseline = model.refusal_score(HARMFUL[1], edits=[])
    everything = list(range(128))
    ablated = model.refusal_score(HARMFUL[1], edits=[{"layer": 1, "latents": everything, "mode": "ablate"}])
    clamped = model.refusal_score(HARMFUL[1], edits=[{"layer": 1, "latents": [5], "mode": "clamp", "value": 50.0}])
    assert abs(ablated - baseline) > 1e-3 and abs(clamped - baseline) > 1e-3
    # an edit that changes nothing (scale by 1) leaves the score as it was: the error term is kept
    same = model.refusal_score(HARMFUL[1], edits=[{"layer": 1, "latents": [5], "mode": "scale", "value": 1.0}])
    assert same == pytest.approx(baseline, abs=1e-4)
    with pytest.raises(InputError, match="no SAE for layer 3"):
        model.refusal_score(HARMFUL[1], edits=[{"layer": 3, "latents": [1], "mode": "ablate"}])
    with pytest.raises(InputError, match="analyze direction"):
        model.refusal_score(HARMFUL[1], edits=[{"mode": "direction"}])


def test_direction_edit_projects_the_direction_out(setup) -> None:
    model, _ = setup
    direction = np.zeros(64, np.float32)
    direction[3] = 1.0
    with_direction = StudyLiveModel(model.live, DirectionResult(
        layer=1, position=-1, direction=direction, candidate_layer=np.array([1]), candidate_position=np.array([-1]),
        refusal_drop=np.zeros(1, np.float32), kl=np.zeros(1, np.float32), induce=np.zeros(1, np.float32),
        baseline_score=0.0, ablated_score=0.0))
    baseline = with_direction.refusal_score(HARMFUL[0], edits=[])
    assert with_direction.refusal_score(HARMFUL[0], edits=[{"mode": "direction"}]) != pytest.approx(baseline, abs=1e-4)


def test_interleaved_generations_do_not_share_edits(setup) -> None:
    """Two generators advanced in turn (as a UI streaming both sides might): the baseline stays
    the plain model's text, because no edit hook is installed while a generator is suspended."""
    model, _ = setup
    alone = "".join(model.generate(HARMFUL[0], edits=[], max_new_tokens=10))
    everything = [{"layer": 1, "latents": list(range(128)), "mode": "ablate"}]
    edited_alone = "".join(model.generate(HARMFUL[0], edits=everything, max_new_tokens=10))
    assert edited_alone != alone  # the edit matters, so a leak would show
    base, edited = model.generate(HARMFUL[0], edits=[], max_new_tokens=10), model.generate(HARMFUL[0], edits=everything, max_new_tokens=10)
    texts = ["", ""]
    for _ in range(40):
        for side, stream in enumerate((base, edited)):
            texts[side] += next(stream, "")
    assert texts == [alone, edited_alone]
