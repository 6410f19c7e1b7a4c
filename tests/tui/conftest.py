"""Small synthetic study files for the TUI tests, built once per session (about 0.1 s each)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from store import StudyWriter
from tests import study_factory
from tests.synthetic import SyntheticConfig, copy_without, make_synthetic_study


@pytest.fixture(scope="session")
def study_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every analysis present; 48 prompts, 512 latents on layer 6 (the table holds 200 at a time)."""
    return make_synthetic_study(tmp_path_factory.mktemp("tui") / "study.h5", SyntheticConfig(n_prompts=48, d_sae=512))


@pytest.fixture(scope="session")
def bare_path(study_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same study with no analysis run at all."""
    return copy_without(study_path, tmp_path_factory.mktemp("tui") / "bare.h5", "analysis")


@pytest.fixture(scope="session")
def unindexed_path(study_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Codes cached but the per-latent index never built (an interrupted cache)."""
    return copy_without(study_path, tmp_path_factory.mktemp("tui") / "unindexed.h5", "layers/6/by_feature")


@pytest.fixture(scope="session")
def no_codes_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Residuals only: no SAE codes on any layer, no analyses."""
    path = tmp_path_factory.mktemp("tui") / "no_codes.h5"
    spec = dataclasses.replace(study_factory.spec(), sae_layers={}, sae_arrays={})
    with StudyWriter.create(path, spec) as writer:
        for index in range(2):
            writer.append(dataclasses.replace(study_factory.batch(index), codes={}))
        writer.finalize()
    return path


@pytest.fixture
def anyio_backend() -> str:
    """The tests are async (Textual's Pilot); anyio's pytest plugin runs them on asyncio."""
    return "asyncio"
