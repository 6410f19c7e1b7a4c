"""Tiny models built in code (no downloads) for the integration tests.

Fixtures: ``tiny_qwen2``, ``tiny_gemma2``, ``tiny_llama`` (4 layers, hidden 64, vocab 1000,
float32, eval mode, eager attention) and ``tiny_model``, parametrised over the three
families. Builders live in ``tests/tiny_models.py`` for tests that need other shapes.
"""

from __future__ import annotations

import pytest
import torch

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
