"""`refusal-explorer analyze jailbreak STUDY.h5`: plain vs jailbreak-wrapped requests, refusal latents, damping tokens (Yeo et al.)."""

from __future__ import annotations

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from explorer.results import CandidateResult

OPTIONS = ConfigOptions("explorer.jailbreak:JailbreakConfig", skip=("layer",))


DEMO = ("--max-prompts", "4", "--wrappers", "fiction-novel,hypothetical-world,research-safety,prefix-sure", "--verify-tokens", "3")
"""Small budgets for the demo: minutes on a 2-core CPU (README gives the measured time)."""


@stage("jailbreak", OPTIONS, demo=DEMO)
def jailbreak(ctx: StageContext) -> Report:
    """Wrap refused harmful requests in jailbreak framings (docs/JAILBREAK.md) or read your plain/wrapped pairs;
    report the refusal rate and the refusal latents' change per wrapper, and which wrapper tokens damp the latents
    (input × gradient, the top ones checked by occlusion). Needs `analyze candidates` first (the refusal latents)."""
    from explorer.jailbreak import format_summary, run_jailbreak
    from explorer.results_paper2 import refusal_latents

    candidates = ctx.require(CandidateResult, "candidates")
    layer = ctx.sae_layer(candidates.layer)
    config = ctx.config(layer=layer)
    latents = refusal_latents(candidates, config.ranking, config.k)
    result, summary = run_jailbreak(ctx.study, ctx.live([layer]), latents, config)
    return Report(result, config, summary, "\n".join(format_summary(summary)))
