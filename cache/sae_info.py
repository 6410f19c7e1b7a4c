"""Where a study's SAE came from, as stored in its description and printed by ``info`` and the
viewers. Light on purpose (no torch, no sae-lens): ``info`` and the TUI import it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def sae_source_text(info: Mapping[str, Any]) -> str:
    """One line on where a study's SAE came from, from its stored description (``describe_sae``):
    ``packaged: …/layer_14 · topk, 2048 latents, k=32, trained on 100,053 tokens``."""
    source = info.get("source") or ("registry" if info.get("release") else "local")
    where = f"{info.get('release')}:{info.get('sae_id')}" if source == "registry" else info.get("path") or info.get("spec")
    details = [f"{info.get('architecture', '?')}, {info.get('d_sae', '?')} latents"]
    if info.get("k") is not None:
        details.append(f"k={info['k']}")
    if info.get("train_tokens") is not None:
        details.append(f"trained on {int(info['train_tokens']):,} tokens")
    if info.get("explained_variance") is not None:
        details.append(f"held-out explained variance {float(info['explained_variance']):.2f}")
    if info.get("latent_fraction") is not None:
        details.append(f"latents carry {float(info['latent_fraction']):.1%} of the refusal direction's drop")
    if info.get("loss_recovered") is not None:
        details.append(f"loss recovered {float(info['loss_recovered']):.1%}")
    if info.get("dead_fraction") is not None:
        dense = f", dense {float(info['dense_fraction']):.1%}" if info.get("dense_fraction") is not None else ""
        details.append(f"dead {float(info['dead_fraction']):.1%}{dense}")
    return f"{source}: {where} · {', '.join(details)}"


def sae_provenance(path: str | None) -> dict[str, Any]:
    """Where the SAE of a spec came from (``path`` = the spec's directory, None for a registry
    SAE), for ``info`` and the viewers: ``source`` (packaged, local or registry) and, for a directory made by ``train-sae``, its training record's width, k,
    token count and held-out metrics (read from ``training.json`` / ``metrics.json`` beside it),
    with the share of the refusal direction's drop its latents carry and the loss recovered
    when ``metrics.json`` has them (``quality``, from ``train-sae`` or ``measure-sae --write``)."""
    from cache.default_saes import default_sae_dirs

    if path is None:
        return {"source": "registry"}
    directory = Path(path).expanduser().resolve()
    packaged = {packaged_dir.resolve() for packaged_dir in default_sae_dirs().values()}
    facts: dict[str, Any] = {"source": "packaged" if directory in packaged else "local"}
    for name in ("training.json", "metrics.json"):
        try:
            record = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        corpus = record.get("corpus") if isinstance(record.get("corpus"), dict) else {}
        quality = record.get("quality") if isinstance(record.get("quality"), dict) else {}
        for key, value in (
            ("k", config.get("k", record.get("k"))),
            ("train_tokens", corpus.get("train_tokens")),
            ("explained_variance", record.get("explained_variance")),
            ("dead_fraction", record.get("dead_fraction")),
            ("dense_fraction", record.get("dense_fraction")),
            # measure-sae / train-sae's refusal-level numbers (explorer.sae_quality)
            ("latent_fraction", quality.get("latent_fraction")),
            ("loss_recovered", quality.get("loss_recovered")),
        ):
            if value is not None and key not in facts:
                facts[key] = value
    return facts
