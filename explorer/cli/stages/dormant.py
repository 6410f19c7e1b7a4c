"""`refusal-explorer analyze dormant STUDY.h5`: dormant backups and redundant latents, tested causally (stage 3)."""

from __future__ import annotations

from typing import Any

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import GreedyResult
from store.errors import InputError

OPTIONS = ConfigOptions("explorer.dormant:DormantConfig", flags={
    "include_joint": "--joint/--no-joint", "subsets": "--subsets/--no-subsets", "direction": "--direction/--no-direction"})


def summary_text(f: dict[str, Any]) -> str:
    from explorer.dormant import dormant_summary_lines

    return "\n".join(dormant_summary_lines(f, f["source_layer"]))


@stage("dormant", OPTIONS, demo=("--max-sets", "2", "--max-per-layer", "6"))
def dormant(ctx: StageContext) -> Report:
    """Dormant backups and redundant latents, tested causally.

    Contexts: every flipping greedy set (the joint one too), each set less one latent, and the
    refusal direction ablated. A latent silent at baseline that wakes in a flipping context is a
    dormant backup if suppressing it deepens the flip or clamping it to its woken value on the
    untouched prompt raises refusal; one that wakes in a set that does not flip is redundant with
    it if ablating both flips."""
    from explorer.dormant import run_dormant

    config = ctx.config()
    greedy = ctx.require(GreedyResult, "greedy", "greedy result")
    source, saes = int(greedy.layer), ctx.study.meta.saes
    wanted = list(config.layers) if config.layers is not None else [source, *(layer for layer in saes if layer > source)]
    early = [layer for layer in wanted if layer < source]
    if early:
        raise InputError(f"layer {early[0]} comes before the greedy layer {source}; dormant latents are searched at or after it")
    missing = [layer for layer in wanted if layer not in saes]
    if missing:
        raise InputError(f"layer {missing[0]} has no SAE in this study; run `refusal-explorer cache --sae {missing[0]}=…` first")
    result, summary = run_dormant(ctx.study, ctx.live(sorted({source, *wanted})), greedy, config, run=ctx.run)
    facts = {**summary, "source_layer": int(result.source_layer)}
    return Report(result, config, facts, summary_text(facts))
