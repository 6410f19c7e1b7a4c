"""Shared fixtures of the web tests: a small synthetic study (every analysis present), one with
no analyses, and a fake live model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.synthetic import SyntheticConfig, make_synthetic_study
from refusal_web.context import WebContext, make_context
from store import Study, StudyWriter
from tests import study_factory


@pytest.fixture(scope="session")
def study_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_study(tmp_path_factory.mktemp("web") / "study.h5", SyntheticConfig(n_prompts=48, seed=3))


@pytest.fixture()
def study(study_path: Path) -> Iterator[Study]:
    with Study(study_path) as opened:
        yield opened


@pytest.fixture()
def ctx(study: Study, tmp_path: Path) -> WebContext:
    return make_context(study, "default", export_dir=tmp_path)


@pytest.fixture(scope="session")
def bare_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study with codes but no analysis run at all."""
    path = tmp_path_factory.mktemp("web-bare") / "bare.h5"
    with StudyWriter.create(path, study_factory.spec()) as writer:
        writer.append(study_factory.batch(0))
        writer.append(study_factory.batch(1))
        writer.finalize()
    return path


@pytest.fixture()
def bare_ctx(bare_path: Path, tmp_path: Path) -> Iterator[WebContext]:
    with Study(bare_path) as opened:
        yield make_context(opened, "default", export_dir=tmp_path)


class FakeLiveModel:
    """Streams canned words; the edited response and score differ whenever an edit is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[dict]]] = []

    def generate(self, prompt: str, *, edits: list[dict], max_new_tokens: int) -> Iterator[str]:
        self.calls.append(("generate", prompt, edits))
        words = (["Sure,", " here", " is", " how"] if edits else ["I'm", " sorry,", " I", " can't"])
        words = (words * max_new_tokens)[:max_new_tokens]
        yield from words

    def refusal_score(self, prompt: str, *, edits: list[dict]) -> float:
        self.calls.append(("score", prompt, edits))
        return -2.5 if edits else 1.75


@pytest.fixture()
def fake_model() -> FakeLiveModel:
    return FakeLiveModel()
