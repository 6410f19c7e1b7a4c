"""The Prompts tab's "search now" (live mode), without a server: a prompt without a set gets one,
saved into the study (the app re-reads it), under the writer lock; a busy study is one line."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from explorer.greedy_more import merge
from explorer.results import GreedyResult
from refusal_web.context import make_context
from refusal_web.prompts import prompt_explore
from refusal_web.search_now import search_now
from store import Study
from store.lock import study_lock
from tests.study_factory import lock_held_elsewhere
from tests.synthetic import make_greedy
from tests.web.conftest import FakeLiveModel


class SearchingModel(FakeLiveModel):
    """Finds {3, 17} on any prompt and saves it the way ``explorer.greedy_more`` does."""

    def search_into_study(self, path: Path, run: str, prompts: list[int]) -> dict:
        with study_lock(path):
            with Study(path) as study:
                old, stored = GreedyResult.load(study, run), GreedyResult.config_of(study, run)
            new = dataclasses.replace(make_greedy(old.layer, prompts, [[3, 17]], threshold=old.threshold,
                                                  final=[old.threshold - 1.5]), k=old.k, order=old.order)
            merge(old, new).save(path, run, config=stored)
        return {"sets": [{"prompt": prompts[0], "latents": [3, 17], "score": old.threshold - 1.5, "confirmed": 1}], "k": old.k}


@pytest.fixture()
def copy(study_path: Path, tmp_path: Path) -> Path:
    path = tmp_path / "study.h5"
    shutil.copy(study_path, path)
    return path


def test_search_now_saves_a_set_and_the_why_view_shows_it(copy: Path, tmp_path: Path) -> None:
    with Study(copy) as study:
        ctx = make_context(study, "default", export_dir=tmp_path)
        model = SearchingModel()
        assert list(search_now(ctx, model, 0)) == ["Nothing to do: prompt 0 already has a minimal set (set #0: 3, 17, 42)."]
        assert "No minimal set searched on this prompt yet" in prompt_explore(ctx, 6, None, "latent", 3)[4]
        assert "Search now" not in prompt_explore(ctx, 6, None, "latent", 3)[4]
        ctx.searchable = True  # as build_app sets it for a live model that can search
        assert "Or press **Search now** below" in prompt_explore(ctx, 6, None, "latent", 3)[4]
        lines = list(search_now(ctx, model, 6))
        assert lines[0].startswith("Searching prompt 6 with the run's greedy settings")
        assert lines[-1].startswith("Searched in") and "minimal set **[3, 17]** flips prompt 6" in lines[-1]
        assert ctx.greedy.prompt.tolist() == [0, 2, 4, 6] and ctx.study is not study  # re-read after the save
        after = prompt_explore(ctx, 6, None, "latent", 3)[4]
        assert "No minimal set searched" not in after and "3, 17" in after
        assert list(search_now(ctx, model, 6))[0].startswith("Nothing to do: prompt 6 already has a minimal set (set #3")
        assert list(search_now(ctx, FakeLiveModel(), 8)) == ["⚠️ this live model cannot run searches"]
        assert list(search_now(ctx, model, 999)) == ["⚠️ prompt 999 is out of range: the study has 48 prompts"]


def test_search_now_says_in_one_line_that_another_writer_holds_the_study(copy: Path, tmp_path: Path) -> None:
    with lock_held_elsewhere(copy, "refusal-explorer analyze fm"):
        with Study(copy) as study:
            ctx = make_context(study, "default", export_dir=tmp_path)
            lines = list(search_now(ctx, SearchingModel(), 6))
        assert lines[-1].startswith("⚠️ ") and "is being written by pid" in lines[-1] and "analyze fm" in lines[-1]
        assert "\n" not in lines[-1]
