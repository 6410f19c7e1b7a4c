"""`refusal-explorer analyze dormant STUDY.h5`: latents that wake when a minimal set is ablated (stage 3)."""

from __future__ import annotations

from typing import Any

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import GreedyResult
from store.errors import InputError

OPTIONS = ConfigOptions("explorer.dormant:DormantConfig", flags={"include_joint": "--joint/--no-joint"})


def summary_text(f: dict[str, Any]) -> str:
    lines = [f"dormant    minimal sets ablated at layer {f['source_layer']}; re-encoded at layers {f['layers']}"]
    for info in f["prompts"]:
        lines.append(
            f"prompt {info['prompt']:<4} |S|={info['set_size']}: score {info['baseline']:+.2f} -> {info['ablated']:+.2f}; "
            f"{info['woken']} woken, {info['restoring']} restore refusal"
            + (f" (ablating those too: {info['all_restoring_ablated']:+.2f})" if info["restoring"] else "")
        )
    lines.append("by layer   " + ", ".join(f"{layer}: {n} woken / {r} restoring" for layer, (n, r) in f["by_layer"].items()))
    if f["strongest"]:
        lines.append("strongest  " + ", ".join(f"L{layer}#{latent} on {p} ({e:+.2f})" for p, layer, latent, e in f["strongest"]))
        lines.append("fires on   " + ", ".join(f"{token!r} ×{n}" for token, n in f["tokens"]))
    return "\n".join(lines)


@stage("dormant", OPTIONS, demo=("--max-sets", "2", "--max-per-layer", "6"))
def dormant(ctx: StageContext) -> Report:
    """Latents silent at baseline that wake up when the minimal set is ablated, and which restore refusal."""
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
    result, summary = run_dormant(ctx.study, ctx.live(sorted({source, *wanted})), greedy, config)
    facts = {**summary, "source_layer": int(result.source_layer)}
    return Report(result, config, facts, summary_text(facts))
