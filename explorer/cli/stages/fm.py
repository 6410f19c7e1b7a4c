"""`refusal-explorer analyze fm STUDY.h5`: a factorization machine over the experiments (stage 3)."""

from __future__ import annotations

from typing import Any

import click

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import ExperimentResult

OPTIONS = ConfigOptions("explorer.fm:FMConfig")


def _pairs(items: list[Any]) -> str:
    return ", ".join(f"{a}×{b} {v:+.2f}" for a, b, v in items) or "none"


def summary_text(f: dict[str, Any]) -> str:
    from explorer.interactions import format_r2

    tops = ", ".join(f"{p} ({label}, {d:+.2f})" for p, label, d in f["top_prompts"])
    means = ", ".join(f"{label} {mean:+.2f}" for label, mean in f["mean_drive"].items())
    return "\n".join([
        f"fm         layer {f['layer']}, {f['n_latents']} latents, rank {f['rank']}, {f['n_experiments']} experiments "
        f"({f['n_holdout']} held out); best epoch {f['best_epoch']} of {f['epochs']}",
        f"R²         FM train {format_r2(f['r2_train'])}, holdout {format_r2(f['r2_holdout'])}; "
        f"linear train {format_r2(f['r2_linear_train'])}, holdout {format_r2(f['r2_linear_holdout'])}",
        "main       most negative w (ablating lowers refusal): " + ", ".join(f"{i} {w:+.2f}" for i, w in f["strongest_main"]),
        f"pairs      positive: {_pairs(f['positive_pairs'])}",
        f"           negative: {_pairs(f['negative_pairs'])}",
        "via pairs  latents with ≥ 50% of their effect from interactions: "
        + (", ".join(f"{i} ({s:.0%})" for i, s in f["interaction_driven"]) or "none"),
        f"cache      predicted refusal drop from ablating the latents active at each prompt's post-instruction tokens: "
        f"mean {means}; top {tops}",
    ])


@stage("fm", OPTIONS, model=False, demo=(),
       extra=[click.option("--top", type=int, default=5, show_default=True,
                           help="Prompts listed by how much refusal the FM says their latents drive.")])
def fm(ctx: StageContext) -> Report:
    """Fit a factorization machine to the experiments; score it over every cached prompt."""
    from explorer.interactions import run_fm, score_cached_codes

    top = ctx.values.pop("top")
    config = ctx.config()
    experiments = ctx.require(ExperimentResult, "experiments")
    result, summary = run_fm(experiments, config)
    # pooled over the post-instruction tokens, where refusal is decided (see score_cached_codes)
    scores = score_cached_codes(ctx.study, result, prompt_tokens=ctx.study.meta.n_positions)
    labels = ctx.study.column("label")
    drive = scores.prompt_drive
    facts = {
        **summary, "layer": int(result.layer), "rank": config.rank,
        "r2_train": result.r2_train, "r2_holdout": result.r2_holdout, "r2_linear_holdout": result.r2_linear_holdout,
        "top_prompts": [(int(p), str(labels[p]), float(d)) for p, d in scores.top_prompts(top)],
        "mean_drive": {label: float(drive[labels == label].mean()) for label in sorted(set(labels.tolist()))},
    }
    return Report(result, config, facts, summary_text(facts), saved_config={"experiments_scheme": experiments.scheme})
