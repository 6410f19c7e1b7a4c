"""`refusal-explorer analyze refusal-tokens STUDY.h5`: the model's own refusal openers for the
fast score (explorer/refusal_tokens.py)."""

from __future__ import annotations

from typing import Any

from explorer.cli.options import ConfigOptions
from explorer.cli.shell import Report, StageContext, stage
from store.errors import InputError

OPTIONS = ConfigOptions("explorer.refusal_tokens:RefusalTokensConfig")


def summary_text(f: dict[str, Any]) -> str:
    shown = ", ".join(f"{t!r} ({r} refusals, {a} answers)" for t, r, a in f["tokens"]) or "none met the bar; the fast score keeps the family's"
    def why(refused: int, answered: int) -> str:
        if refused / max(refused + answered, 1) < f["min_share"]:
            return f"opens answers too: under {f['min_share']:.0%} refusals"
        return f"opens fewer than {f['min_count']} refusals"

    rejected = "; ".join(f"{t!r} ({r} refusals, {a} answers: {why(r, a)})" for t, r, a in f["rejected"][:5]) or "none"
    return "\n".join([
        f"openers    {shown}",
        f"left out   {rejected}",
        f"checked    {f['generated']} prompts with a cached generation ({f['refused_by_generation']} refused by phrase), fast score > {f['threshold']:+.2f}:",
        f"           {f['disagreements_before']} disagree with the generation scoring {', '.join(map(repr, f['old_tokens']))}; "
        f"{f['disagreements_after']} with the model's own openers",
    ])


@stage("refusal-tokens", OPTIONS, demo=(), needs_sae=False)
def refusal_tokens(ctx: StageContext) -> Report:
    """The model's own refusal opening tokens (e.g. "\\n\\n" before "I'm sorry"), from its cached
    generations; the live fast score of every later stage uses them (stored in the default run;
    a study cached with explicit --refusal-tokens keeps those)."""
    from explorer.refusal_tokens import run_refusal_tokens

    if ctx.run != "default":
        raise InputError("the fast score reads the openers from the default run; leave out --run")
    if ctx.study.meta.config.get("refusal_tokens"):
        raise InputError(f"this study was cached with --refusal-tokens {','.join(ctx.study.meta.config['refusal_tokens'])}; those stay in force")
    config = ctx.config()
    result, summary = run_refusal_tokens(ctx.study, ctx.live([]), config)
    return Report(result, config, summary, summary_text(summary))
