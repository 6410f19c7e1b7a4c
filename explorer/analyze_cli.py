"""`refusal-explorer analyze direction|candidates|greedy STUDY.h5`: stages 1–2, headless.

Each command loads the study's model (and SAE) again, runs its stage with progress bars,
writes its result under /analysis/<run>/<stage> of the study file (atomically, with its
config) and prints a short summary. User mistakes are one line on stderr and exit status 2.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from explorer.cli_support import int_list, one_line_errors
from store.errors import InputError


_one_line_errors = one_line_errors("nothing was written for this stage")


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    return None if text is None else int_list(text, what)


def _live(study: Any, device: str, sae_layers: list[int]) -> Any:
    """The study's model and SAEs; a seam the tests replace with tiny models."""
    from explorer.live import open_live

    return open_live(study, device=device, sae_layers=sae_layers)


def _sae_layer(study: Any, layer: int | None) -> int:
    if layer is None:
        with_codes = [layer for layer in study.meta.layers if study.has_codes(layer)]
        if not with_codes:
            raise InputError("this study has no SAE codes; re-cache it with `refusal-explorer cache --sae LAYER=…`")
        return with_codes[0]
    if layer not in study.meta.layers or not study.has_codes(layer):
        raise InputError(f"layer {layer} has no SAE codes in this study; run `refusal-explorer cache --sae {layer}=…` first")
    return layer


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"


def _side_effect_lines(summary: dict[str, Any]) -> str:
    lines = ""
    if summary["first_token_changes"]:
        shown = ", ".join(f"{a!r}→{b!r}" + (f" ×{n}" if n > 1 else "") for a, b, n in summary["first_token_changes"][:4])
        lines += f"changed    first tokens: {shown}\n"
    changed, kl = summary["random_argmax_change"], summary["random_kl"]
    if changed:
        lines += (
            f"control    {len(changed)} random directions ablated: harmless argmax changed "
            f"{_fmt(min(changed))}–{_fmt(max(changed))}, KL {min(kl):.3f}–{max(kl):.3f}\n"
        )
    return lines


