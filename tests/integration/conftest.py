"""Tiny models built in code (no downloads) for the integration tests.

Fixtures: ``tiny_qwen2``, ``tiny_gemma2``, ``tiny_llama`` (4 layers, hidden 64, vocab 1000,
float32, eval mode, eager attention) and ``tiny_model``, parametrised over the three
families; ``planted`` (the planted-refusal study of tests/planted.py, one per session) and
``one_torch_thread`` (use it with ``pytestmark = pytest.mark.usefixtures(...)``). Builders live
in ``tests/tiny_models.py`` for tests that need other shapes.
"""

from __future__ import annotations

import pytest
import torch

from tests.planted import shared_planted_study
from tests.tiny_models import TINY_FAMILIES, make_tiny_model


@pytest.fixture
def tiny_qwen2() -> torch.nn.Module:
    return make_tiny_model("qwen2")


@pytest.fixture
def tiny_gemma2() -> torch.nn.Module:
    return make_tiny_model("gemma2")


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return make_tiny_model("llama")


@pytest.fixture(params=TINY_FAMILIES)
def tiny_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return make_tiny_model(request.param)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: extra threads only add synchronisation, which on a busy 2-core machine
    made the planted-model tests ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def planted():
    """(study path, loaded planted model, planted SAE, u): shared by the stage tests, each of
    which writes its results under its own run name."""
    return shared_planted_study()
