"""`refusal-explorer analyze probe STUDY.h5`: sparse refusal-latent probes vs random latents vs the dense residual (Yeo et al.)."""

from __future__ import annotations

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import CandidateResult

OPTIONS = ConfigOptions("explorer.probe:ProbeConfig", skip=("layer",))


DEMO = ("--seeds", "3", "--max-wrapped", "2", "--wrappers", "fiction-novel,hypothetical-world,research-safety,prefix-sure", "--n-boot", "300")
"""Small budgets for the demo: minutes on a 2-core CPU (README gives the measured time)."""


@stage("probe", OPTIONS, demo=DEMO)
def probe(ctx: StageContext) -> Report:
    """Logistic probes for harmful vs harmless on the top-k refusal latents, on k random active latents (several
    seeds) and on the dense residual at the same layer; trained on the plain train split, tested on the val split,
    on wrapped val prompts and optionally a second data set (--ood-harmful/--ood-harmless). Accuracy and AUROC with
    bootstrap intervals. Needs `analyze candidates` first."""
    from explorer.probe import format_summary, run_probe
    from explorer.results_paper2 import refusal_latents

    candidates = ctx.require(CandidateResult, "candidates")
    layer = ctx.sae_layer(candidates.layer)
    config = ctx.config(layer=layer)
    latents = refusal_latents(candidates, config.ranking, config.k)
    result, summary = run_probe(ctx.study, ctx.live([layer]), latents, config)
    return Report(result, config, summary, "\n".join(format_summary(summary)))
