"""Tiny cached studies for the second paper's stages (graph, categories, jailbreak, probe).

``tiny_loaded()`` is a tiny qwen2 model with the byte-level tokenizer (one token per byte);
``cache_tiny_study`` writes a study of given prompts with given SAEs, every harmful prompt
counted as refused (threshold −100), so the stages have prompts to explain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cache.models import LoadedModel
from cache.pipeline import CacheConfig, run_cache
from tests import tiny_models


def tiny_loaded() -> LoadedModel:
    """The tiny qwen2 model (4 layers) with the byte-level tokenizer."""
    return tiny_models.tiny_loaded("qwen2")


def cache_tiny_study(
    root: Path, loaded: LoadedModel, saes: dict[int, Any], harmful: list[Any], harmless: list[Any], *,
    threshold: float = -100.0, holdout_fraction: float = 0.25, name: str = "study.h5",
) -> Path:
    """Cache ``harmful``/``harmless`` (strings or {"instruction", "category"} objects) at the
    SAEs' layers; returns the study path."""
    root.mkdir(parents=True, exist_ok=True)
    for layer, sae in saes.items():
        sae.save_model(root / f"sae{layer}")
    (root / "harmful.json").write_text(json.dumps(harmful))
    (root / "harmless.json").write_text(json.dumps(harmless))
    config = CacheConfig(
        harmful=root / "harmful.json", harmless=root / "harmless.json", layers=tuple(sorted(saes)), out=root / name,
        saes=tuple(f"{layer}={root / f'sae{layer}'}" for layer in sorted(saes)), device="cpu", batch_size=8,
        refusal_threshold=threshold, holdout_fraction=holdout_fraction,
    )
    return run_cache(config, loaded=loaded, progress=False)
