"""`refusal-explorer demo`: the whole pipeline on the embedded default model, on small budgets.

It runs the same commands a user would (cache, then each registered `analyze` stage that has
``demo=`` options, in pipeline order, with its printed summary), so the demo exercises exactly
the public path. Every step is skipped when the study already holds its result, so an
interrupted demo continues where it stopped. The budgets (each stage's ``demo=`` in
explorer/cli/stages/) are sized so the whole demo takes minutes on a 2-core CPU (README).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from explorer.cli.shell import STAGES, analyze
from store import Study


def demo_layers(extra: Sequence[int]) -> tuple[int, ...]:
    """Layers cached by the demo: a sweep for the direction plus the packaged SAEs' layers."""
    return tuple(sorted({12, 14, 16, 18, *extra}))


def run_demo(
    out: Path, *, overwrite: bool, generate: int, echo: Callable[[str], None] = click.echo, summaries_to_stderr: bool = False,
) -> list[dict[str, str]]:
    """Cache and analyse ``out``; returns each step and whether it ran or was already done.
    ``summaries_to_stderr``: print the stages' summaries on stderr (stdout carries JSON)."""
    from cache.default_saes import default_sae_dirs, default_sae_specs
    from cache.pipeline import CacheConfig, run_cache

    saes = default_sae_dirs()
    resume = out.exists() and not overwrite
    config = CacheConfig(
        layers=demo_layers(list(saes)), out=out, generate=generate, resume=resume, overwrite=overwrite,
        saes=default_sae_specs(),
    )
    echo(f"[demo] caching the built-in prompts into {out} (layers {', '.join(map(str, config.layers))})")
    run_cache(config)
    steps = [{"step": "cache", "status": "ran"}]
    for stage in STAGES:
        if stage.demo is None:
            continue
        with Study(out) as study:
            done = "default" in study.analysis_runs() and stage.group in study.file["analysis/default"]
        if done:
            echo(f"[demo] {stage.name}: already in the study, skipped")
            steps.append({"step": stage.name, "status": "skipped (already in the study)"})
            continue
        echo(f"[demo] analyze {stage.name}")
        args = [stage.name, str(out), *stage.demo]
        with contextlib.redirect_stdout(sys.stderr) if summaries_to_stderr else contextlib.nullcontext():
            analyze.main(args, prog_name="refusal-explorer analyze", standalone_mode=False)
        steps.append({"step": stage.name, "status": "ran"})
    return steps
