"""`refusal-explorer demo`: the whole pipeline on an embedded model, on small budgets.

It runs the same commands a user would (cache, then each registered `analyze` stage that has
``demo=`` options, in pipeline order, with its printed summary), so the demo exercises exactly
the public path. Every step is skipped when the study already holds its result, so an
interrupted demo continues where it stopped. The budgets (each stage's ``demo=`` in
explorer/cli/stages/) are sized so the whole demo takes minutes on a 2-core CPU (README).
``--model qwen-1.5b`` (no SAEs ship for it) runs the stages that need none: cache, refusal
tokens, direction, and `evaluate` of the direction.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from explorer.cli.shell import STAGES, analyze
from store import Study

if TYPE_CHECKING:  # pragma: no cover
    from cache.pipeline import CacheConfig


def demo_layers(extra: Sequence[int]) -> tuple[int, ...]:
    """Layers cached by the demo: a sweep for the direction plus the packaged SAEs' layers."""
    return tuple(sorted({12, 14, 16, 18, *extra}))


def demo_cache_config(model: str, out: Path, *, overwrite: bool, generate: int) -> CacheConfig:
    """The demo's cache options: the default model with its packaged SAEs, or another embedded
    model's preset (dtype and batch size from this machine) at the demo's layers, without SAEs."""
    from cache import presets
    from cache.default_saes import default_sae_dirs, default_sae_specs
    from cache.pipeline import CacheConfig

    resume = out.exists() and not overwrite
    if model == presets.PACKAGED:
        return CacheConfig(
            layers=demo_layers(list(default_sae_dirs())), out=out, generate=generate, resume=resume, overwrite=overwrite,
            saes=default_sae_specs(),
        )
    fields = presets.apply_preset(
        model, {"model": model, "layers": demo_layers(()), "out": out, "generate": generate, "resume": resume, "overwrite": overwrite},
        explicit={"layers"}, cpu_available_bytes=presets.cpu_available_memory(),
    )
    # The preset's refusal tokens would be an explicit choice the refusal-tokens stage must keep;
    # the demo leaves them to that stage, as on the default model.
    return CacheConfig(**(fields | {"refusal_tokens": None}))


def run_demo(
    out: Path, *, overwrite: bool, generate: int, model: str = "default", echo: Callable[[str], None] = click.echo,
    summaries_to_stderr: bool = False,
) -> list[dict[str, str]]:
    """Cache and analyse ``out``; returns each step and whether it ran or was already done.
    ``summaries_to_stderr``: print the stages' summaries on stderr (stdout carries JSON)."""
    from cache.pipeline import run_cache

    config = demo_cache_config(model, out, overwrite=overwrite, generate=generate)
    with_saes = bool(config.saes)
    echo(f"[demo] caching the built-in prompts into {out} ({model} model, layers {', '.join(map(str, config.layers))}"
         + ("" if with_saes else "; no SAEs, so only the stages that need none run") + ")")
    run_cache(config)
    steps = [{"step": "cache", "status": "ran"}]
    for stage in STAGES:
        if stage.demo is None or (stage.needs_sae and not with_saes):
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
    steps.append(_demo_evaluate(out, echo, summaries_to_stderr))
    return steps


DEMO_EVALUATE = ("--max-prompts", "8", "--max-harmless", "8", "--max-new-tokens", "32", "--batch-size", "8")
"""A small `evaluate` (baseline vs the direction vs a greedy set) so a new user sees the table;
budgets sized for minutes on a 2-core CPU."""


def _demo_evaluate(out: Path, echo: Callable[[str], None], summaries_to_stderr: bool) -> dict[str, str]:
    from explorer.cli.evaluate import evaluate_command
    import numpy as np

    from explorer.results import GreedyResult
    from explorer.sentence_model import DIST_NAME

    with Study(out) as study:
        done = "default" in study.analysis_runs() and "evaluate" in study.file["analysis/default"]
        greedy = GreedyResult.load(study, "default")
    if done:
        echo("[demo] evaluate: already in the study, skipped")
        return {"step": "evaluate", "status": "skipped (already in the study)"}
    interventions = ["--intervention", "direction"]
    if greedy is not None and len(greedy.prompt):
        # Only a set that flips is a minimal set: the joint one if it flips, else the first
        # single-prompt set that does (a search that did not flip has none).
        flips, single = greedy.flips(), greedy.per_prompt()
        if len(greedy.joint_prompts) and flips[-1]:
            interventions += ["--intervention", "set:joint"]
        elif (single & flips).any():
            interventions += ["--intervention", f"set:{int(greedy.prompt[np.flatnonzero(single & flips)[0]])}"]
    import importlib.metadata

    try:
        importlib.metadata.distribution(DIST_NAME)
        judges: list[str] = []
    except importlib.metadata.PackageNotFoundError:
        echo(f"[demo] evaluate: the semantic judge's package ({DIST_NAME}) is not installed; judging by substring and phrase only")
        judges = ["--judges", "substring,phrase"]
    echo("[demo] evaluate " + " ".join(interventions[1::2]))
    with contextlib.redirect_stdout(sys.stderr) if summaries_to_stderr else contextlib.nullcontext():
        evaluate_command.main([str(out), *interventions, *DEMO_EVALUATE, *judges], prog_name="refusal-explorer evaluate", standalone_mode=False)
    return {"step": "evaluate", "status": "ran"}
