"""`refusal-explorer analyze why STUDY.h5`: each prompt's latents ranked by attribution to its refusal score."""

from __future__ import annotations

from typing import Any

import click

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage

OPTIONS = ConfigOptions("explorer.why:WhyConfig", skip=("layer",))


def summary_text(f: dict[str, Any]) -> str:
    return "\n".join([
        f"why        layer {f['layer']}, {f['prompts']} prompts ranked, top {f['top_n']} latents each, "
        f"attribution over the last {f['positions']} (post-instruction) tokens",
        f"top latent {f['distinct_top_latents']} distinct first-ranked latents (most common: {f['most_common_top']})",
        f"cost       {f['forwards']} forwards",
    ])


@stage("why", OPTIONS, extra=[click.option("--layer", type=int, help="SAE layer (default: the candidates' layer).")],
       demo=("--prompts", "harmful"))
def why(ctx: StageContext) -> Report:
    """Rank each prompt's latents by their attribution to its own refusal score (for the viewers' why view)."""
    from explorer.why import run_why

    layer = ctx.candidates_sae_layer(ctx.values.pop("layer"))
    config = ctx.config(layer=layer)
    result, summary = run_why(ctx.study, ctx.live([layer]), config)
    return Report(result, config, summary, summary_text(summary))
