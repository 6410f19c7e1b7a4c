"""The `refusal-explorer` command line.

Every user mistake surfaces as one line on stderr and exit status 2 (``InputError``); an
interrupted cache says how to resume. Heavy imports (torch, the apps) happen inside commands so
`--help` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cache.presets import PRESETS
from explorer.analyze_cli import analyze_group
from explorer.stage3_cli import register as register_stage3
from explorer.train_cli import train_sae_command
from explorer.cli_support import int_list, one_line_errors
from store.errors import InputError

DEMO_STUDY = Path("studies/demo.h5")


_friendly_errors = one_line_errors("committed work is kept (continue with --resume)")


def parse_layers(text: str) -> tuple[int, ...]:
    return int_list(text, "--layers")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Refusal Explorer: find the SAE latents that make a chat model refuse.

    \b
    Typical flow:
      refusal-explorer demo                    # everything on the embedded default model
      refusal-explorer cache --harmful H.json --harmless S.json --layers 12 --out study.h5
      refusal-explorer info study.h5
    """


@cli.command("cache")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="A paper setup: model id, refusal token, layers (key layer + sweep), SAEs, bf16 and a batch size for the GPU. Explicit options override it.")
@click.option("--model", default="default", show_default=True, help="'default' (embedded Qwen2.5-Coder-0.5B-Instruct), a local directory, or a Hugging Face id already in the local cache.")
@click.option("--harmful", type=click.Path(path_type=Path), help="Harmful prompts: .json, .jsonl, .csv or .txt. Omit both files for the built-in demo set.")
@click.option("--harmless", type=click.Path(path_type=Path), help="Harmless prompts, same formats.")
@click.option("--harmful-column", help="CSV column / JSON key of the harmful prompts (default: auto-detect).")
@click.option("--harmless-column", help="CSV column / JSON key of the harmless prompts.")
@click.option("--max-prompts", type=int, help="Use at most this many prompts of each label.")
@click.option("--layers", help="Comma-separated layers to cache, e.g. 6,12 (layer L = output of block L); required without --preset.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Study file (.h5) to write.")
@click.option("--positions", type=click.Choice(["post-instruction", "all"]), default="post-instruction", show_default=True, help="Cache residuals at the end-of-instruction template tokens, or at every token.")
@click.option("--generate", type=int, default=0, show_default=True, help="Greedy-generate N tokens per prompt and detect refusals by phrase.")
@click.option("--sae", "saes", multiple=True, help="SAE for a layer: LAYER=RELEASE:SAE_ID or LAYER=DIR (repeatable); codes are cached at every token.")
@click.option("--sae-layers", help="With --preset: layers that get the preset's SAE, e.g. 12,16, or 'none' (default: its key layer).")
@click.option("--sae-width", help="With --preset: SAE width, 16k or 65k (Gemma Scope), 32k or 128k (Llama Scope).")
@click.option("--refusal-tokens", help="Comma-separated first tokens that count as refusal (default: the model family's, e.g. I).")
@click.option("--refusal-threshold", type=float, default=-1.0, show_default=True, help="Fast-score log-odds above which a prompt counts as refused.")
@click.option("--refusal-phrases", type=click.Path(path_type=Path), help="Text file of refusal phrases, one per line, for the generation detector.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True, help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Prompts per forward pass (a preset picks it from the GPU's memory).")
@click.option("--resume", is_flag=True, help="Continue an interrupted study file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing study file.")
@click.option("--preflight-only", is_flag=True, help="Only check that model, SAEs, GPU memory and disk suffice, and print the estimates.")
@click.option("--no-preflight", is_flag=True, help="Skip the pre-flight check (its estimates are rough upper bounds).")
@_friendly_errors
def cache_command(**options: Any) -> None:
    """Run the model over harmful and harmless prompts and write a study file.

    \b
    Under torchrun (torchrun --nproc-per-node N -m explorer.cli cache ...), each process caches
    a shard of the prompts into OUT.rankR-of-N.h5 and rank 0 merges them into OUT.
    """
    from click.core import ParameterSource

    from cache import presets
    from cache.distributed import rank_device, run_distributed, torchrun_rank
    from cache.pipeline import CacheConfig, run_cache
    from cache.preflight import run_preflight

    context = click.get_current_context()
    explicit = {name for name in options if context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}
    preset, sae_width, preflight_only, no_preflight = (options.pop(k) for k in ("preset", "sae_width", "preflight_only", "no_preflight"))
    sae_layers = options.pop("sae_layers")
    if preflight_only and no_preflight:
        raise InputError("--preflight-only and --no-preflight exclude each other")
    options["layers"] = parse_layers(options["layers"]) if options["layers"] is not None else ()
    options["saes"] = tuple(options["saes"])
    tokens = options.pop("refusal_tokens")
    options["refusal_tokens"] = tuple(t.strip() for t in tokens.split(",")) if tokens else None
    rank = torchrun_rank()
    gpu = presets.gpu_memory(rank_device(options["device"], rank.local_rank) if rank else options["device"]) if preset else None
    options = presets.apply_preset(
        preset, options, explicit, sae_width=sae_width, gpu_total_bytes=gpu[1] if gpu else None,
        sae_layers=None if sae_layers is None else () if sae_layers.strip().lower() == "none" else parse_layers(sae_layers),
    )
    config = CacheConfig(**options)
    if rank is not None:
        path = run_distributed(config, rank, preflight=not no_preflight, preflight_only=preflight_only, echo=click.echo)
    else:
        if not no_preflight:
            click.echo(run_preflight(config).table())
        path = None if preflight_only else run_cache(config)
    if path is not None:
        _print_summary(path)


