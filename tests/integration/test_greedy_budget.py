"""The greedy stage's time budget: searches stop starting once it is spent, and say how many
refused prompts were left unsearched."""

from __future__ import annotations

import numpy as np
import pytest

from cache.sae import decoder_rows
from explorer.candidates import cosine_scores
from explorer.greedy import GreedyConfig, run_greedy
from explorer.results import CandidateResult
from store import Study
from store.errors import InputError
from tests.planted import PLANTED_LATENTS, SAE_LAYER, planted_live

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def candidates(sae, u) -> CandidateResult:
    cosine = cosine_scores(decoder_rows(sae), u)
    top = np.argsort(-cosine)[:10]
    zeros = np.zeros_like(cosine)
    return CandidateResult(layer=SAE_LAYER, cosine=cosine, attribution=zeros, integrated_gradients=zeros,
                           top_cosine=top, top_attribution=top, overlap=1.0)


def test_a_spent_budget_keeps_the_first_search_and_counts_the_rest(planted) -> None:
    path, loaded, sae, u = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        config = GreedyConfig(layer=SAE_LAYER, k=8, threshold=-4.0, max_prompts=4, joint=True, generate=0,
                              time_budget_s=1e-9)
        result, summary = run_greedy(study, live, candidates(sae, u), config, progress=False)
    assert len(result.prompt) == 1 and len(result.joint_prompts) == 0  # the joint search never started
    assert sorted(result.latents_of(0).tolist()) == sorted(PLANTED_LATENTS)
    assert summary["unsearched"] == 3 and summary["seconds"] >= 0
    with pytest.raises(InputError, match="--time-budget-s"):
        GreedyConfig(layer=SAE_LAYER, time_budget_s=0)
