"""The embedded default model's own SAEs, shipped as package data (``cache/data/saes``).

Each ``layer_<L>/`` directory is in sae-lens's on-disk format (``cfg.json`` +
``sae_weights.safetensors``, float16) with ``metrics.json`` and ``training.json`` beside it, so
``demo`` can pass ``--sae L=DIR`` without training anything.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

_LAYER_DIR = re.compile(r"^layer_(\d+)$")


def default_sae_dirs() -> dict[int, Path]:
    """``{layer: directory}`` of the packaged SAEs (empty if none are installed)."""
    root = Path(str(files("cache").joinpath("data", "saes")))
    if not root.is_dir():
        return {}
    found = {}
    for child in root.iterdir():
        match = _LAYER_DIR.match(child.name)
        if match and (child / "cfg.json").is_file() and (child / "sae_weights.safetensors").is_file():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def default_sae_specs() -> tuple[str, ...]:
    """The packaged SAEs as ``--sae`` specs, ``L=DIR``."""
    return tuple(f"{layer}={path}" for layer, path in default_sae_dirs().items())
