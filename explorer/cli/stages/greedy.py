"""`refusal-explorer analyze greedy STUDY.h5`: minimal latent sets that flip refusal (stage 2)."""

from __future__ import annotations

from typing import Any

import click

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import CandidateResult
from store.errors import InputError

OPTIONS = ConfigOptions("explorer.greedy:GreedyConfig", skip=("layer",), flags={"active_only": "--active-only/--all-latents"})


def summary_text(f: dict[str, Any]) -> str:
    layer = f["layer"]
    lines = [
        f"greedy     layer {layer}, top {f['k']} by {f['ranking']}, {f['order']} order, flip below {f['threshold']:+.2f}",
        f"searched   {f['searched']} prompts; start set flips {f['start_flips']}"
        + (f" (not at K: prompts {f['no_flip_at_k']})" if f["no_flip_at_k"] else ""),
        f"set sizes  {f['sizes']}  (mean Jaccard overlap {f['mean_jaccard']:.2f}; shared: {f['shared_latents']})",
    ]
    if f["joint_start_flips"] is not None:
        lines.append(f"joint set  {f['joint_size'] if f['joint_start_flips'] else 'start set does not flip every prompt'}")
    if f["generate"]:
        lines.append(f"verified   {f['verified']} sets comply by generation, {f['verified_fail']} still refuse")
    lines.append(f"cost       {f['forwards_from_layer']} batched forwards from layer {layer} ({f['rows']} rows)"
                 f" + {f['prepare_forwards']} to layer {layer}; {f['seconds']:.0f} s")
    if f["unsearched"]:
        lines.append(f"budget     the time budget ran out: {f['unsearched']} refused prompts were not searched")
    return "\n".join(lines)


@stage("greedy", OPTIONS, extra=[click.option("--layer", type=int, help="SAE layer (default: the candidates' layer).")],
       demo=("--k", "32", "--max-prompts", "1000", "--time-budget-s", "900", "--generate", "24"))
def greedy(ctx: StageContext) -> Report:
    """Minimal latent sets whose ablation flips refusal, by greedy elimination."""
    from explorer.greedy import run_greedy

    candidates = ctx.require(CandidateResult, "candidates")
    layer = ctx.values.pop("layer")
    layer = ctx.sae_layer(candidates.layer if layer is None else layer)
    config = ctx.config(layer=layer)
    d_sae = ctx.study.codes(layer).d_sae
    if config.k > d_sae:
        raise InputError(f"--k {config.k} is more than the {d_sae} latents of layer {layer}'s SAE; choose --k ≤ {d_sae}")
    result, summary = run_greedy(ctx.study, ctx.live([layer]), candidates, config)
    facts = {**summary, "layer": layer, "k": config.k, "ranking": config.ranking, "order": config.order,
             "threshold": float(result.threshold), "generate": config.generate}
    return Report(result, config, facts, summary_text(facts))
