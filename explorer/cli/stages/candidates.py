"""`refusal-explorer analyze candidates STUDY.h5`: SAE latents ranked against the direction (stage 2)."""

from __future__ import annotations

from typing import Any

import click

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import DirectionResult

OPTIONS = ConfigOptions("explorer.candidates:CandidateConfig", skip=("layer",))


def summary_text(f: dict[str, Any]) -> str:
    return "\n".join([
        f"candidates layer {f['layer']}, {f['prompts']} harmful prompts",
        f"top cosine       {f['top_cosine']}",
        f"top attribution  {f['top_attribution']}",
        f"top IG           {f['top_ig']}",
        f"overlap@{f['k']}  cosine∩attribution {f['overlap_cosine_attribution']:.0%}, cosine∩IG "
        f"{f['overlap_cosine_ig']:.0%}, attribution∩IG {f['overlap_attribution_ig']:.0%}",
        f"IG check   drop {f['ig_drop']:.2f} = latents {f['ig_latent_share']:.2f} + error term {f['ig_error_share']:.2f}",
    ])


@stage("candidates", OPTIONS, extra=[click.option("--layer", type=int, help="SAE layer (default: the first with codes).")],
       demo=("--max-prompts", "12", "--ig-steps", "4"))
def candidates(ctx: StageContext) -> Report:
    """Rank SAE latents by decoder cosine with the direction, attribution and IG."""
    from explorer.candidates import run_candidates

    layer = ctx.sae_layer(ctx.values.pop("layer"))
    direction = ctx.require(DirectionResult, "direction")
    config = ctx.config(layer=layer)
    result, summary = run_candidates(ctx.study, ctx.live([layer]), direction.direction, direction.position, config)
    facts = {**summary, "layer": layer}
    return Report(result, config, facts, summary_text(facts),
                  saved_config={"direction_layer": direction.layer, "direction_position": direction.position})
