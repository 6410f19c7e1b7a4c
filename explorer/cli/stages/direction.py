"""`refusal-explorer analyze direction STUDY.h5`: the refusal direction (stage 1)."""

from __future__ import annotations

from typing import Any

from explorer.cli.options import ConfigOptions
from explorer.cli.output import share
from explorer.cli.shell import Report, StageContext, stage

OPTIONS = ConfigOptions("explorer.direction:DirectionConfig")


def side_effect_lines(facts: dict[str, Any]) -> list[str]:
    """The ablation's changed first tokens and its random-direction control, as summary lines."""
    lines = []
    if facts["first_token_changes"]:
        shown = ", ".join(f"{a!r}→{b!r}" + (f" ×{n}" if n > 1 else "") for a, b, n in facts["first_token_changes"][:4])
        lines.append(f"changed    first tokens: {shown}")
    changed, kl = facts["random_argmax_change"], facts["random_kl"]
    if changed:
        lines.append(
            f"control    {len(changed)} random directions ablated: harmless argmax changed "
            f"{share(min(changed))}–{share(max(changed))}, KL {min(kl):.3f}–{max(kl):.3f}"
        )
    return lines


def generation_clause(f: dict[str, Any]) -> str:
    if not f.get("verified", True):
        return "not verified by generation (--verify-generate N); "
    if not f["refused_by_generation"]:
        return "no val prompt refused by generation, so no flip to count; "
    return f"generation flips {share(f['flip_rate'])} of {f['refused_by_generation']} refused; "


def summary_text(f: dict[str, Any]) -> str:
    return "\n".join([
        f"direction  layer {f['layer']}, position {f['position']} ({f['note']})",
        f"score      val harmful {f['baseline_score']:+.2f} -> {f['ablated_score']:+.2f} ablated "
        f"(drop {f['refusal_drop']:.2f}); KL on harmless {f['kl']:.3f}; adding it: +{f['induce']:.2f} on harmless",
        f"refused    fast score: {f['harmful_refused_fast']}/{f['val_harmful']} -> {f['harmful_refused_fast_ablated']} ablated; "
        + generation_clause(f) + f"harmless first-token argmax changed {share(f['argmax_change_rate'])} "
        f"(random directions' median {share(f['random_argmax_change_median'])})",
        *side_effect_lines(f),
    ])


@stage("direction", OPTIONS, needs_sae=False, demo=("--layers", "12,14,16,18", "--positions=-1", "--max-val-prompts", "10", "--verify-generate", "16"))
def direction(ctx: StageContext) -> Report:
    """Difference-in-means refusal direction, chosen by ablation drop under a KL limit."""
    from explorer.direction import run_direction

    config = ctx.config()
    result, summary = run_direction(ctx.study, ctx.live([]), config)
    return Report(result, config, summary, summary_text(summary))
