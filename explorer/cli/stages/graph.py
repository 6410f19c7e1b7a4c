"""`refusal-explorer analyze graph STUDY.h5`: upstream → downstream latent edges across two SAE layers (Yeo et al.)."""

from __future__ import annotations

from typing import Any

from explorer.cli.options import ConfigOptions
from explorer.cli.output import num
from explorer.cli.shell import Report, StageContext, stage

OPTIONS = ConfigOptions("explorer.graph:GraphConfig")


def summary_text(f: dict[str, Any], tree: list[str]) -> str:
    lines = [
        f"graph      layer {f['upstream_layer']} → {f['downstream_layer']}: {f['n_upstream']} upstream × {f['n_downstream']} downstream latents "
        f"on {f['prompts']} refused harmful prompts",
        f"edges      {f['n_edges']} of {f['n_pairs']} pairs kept (|weight| ≥ {f['threshold']:.3f} and above the control floor "
        f"{num(f['control_floor'], '.3f')} from random active upstream latents)",
        f"agreement  measured vs gradient×activation: Spearman {num(f['spearman'], '+.2f')} over all pairs; "
        f"sign agreement on kept edges {num(f['sign_agreement'], '.0%')}; latent→score Spearman {num(f['score_spearman'], '+.2f')}",
    ]
    if not f["n_edges"]:
        lines.append("           no evidence of upstream→downstream edges above the control floor")
    return "\n".join(lines + tree)


DEMO = ("--k-upstream", "4", "--k-downstream", "6", "--max-prompts", "4", "--controls", "4")
"""Small budgets for the demo: minutes on a 2-core CPU (README gives the measured time)."""


@stage("graph", OPTIONS, demo=DEMO)
def graph(ctx: StageContext) -> Report:
    """Edges from refusal latents at an earlier SAE layer to latents at a later one and to the refusal score:
    measured by ablation (batched from the earlier layer), compared with gradient × activation."""
    from explorer.graph import format_tree, graph_layers, run_graph

    config = ctx.config()
    result, summary = run_graph(ctx.study, ctx.live(graph_layers(ctx.study, config)), config)
    facts = {**summary, "edges": [list(e) for e in summary["edges"]]}
    return Report(result, config, facts, summary_text(facts, format_tree(result)))
