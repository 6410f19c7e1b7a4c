"""`refusal-explorer analyze categories STUDY.h5`: refusal latents per harm category, shared vs specific, transfer (Yeo et al.)."""

from __future__ import annotations

import click

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage

OPTIONS = ConfigOptions("explorer.categories:CategoryConfig", skip=("layer",))


DEMO = ("--max-per-category", "4", "--max-harmless", "8", "--min-prompts", "4", "--shuffles", "20")
"""Small budgets for the demo: minutes on a 2-core CPU (README gives the measured time)."""


@stage("categories", OPTIONS, extra=[click.option("--layer", type=int, help="SAE layer (default: the candidates' layer, else the first with codes).")], demo=DEMO)
def categories(ctx: StageContext) -> Report:
    """Refusal latents per harm category (by attribution and by activation difference vs harmless), those shared
    by every category and those specific to one (against a shuffled-label chance level), and a transfer matrix:
    ablate category A's latents, count fast-score flips in category B.

    \b
    Prompts: the study's harmful prompts and their category, or a table:
      --prompts harmbench_behaviors_text_test.csv --category-column SemanticCategory --where FunctionalCategory=standard
    """
    from explorer.categories import format_summary, run_categories

    layer = ctx.candidates_sae_layer(ctx.values.pop("layer"))
    config = ctx.config(layer=layer)
    result, summary = run_categories(ctx.study, ctx.live([layer]), config)
    return Report(result, config, summary, "\n".join(format_summary(summary, config.top_k)))
