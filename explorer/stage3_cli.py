"""`refusal-explorer analyze experiments|fm|dormant STUDY.h5`: stage 3, headless.

``register(group)`` adds the three commands to the ``analyze`` group. ``experiments`` and
``dormant`` load the study's model and SAEs again (``fm`` needs no model), run with progress
bars, write their result under /analysis/<run>/<stage> (atomically, with the config) and print
a short summary. User mistakes are one line on stderr and exit status 2.
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


def _greedy(study: Any, run: str, path: Path) -> Any:
    from explorer.results import GreedyResult

    greedy = GreedyResult.load(study, run)
    if greedy is None:
        raise InputError(f"no greedy result in run {run!r} yet; run `refusal-explorer analyze greedy {path}` first")
    return greedy


def _num(value: float | None, fmt: str = "+.2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


_run_option = click.option("--run", default="default", show_default=True, help="Analysis run name (results go to /analysis/RUN).")
_device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


@click.command("experiments")
@click.argument("study", type=click.Path(path_type=Path))
@_run_option
@click.option("--n-experiments", type=int, default=200, show_default=True, help="Random ablation subsets (besides all-off/all-on/single rows).")
@click.option("--sampling", type=click.Choice(["bernoulli", "uniform-size"]), default="bernoulli", show_default=True, help="How random subsets are drawn.")
@click.option("--p", type=float, default=0.5, show_default=True, help="bernoulli: probability that a latent is ablated.")
@click.option("--max-other", type=int, default=48, show_default=True, help="Latents besides the minimal sets (the most active on the prompts).")
@click.option("--singles/--no-singles", default=True, show_default=True, help="One row per latent ablated alone.")
@click.option("--leave-one-out", is_flag=True, help="Also one row per latent with every other column ablated.")
@click.option("--prompts", help="Prompt indices the scores average over (default: the greedy sets' prompts).")
@click.option("--max-prompts", type=int, default=8, show_default=True)
@click.option("--joint/--no-joint", "include_joint", default=True, show_default=True, help="Count a joint greedy set among the minimal sets.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-batch", type=int, default=32, show_default=True, help="Rows (subset × prompt) per batched forward.")
@_device_option
@_one_line_errors
def experiments_command(study: Path, run: str, prompts: str | None, device: str, **options: Any) -> None:
    """Random ablation subsets over the minimal-set and other active latents, scored in batches."""
    from explorer.experiments import ExperimentConfig, run_experiments
    from store import Study

    config = ExperimentConfig(prompts=_ints(prompts, "--prompts"), **options)
    with Study(study) as opened:
        greedy = _greedy(opened, run, study)
        live = _live(opened, device, [int(greedy.layer)])
        result, summary = run_experiments(opened, live, greedy, config)
    result.save(study, run, config=asdict(config))
    per_100 = 100 * summary["seconds"] / max(1, summary["n_rows"])
    click.echo(
        f"experiments layer {summary['layer']}, {summary['n_rows']} subsets over {summary['n_latents']} latents "
        f"({summary['n_minimal']} in minimal sets), mean of {len(summary['prompts'])} prompts {summary['prompts']}\n"
        f"scheme     {summary['scheme']}\n"
        f"score      nothing ablated {_num(summary['all_off'])}, all {_num(summary['all_on'])}, minimal sets {_num(summary['minimal'])}; "
        f"mean {_num(summary['mean'])} ({summary['below_threshold']:.0%} below {summary['threshold']:+.2f}, "
        f"{summary['mean_ablated']:.1f} latents ablated on average)\n"
        f"cost       {summary['seconds']:.1f} s ({per_100:.1f} s per 100 subsets), {summary['forwards_from_layer']} batched forwards "
        f"from layer {summary['layer']} ({summary['rows']} rows)\n"
        f"saved      {study}:/analysis/{run}/experiments"
    )


@click.command("fm")
@click.argument("study", type=click.Path(path_type=Path))
@_run_option
@click.option("--rank", type=int, default=8, show_default=True, help="Factor dimension k of V.")
@click.option("--l2-w", type=float, default=1e-4, show_default=True, help="L2 penalty on the linear weights.")
@click.option("--l2-v", type=float, default=1e-3, show_default=True, help="L2 penalty on the factors.")
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--max-epochs", type=int, default=400, show_default=True)
@click.option("--patience", type=int, default=25, show_default=True, help="Early-stopping patience in epochs.")
@click.option("--holdout-fraction", type=float, default=0.2, show_default=True, help="Experiments held out for the reported R².")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--top", type=int, default=5, show_default=True, help="Prompts listed by how much refusal the FM says their latents drive.")
@_one_line_errors
def fm_command(study: Path, run: str, top: int, **options: Any) -> None:
    """Fit a factorization machine to the experiments; score it over every cached prompt."""
    from explorer.fm import FMConfig
    from explorer.interactions import format_r2, run_fm, score_cached_codes
    from explorer.results import ExperimentResult
    from store import Study

    try:
        config = FMConfig(**options)
    except ValueError as error:
        raise InputError(f"bad FM option: {error}") from None
    with Study(study) as opened:
        experiments = ExperimentResult.load(opened, run)
        if experiments is None:
            raise InputError(f"no experiments in run {run!r} yet; run `refusal-explorer analyze experiments {study}` first")
        result, summary = run_fm(experiments, config)
        # pooled over the post-instruction tokens, where refusal is decided (see score_cached_codes)
        scores = score_cached_codes(opened, result, prompt_tokens=opened.meta.n_positions)
        labels = opened.column("label")
    result.save(study, run, config=asdict(config) | {"experiments_scheme": experiments.scheme})
    pairs = lambda items: ", ".join(f"{a}×{b} {v:+.2f}" for a, b, v in items) or "none"  # noqa: E731
    tops = ", ".join(f"{p} ({labels[p]}, {d:+.2f})" for p, d in scores.top_prompts(top))
    drive = scores.prompt_drive
    means = ", ".join(f"{label} {drive[labels == label].mean():+.2f}" for label in sorted(set(labels.tolist())))
    click.echo(
        f"fm         layer {result.layer}, {summary['n_latents']} latents, rank {config.rank}, {summary['n_experiments']} experiments "
        f"({summary['n_holdout']} held out); best epoch {summary['best_epoch']} of {summary['epochs']}\n"
        f"R²         FM train {format_r2(result.r2_train)}, holdout {format_r2(result.r2_holdout)}; "
        f"linear train {format_r2(summary['r2_linear_train'])}, holdout {format_r2(result.r2_linear_holdout)}\n"
        f"main       most negative w (ablating lowers refusal): "
        + ", ".join(f"{i} {w:+.2f}" for i, w in summary["strongest_main"]) + "\n"
        f"pairs      positive: {pairs(summary['positive_pairs'])}\n"
        f"           negative: {pairs(summary['negative_pairs'])}\n"
        f"via pairs  latents with ≥ 50% of their effect from interactions: "
        + (", ".join(f"{i} ({s:.0%})" for i, s in summary["interaction_driven"]) or "none") + "\n"
        f"cache      predicted refusal drop from ablating the latents active at each prompt's post-instruction tokens: mean {means}; top {tops}\n"
        f"saved      {study}:/analysis/{run}/fm"
    )


@click.command("dormant")
@click.argument("study", type=click.Path(path_type=Path))
@_run_option
@click.option("--layers", help="Layers to re-encode (default: the greedy layer and every later layer with an SAE).")
@click.option("--baseline-max", type=float, default=0.0, show_default=True, help="Max baseline activation of a dormant latent.")
@click.option("--min-activation", type=float, default=0.0, show_default=True, help="A latent is woken above this activation.")
@click.option("--max-per-layer", type=int, default=32, show_default=True, help="Woken latents tested per prompt and layer.")
@click.option("--restore-threshold", type=float, default=0.05, show_default=True, help="Restores refusal if ablating it too lowers the score by more.")
@click.option("--prompts", help="Only the greedy sets of these prompts.")
@click.option("--max-sets", type=int, default=8, show_default=True)
@click.option("--joint", "include_joint", is_flag=True, help="Also analyse the joint greedy set.")
@click.option("--max-batch", type=int, default=16, show_default=True)
@_device_option
@_one_line_errors
def dormant_command(study: Path, run: str, layers: str | None, prompts: str | None, device: str, **options: Any) -> None:
    """Latents silent at baseline that wake up when the minimal set is ablated, and which restore refusal."""
    from explorer.dormant import DormantConfig, run_dormant
    from store import Study

    config = DormantConfig(layers=_ints(layers, "--layers"), prompts=_ints(prompts, "--prompts"), **options)
    with Study(study) as opened:
        greedy = _greedy(opened, run, study)
        source = int(greedy.layer)
        wanted = list(config.layers) if config.layers is not None else [source, *(layer for layer in opened.meta.saes if layer > source)]
        early = [layer for layer in wanted if layer < source]
        if early:
            raise InputError(f"layer {early[0]} comes before the greedy layer {source}; dormant latents are searched at or after it")
        missing = [layer for layer in wanted if layer not in opened.meta.saes]
        if missing:
            raise InputError(f"layer {missing[0]} has no SAE in this study; run `refusal-explorer cache --sae {missing[0]}=…` first")
        live = _live(opened, device, sorted({source, *wanted}))
        result, summary = run_dormant(opened, live, greedy, config)
    result.save(study, run, config=asdict(config))
    lines = [f"dormant    minimal sets ablated at layer {result.source_layer}; re-encoded at layers {summary['layers']}"]
    for info in summary["prompts"]:
        lines.append(
            f"prompt {info['prompt']:<4} |S|={info['set_size']}: score {info['baseline']:+.2f} -> {info['ablated']:+.2f}; "
            f"{info['woken']} woken, {info['restoring']} restore refusal"
            + (f" (ablating those too: {info['all_restoring_ablated']:+.2f})" if info["restoring"] else "")
        )
    lines.append("by layer   " + ", ".join(f"{layer}: {n} woken / {r} restoring" for layer, (n, r) in summary["by_layer"].items()))
    if summary["strongest"]:
        lines.append("strongest  " + ", ".join(f"L{layer}#{latent} on {p} ({e:+.2f})" for p, layer, latent, e in summary["strongest"]))
        lines.append("fires on   " + ", ".join(f"{token!r} ×{n}" for token, n in summary["tokens"]))
    lines.append(f"saved      {study}:/analysis/{run}/dormant")
    click.echo("\n".join(lines))


def register(group: click.Group) -> None:
    """Add ``experiments``, ``fm`` and ``dormant`` to the ``analyze`` group."""
    for command in (experiments_command, fm_command, dormant_command):
        group.add_command(command)
