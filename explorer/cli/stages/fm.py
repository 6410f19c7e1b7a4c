"""`refusal-explorer analyze fm STUDY.h5`: FM vs additive effects, cross-validated; verified pairs (stage 3)."""

from __future__ import annotations

from typing import Any

import click

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import ExperimentResult

OPTIONS = ConfigOptions("explorer.interactions:FMStageConfig")


def summary_text(f: dict[str, Any]) -> str:
    from explorer.interactions import fm_summary_lines

    tops = ", ".join(f"{p} ({label}, {d:+.2f})" for p, label, d in f["top_prompts"])
    means = ", ".join(f"{label} {mean:+.2f}" for label, mean in f["mean_drive"].items())
    return "\n".join([
        f"layer      {f['layer']}",
        *fm_summary_lines(f),
        f"cache      predicted refusal drop from ablating the latents active at each prompt's post-instruction tokens: "
        f"mean {means}; top {tops}",
    ])


@stage("fm", OPTIONS, demo=(),
       extra=[click.option("--top", type=int, default=5, show_default=True,
                           help="Prompts listed by how much refusal the FM says their latents drive.")])
def fm(ctx: StageContext) -> Report:
    """Does an FM explain the experiments better than additive effects? k-fold CV of FM, linear
    model and mean with a paired-bootstrap interval; pairs are reported only if it does, each
    verified by ablating none / i / j / both on the experiments' prompts (the model is loaded
    only then)."""
    from explorer.interactions import run_fm, score_cached_codes
    from explorer.pair_checks import experiment_pair_measure

    top = ctx.values.pop("top")
    config = ctx.config()
    experiments = ctx.require(ExperimentResult, "experiments")
    measure = experiment_pair_measure(ctx.study, lambda: ctx.live([int(experiments.layer)]), experiments, max_batch=config.max_batch)
    result, summary = run_fm(experiments, config, measure=measure, progress=True)
    # pooled over the post-instruction tokens, where refusal is decided (see score_cached_codes)
    scores = score_cached_codes(ctx.study, result, prompt_tokens=ctx.study.meta.n_positions)
    labels = ctx.study.column("label")
    drive = scores.prompt_drive
    facts = {
        **summary, "layer": int(result.layer),
        "top_prompts": [(int(p), str(labels[p]), float(d)) for p, d in scores.top_prompts(top)],
        "mean_drive": {label: float(drive[labels == label].mean()) for label in sorted(set(labels.tolist()))},
    }
    return Report(result, config, facts, summary_text(facts), saved_config={"experiments_scheme": experiments.scheme})
