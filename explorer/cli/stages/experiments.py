"""`refusal-explorer analyze experiments STUDY.h5`: random ablation subsets, scored (stage 3)."""

from __future__ import annotations

from typing import Any

import click

from explorer.cli.options import ConfigOptions
from explorer.cli.output import num
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import GreedyResult

OPTIONS = ConfigOptions("explorer.experiments:ExperimentConfig", flags={"include_joint": "--joint/--no-joint"})


def summary_text(f: dict[str, Any]) -> str:
    return "\n".join([
        f"experiments layer {f['layer']}, {f['n_rows']} subsets over {f['n_latents']} latents "
        f"({f['n_minimal']} in minimal sets), mean of {len(f['prompts'])} prompts {f['prompts']}",
        f"scheme     {f['scheme']}",
        f"score      nothing ablated {num(f['all_off'])}, all {num(f['all_on'])}, minimal sets {num(f['minimal'])}; "
        f"mean {num(f['mean'])} ({f['below_threshold']:.0%} below {f['threshold']:+.2f}, "
        f"{f['mean_ablated']:.1f} latents ablated on average)",
        f"sized      {f['n_rows']} subsets for a rank-{f['fm_rank']} FM with {f['fm_parameters']} parameters "
        f"({f['n_rows'] / f['fm_parameters']:.1f} per parameter; analyze fm wants ≥ 10)",
        f"cost       {f['seconds']:.1f} s ({f['seconds_per_100']:.1f} s per 100 subsets), {f['forwards_from_layer']} batched forwards "
        f"from layer {f['layer']} ({f['rows']} rows)",
    ])


@stage("experiments", OPTIONS, demo=("--max-other", "6", "--max-prompts", "2", "--pair-backgrounds", "1"))
def experiments(ctx: StageContext) -> Report:
    """Random ablation subsets over the minimal-set and other active latents, scored in batches."""
    from explorer.experiments import run_experiments

    config = ctx.config()
    greedy = ctx.require(GreedyResult, "greedy", "greedy result")
    estimate = lambda line: click.echo(line, err=True)  # noqa: E731 (beside the progress bar, never in --json)
    result, summary = run_experiments(ctx.study, ctx.live([int(greedy.layer)]), greedy, config, estimate=estimate)
    facts = {**summary, "seconds_per_100": 100 * summary["seconds"] / max(1, summary["n_rows"])}
    return Report(result, config, facts, summary_text(facts))