@click.group("analyze", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def analyze_group() -> None:
    """Stages 1–2: refusal direction, candidate latents, minimal latent sets.

    \b
      refusal-explorer analyze direction STUDY.h5
      refusal-explorer analyze candidates STUDY.h5 --layer 12
      refusal-explorer analyze greedy STUDY.h5 --k 32 --order ascending
    """


_run_option = click.option("--run", default="default", show_default=True, help="Analysis run name (results go to /analysis/RUN).")
_device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


@analyze_group.command("direction")
@click.argument("study", type=click.Path(path_type=Path))
@_run_option
@click.option("--layers", help="Candidate layers, e.g. 8,12 (default: every cached layer).")
@click.option("--positions", help="Post-instruction positions, negative from the end, e.g. --positions=-1,-2 (default: all).")
@click.option("--kl-threshold", type=float, default=0.1, show_default=True, help="Max mean KL on harmless prompts.")
@click.option("--max-layer-fraction", type=float, default=0.8, show_default=True, help="Only layers below this share of the depth.")
@click.option("--min-induce", type=float, help="Also require adding the direction to raise harmless scores by this much.")
@click.option("--max-argmax-change", type=float, help="Also require at most this share of harmless prompts to change their first token, e.g. 0.05.")
@click.option("--max-val-prompts", type=int, help="At most this many held-out prompts per label.")
@click.option("--verify-generate", type=int, default=0, show_default=True, help="Generate N tokens to measure the flip rate by phrase detector.")
@click.option("--random-controls", type=int, default=3, show_default=True, help="Random directions to ablate as a control for the harmless side effect.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@_device_option
@_one_line_errors
def direction_command(study: Path, run: str, layers: str | None, positions: str | None, device: str, **options: Any) -> None:
    """Difference-in-means refusal direction, chosen by ablation drop under a KL limit."""
    from explorer.direction import DirectionConfig, run_direction
    from store import Study

    config = DirectionConfig(layers=_ints(layers, "--layers"), positions=_ints(positions, "--positions"), **options)
    with Study(study) as opened:
        live = _live(opened, device, [])
        result, summary = run_direction(opened, live, config)
    result.save(study, run, config=asdict(config))
    click.echo(
        f"direction  layer {summary['layer']}, position {summary['position']} ({summary['note']})\n"
        f"score      val harmful {summary['baseline_score']:+.2f} -> {summary['ablated_score']:+.2f} ablated "
        f"(drop {summary['refusal_drop']:.2f}); KL on harmless {summary['kl']:.3f}; adding it: +{summary['induce']:.2f} on harmless\n"
        f"refused    fast score: {summary['harmful_refused_fast']}/{summary['val_harmful']} -> {summary['harmful_refused_fast_ablated']} ablated; "
        f"generation flips {_fmt(summary['flip_rate'])} of {summary['refused_by_generation']} refused; "
        f"harmless first-token argmax changed {_fmt(summary['argmax_change_rate'])}\n"
        f"{_side_effect_lines(summary)}"
        f"saved      {study}:/analysis/{run}/direction"
    )


@analyze_group.command("candidates")
@click.argument("study", type=click.Path(path_type=Path))
@_run_option
@click.option("--layer", type=int, help="SAE layer (default: the first with codes).")
@click.option("--top-k", type=int, default=50, show_default=True, help="Length of the stored top lists.")
@click.option("--direction", type=click.Choice(["chosen", "layer"]), default="chosen", show_default=True, help="The chosen direction, or the difference in means at this layer.")
@click.option("--positions", type=click.Choice(["post-instruction", "all"]), default="post-instruction", show_default=True, help="Where attribution is summed.")
@click.option("--split", type=click.Choice(["train", "all"]), default="train", show_default=True, help="Harmful prompts attributed on.")
@click.option("--max-prompts", type=int, default=32, show_default=True)
@click.option("--ig-steps", type=int, default=16, show_default=True, help="Integrated-gradient steps (0 = skip IG).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@_device_option
@_one_line_errors
def candidates_command(study: Path, run: str, layer: int | None, device: str, **options: Any) -> None:
    """Rank SAE latents by decoder cosine with the direction, attribution and IG."""
    from explorer.candidates import CandidateConfig, run_candidates
    from explorer.results import DirectionResult
    from store import Study

    with Study(study) as opened:
        layer = _sae_layer(opened, layer)
        direction = DirectionResult.load(opened, run)
        if direction is None:
            raise InputError(f"no direction in run {run!r} yet; run `refusal-explorer analyze direction {study}` first")
        config = CandidateConfig(layer=layer, **options)
        live = _live(opened, device, [layer])
        result, summary = run_candidates(opened, live, direction.direction, direction.position, config)
    result.save(study, run, config=asdict(config) | {"direction_layer": direction.layer, "direction_position": direction.position})
    click.echo(
        f"candidates layer {layer}, {summary['prompts']} harmful prompts\n"
        f"top cosine       {summary['top_cosine']}\n"
        f"top attribution  {summary['top_attribution']}\n"
        f"top IG           {summary['top_ig']}\n"
        f"overlap@{summary['k']}  cosine∩attribution {summary['overlap_cosine_attribution']:.0%}, cosine∩IG "
        f"{summary['overlap_cosine_ig']:.0%}, attribution∩IG {summary['overlap_attribution_ig']:.0%}\n"
        f"IG check   drop {summary['ig_drop']:.2f} = latents {summary['ig_latent_share']:.2f} + error term {summary['ig_error_share']:.2f}\n"
        f"saved      {study}:/analysis/{run}/candidates"
    )


@analyze_group.command("greedy")
@click.argument("study", type=click.Path(path_type=Path))
@_run_option
@click.option("--layer", type=int, help="SAE layer (default: the candidates' layer).")
@click.option("--k", type=int, default=32, show_default=True, help="Top candidates the search starts from.")
@click.option("--ranking", type=click.Choice(["cosine", "attribution", "integrated_gradients"]), default="cosine", show_default=True)
@click.option("--all-latents", is_flag=True, help="Rank among all latents, not only those active on the prompt.")
@click.option("--order", type=click.Choice(["ascending", "thresholded"]), default="ascending", show_default=True, help="Elimination rule.")
@click.option("--p-threshold", type=float, default=0.01, show_default=True, help="thresholded: keep a latent whose removal moves p(refusal) more than this.")
@click.option("--threshold", type=float, help="Refusal score below which a prompt is flipped (default: the study's).")
@click.option("--prompts", help="Prompt indices to search, e.g. 0,3,7 (default: refused harmful prompts).")
@click.option("--max-prompts", type=int, default=8, show_default=True)
@click.option("--joint", is_flag=True, help="Also search one set that flips all the prompts at once.")
@click.option("--generate", type=int, default=24, show_default=True, help="Tokens generated to verify each set (0 = skip).")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Variants per batched forward.")
@click.option("--no-prefix-pass", is_flag=True, help="ascending: eliminate strictly one latent per step from the start (slower).")
@_device_option
@_one_line_errors
def greedy_command(
    study: Path, run: str, layer: int | None, prompts: str | None, all_latents: bool, no_prefix_pass: bool, device: str, **options: Any,
) -> None:
    """Minimal latent sets whose ablation flips refusal, by greedy elimination."""
    from explorer.greedy import GreedyConfig, run_greedy
    from explorer.results import CandidateResult
    from store import Study

    with Study(study) as opened:
        candidates = CandidateResult.load(opened, run)
        if candidates is None:
            raise InputError(f"no candidates in run {run!r} yet; run `refusal-explorer analyze candidates {study}` first")
        layer = _sae_layer(opened, candidates.layer if layer is None else layer)
        config = GreedyConfig(
            layer=layer, prompts=_ints(prompts, "--prompts"), active_only=not all_latents, prefix_pass=not no_prefix_pass, **options,
        )
        live = _live(opened, device, [layer])
        result, summary = run_greedy(opened, live, candidates, config)
    result.save(study, run, config=asdict(config))
    lines = [
        f"greedy     layer {layer}, top {config.k} by {config.ranking}, {config.order} order, flip below {result.threshold:+.2f}",
        f"searched   {summary['searched']} prompts; start set flips {summary['start_flips']}"
        + (f" (not at K: prompts {summary['no_flip_at_k']})" if summary["no_flip_at_k"] else ""),
        f"set sizes  {summary['sizes']}  (mean Jaccard overlap {summary['mean_jaccard']:.2f}; shared: {summary['shared_latents']})",
    ]
    if summary["joint_start_flips"] is not None:
        lines.append(f"joint set  {summary['joint_size'] if summary['joint_start_flips'] else 'start set does not flip every prompt'}")
    if config.generate:
        lines.append(f"verified   {summary['verified']} sets comply by generation, {summary['verified_fail']} still refuse")
    lines.append(f"cost       {summary['forwards_from_layer']} batched forwards from layer {layer} ({summary['rows']} rows)"
                 f" + {summary['prepare_forwards']} to layer {layer}")
    lines.append(f"saved      {study}:/analysis/{run}/greedy")
    click.echo("\n".join(lines))
