"""`refusal-explorer demo`: the whole pipeline on the embedded default model, on small budgets.

It runs the same commands a user would (cache, then each `analyze` stage with its printed
summary), so the demo exercises exactly the public path. Every step is skipped when the study
already holds its result, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click

from store import Study

# Budgets sized so the whole demo takes minutes on a 2-core CPU (see the issue notes for times).
ANALYSIS_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # each (layer, position) candidate costs a few forward passes of the held-out prompts
    ("direction", ("--layers", "12,14,16,18", "--positions=-1", "--max-val-prompts", "10", "--verify-generate", "16")),
    ("candidates", ("--max-prompts", "12", "--ig-steps", "4")),
    ("greedy", ("--k", "32", "--max-prompts", "5", "--generate", "24")),
    ("experiments", ("--n-experiments", "48", "--max-other", "12", "--max-prompts", "2")),
    ("fm", ()),
    ("dormant", ("--max-sets", "2", "--max-per-layer", "6")),
)


def demo_layers(extra: Sequence[int]) -> tuple[int, ...]:
    """Layers cached by the demo: a sweep for the direction plus the packaged SAEs' layers."""
    return tuple(sorted({12, 14, 16, 18, *extra}))


def run_demo(out: Path, *, overwrite: bool, generate: int, echo: Callable[[str], None] = click.echo) -> None:
    from cache.default_saes import default_sae_dirs, default_sae_specs
    from cache.pipeline import CacheConfig, run_cache
    from explorer.cli import analyze_group

    saes = default_sae_dirs()
    resume = out.exists() and not overwrite
    config = CacheConfig(
        layers=demo_layers(list(saes)), out=out, generate=generate, resume=resume, overwrite=overwrite,
        saes=default_sae_specs(),
    )
    echo(f"[demo] caching the built-in prompts into {out} (layers {', '.join(map(str, config.layers))})")
    run_cache(config)
    for stage, options in ANALYSIS_STEPS:
        with Study(out) as study:
            done = "default" in study.analysis_runs() and stage in study.file["analysis/default"]
        if done:
            echo(f"[demo] {stage}: already in the study, skipped")
            continue
        echo(f"[demo] analyze {stage}")
        analyze_group.main([stage, str(out), *options], prog_name="refusal-explorer analyze", standalone_mode=False)