@cli.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@_friendly_errors
def merge_command(out: Path, shards: tuple[Path, ...], overwrite: bool) -> None:
    """Join shard files OUT.rankR-of-N.h5 (from a torchrun cache) into the study OUT.

    Needed only when the ranks ran on machines without a shared disk: copy every shard to one
    machine first. The result equals a single-process run; the shards are left in place.
    """
    from store.merge import merge_shards

    merge_shards(out, list(shards), overwrite=overwrite)
    _print_summary(out)


@cli.command("info")
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_friendly_errors
def info_command(study: Path, as_json: bool) -> None:
    """Summarise a study file: model, layers, prompts, refusal rates, analyses."""
    _print_summary(study, as_json=as_json)


def _print_summary(path: Path, *, as_json: bool = False) -> None:
    from store import Study

    with Study(path) as study:
        summary = study.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
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
        lines.append(f"sae        layer {layer}: {sae.get('spec') or sae.get('release')}  ({sae.get('architecture')}, {sae.get('d_sae')} latents)")
    lines.append(f"analyses   {', '.join(summary['analysis_runs']) or 'none yet'}")
    click.echo("\n".join(lines))


@cli.command("setup-model")
@_friendly_errors
def setup_model_command() -> None:
    """Assemble, verify (sha256) and convert the embedded default model once."""
    from cache.default_model import ensure_default_model

    click.echo(f"default model ready in {ensure_default_model()}")


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=DEMO_STUDY, show_default=True)
@click.option("--overwrite", is_flag=True, help="Start again even if the demo study exists.")
@click.option("--generate", type=int, default=24, show_default=True, help="Tokens generated per prompt.")
@_friendly_errors
def demo_command(out: Path, overwrite: bool, generate: int) -> None:
    """The whole pipeline on the embedded default model and the built-in prompts.

    Caches the prompts with the packaged SAEs, then runs every analysis stage on small budgets.
    Steps already in the study are skipped, so an interrupted demo continues where it stopped.
    """
    from explorer.demo import run_demo

    run_demo(out, overwrite=overwrite, generate=generate)
    _print_summary(out)
    click.echo(f"\nbrowse it: refusal-explorer tui {out}   or   refusal-explorer web {out}")


@cli.command("tui")
@click.argument("study", type=click.Path(path_type=Path), required=False)
@click.option("--run", default="default", show_default=True, help="Analysis run to show.")
@click.option("--layer", type=int, help="SAE layer to show (default: the first with codes).")
def tui_command(study: Path | None, run: str, layer: int | None) -> None:
    """Browse a study file in the terminal (works over SSH; no model needed)."""
    import app_tui

    sys.exit(app_tui.run(study, run=run, layer=layer))


@cli.command("web")
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Create a public Gradio share link (off by default).")
@click.option("--live", is_flag=True, help="Load the study's model and SAE for live ablation.")
@click.option("--run", default="default", show_default=True)
@_friendly_errors
def web_command(study: Path, host: str, port: int, share: bool, live: bool, run: str) -> None:
    """Serve the web demo of a study file."""
    import app_web

    app_web.serve(study, host=host, port=port, share=share, live=live, run=run)


register_stage3(analyze_group)
cli.add_command(analyze_group, "analyze")
cli.add_command(train_sae_command, "train-sae")


def main() -> None:
    cli(prog_name="refusal-explorer")


if __name__ == "__main__":
    main()
