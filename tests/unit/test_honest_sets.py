"""A greedy search that did not flip is no minimal set: every view and summary says so."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from explorer.browse import feature_table, greedy_counts, prompt_view
from explorer.cli import cli
from explorer.results import GreedyResult
from refusal_web import analyses
from refusal_web.context import make_context
from store import Study
from tests.synthetic import SyntheticConfig, make_synthetic_study

FAILED_PROMPT = 6
FAILED_LATENTS = np.arange(200, 220)  # the top 20: all ablated, the score stays above the threshold


@pytest.fixture(scope="module")
def study_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("honest")
    path = make_synthetic_study(folder / "base.h5", SyntheticConfig(n_prompts=48, seed=3))
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")
    assert greedy is not None and greedy.flips().all()
    n = len(greedy.prompt)
    steps = np.diff(greedy.trajectory_offsets)
    with_failure = dataclasses.replace(
        greedy, prompt=np.r_[greedy.prompt, FAILED_PROMPT],
        set_offsets=np.r_[greedy.set_offsets, greedy.set_offsets[-1] + len(FAILED_LATENTS)],
        set_latents=np.r_[greedy.set_latents, FAILED_LATENTS],
        baseline_score=np.r_[greedy.baseline_score, 2.0].astype(np.float32),
        start_score=np.r_[greedy.start_score, 1.2].astype(np.float32),
        final_score=np.r_[greedy.final_score, 1.2].astype(np.float32),
        flipped=np.r_[greedy.flipped, -1].astype(np.int8),
        baseline_generation=np.array([*greedy.baseline_generation.tolist(), "I can't"], dtype=object),
        ablated_generation=np.array([*greedy.ablated_generation.tolist(), ""], dtype=object),
        trajectory_offsets=np.r_[greedy.trajectory_offsets, greedy.trajectory_offsets[-1] + 1],
        trajectory_size=np.r_[greedy.trajectory_size, len(FAILED_LATENTS)],
        trajectory_score=np.r_[greedy.trajectory_score, 1.2].astype(np.float32),
        trajectory_removed=np.r_[greedy.trajectory_removed, -1],
    )
    assert n == 3 and steps.min() > 0
    out = folder / "with-failure.h5"
    shutil.copy(path, out)
    with_failure.save(out, "default", config={"k": int(greedy.k)})
    return out


def test_counts_and_tables_hold_only_flipping_sets(study_path: Path) -> None:
    with Study(study_path) as study:
        greedy = GreedyResult.load(study, "default")
        assert greedy.flips().tolist() == [True, True, True, False]
        counts = greedy_counts(study)
        refused = int(((study.labels == "harmful") & (study.column("refusal_score") > study.meta.refusal_threshold)).sum())
        assert counts == {"refused_prompts": refused, "searched": 4, "flipping_sets": 3, "confirmed_by_generation": 2,
                          "k": int(greedy.k)}
        table = feature_table(study, 6)
        assert (table.columns["minimal_sets"][FAILED_LATENTS] == 0).all()  # none is in a set that flips
        assert not set(FAILED_LATENTS.tolist()) & set(table.filter("minimal").tolist())
        view = prompt_view(study, FAILED_PROMPT, run="default")
        assert view.ablations == [] and view.no_flip == [(int(greedy.k), pytest.approx(1.2))]


def test_web_lists_the_failed_search_as_no_set(study_path: Path, tmp_path: Path) -> None:
    with Study(study_path) as study:
        ctx = make_context(study, "default", export_dir=tmp_path)
        text, frame = analyses.minimal_sets(ctx)
        assert text.startswith("**3 minimal sets that flip** from 4 searched prompts")
        assert "1 searches found no flipping set within the top" in text
        last = frame.iloc[-1]
        assert last["latents"] == f"no flipping set within top {ctx.greedy.k}" and pd.isna(last["set"])
        _, _, about = analyses.trajectory(ctx, 3)
        assert "no flipping set within the top" in about
        assert analyses.first_flipping_set(ctx) == 0


def test_info_json_reports_the_greedy_counts(study_path: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(study_path), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["greedy"]["flipping_sets"] == 3 and facts["greedy"]["searched"] == 4
    assert set(facts["greedy"]) >= {"refused_prompts", "searched", "flipping_sets", "confirmed_by_generation"}
    text = CliRunner().invoke(cli, ["info", str(study_path)]).output
    assert "3 flipping sets within the top" in text
