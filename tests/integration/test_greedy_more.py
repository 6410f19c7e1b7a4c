"""Searching more prompts into a study's greedy result (the web app's "search now"), on the
planted tiny model: the new set is the planted pair, saved beside the old ones with the run's
settings, under the writer lock; a second writer is refused at once, naming the holder."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from cache.sae import decoder_rows
from explorer.candidates import cosine_scores
from explorer.greedy import GreedyConfig, run_greedy
from explorer.greedy_more import merge, search_into_study
from explorer.live import select_prompts
from explorer.results import CandidateResult, GreedyResult
from store import InputError, Study
from store.lock import StudyBusyError
from tests.planted import PLANTED_LATENTS, SAE_LAYER, planted_live
from tests.study_factory import lock_held_elsewhere
from tests.synthetic import make_greedy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_search_now_adds_the_planted_pair_and_keeps_the_run_settings(planted, tmp_path: Path) -> None:
    source, loaded, sae, u = planted
    path = tmp_path / "study.h5"
    shutil.copy(source, path)
    cosine = cosine_scores(decoder_rows(sae), u)
    top, zeros = np.argsort(-cosine)[:10], np.zeros_like(cosine)
    CandidateResult(layer=SAE_LAYER, cosine=cosine, attribution=zeros, integrated_gradients=zeros, top_cosine=top,
                    top_attribution=top, overlap=1.0).save(path, "more", config={})
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        refused = select_prompts(study, label="harmful", refused=True)
        config = GreedyConfig(layer=SAE_LAYER, k=8, threshold=-4.0, prompts=(refused[0],), generate=2, prefix_pass=False)
        first, _ = run_greedy(study, live, CandidateResult.load(study, "more"), config, progress=False)
    first.save(path, "more", config=dataclasses.asdict(config))
    summary = search_into_study(path, "more", live, [refused[1]])
    assert summary["sets"] == [{"prompt": refused[1], "latents": sorted(PLANTED_LATENTS), "score": pytest.approx(summary["sets"][0]["score"]),
                                "confirmed": 1}]
    assert summary["sets"][0]["score"] < -4.0 and summary["k"] == 8
    with Study(path) as study:
        both = GreedyResult.load(study, "more")
        stored = GreedyResult.config_of(study, "more")
    assert both.prompt.tolist() == refused[:2] and both.flips().all()
    assert [sorted(both.latents_of(s).tolist()) for s in range(2)] == [sorted(PLANTED_LATENTS)] * 2
    assert stored["prompts"] == [refused[0]] and stored["prefix_pass"] is False  # the run's settings, unchanged
    with pytest.raises(InputError, match=f"prompt {refused[1]} was already searched"):
        search_into_study(path, "more", live, [refused[1]])

    with lock_held_elsewhere(path, "another analyze"):
        with pytest.raises(StudyBusyError, match="is being written by pid .*another analyze"):
            search_into_study(path, "more", live, [refused[2]])


def test_merge_keeps_a_joint_set_last_and_refuses_other_settings() -> None:
    old = make_greedy(6, [0, 2, 0], [[1, 2], [3], [1, 2, 3]])
    old = dataclasses.replace(old, joint_prompts=np.array([0, 2]))
    new = make_greedy(6, [4], [[7, 8, 9]])
    merged = merge(old, new)
    assert merged.prompt.tolist() == [0, 2, 4, 0] and merged.joint_prompts.tolist() == [0, 2]
    assert [merged.latents_of(s).tolist() for s in range(4)] == [[1, 2], [3], [7, 8, 9], [1, 2, 3]]
    assert merged.per_prompt().tolist() == [True, True, True, False]
    assert merged.trajectory_offsets.tolist() == [0, 1, 2, 3, 4] and merged.trajectory_size.tolist() == [2, 1, 3, 3]
    with pytest.raises(InputError, match="does not match the stored one"):
        merge(old, make_greedy(8, [4], [[1]]))

