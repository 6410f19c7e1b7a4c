"""`refusal-explorer train-sae`: train TopK SAEs for a model's residual stream.

Registered on the main group by ``explorer.cli``; heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from explorer.cli_support import int_list, one_line_errors


_friendly = one_line_errors("cached activations are kept (rerun the same command to continue)")


def _canonical_command(ctx: click.Context) -> list[str]:
    """The command as a user would type it: every option that differs from its default."""
    words = ["refusal-explorer", "train-sae"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        value = ctx.params.get(param.name)
        if value is None or value == param.get_default(ctx) or (param.multiple and not value):
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            words.append(flag)
        else:
            for item in value if param.multiple else (value,):
                words += [flag, _word(item)]
    return words


def _word(value: object) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


@click.command("train-sae")
@click.option("--model", default="default", show_default=True, help="'default' (the embedded model), a local directory, or a Hugging Face id already in the local cache.")
@click.option("--layers", required=True, help="Comma-separated layers, e.g. 12,18 (layer L = output of block L); one activation pass serves them all.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory; SAEs go to OUT/layer_<L>/.")
@click.option("--harmful", type=click.Path(path_type=Path), help="Harmful prompts (.json/.jsonl/.csv/.txt); omit both files for the built-in demo set.")
@click.option("--harmless", type=click.Path(path_type=Path), help="Harmless prompts, same formats.")
@click.option("--harmful-column", help="CSV column / JSON key of the harmful prompts.")
@click.option("--harmless-column", help="CSV column / JSON key of the harmless prompts.")
@click.option("--text", "text_files", multiple=True, type=click.Path(path_type=Path), help="Extra UTF-8 text file for the corpus (repeatable).")
@click.option("--doc-packages", default="stdlib,numpy,torch,transformers", show_default=True, help="Installed packages whose docstrings fill the corpus ('stdlib' = Python's library; '' = none).")
@click.option("--tokens", "n_tokens", type=int, default=100_000, show_default=True, help="Training tokens to gather.")
@click.option("--context", type=int, default=128, show_default=True, help="Longest chunk in tokens.")
@click.option("--chat-fraction", type=float, default=0.3, show_default=True, help="Share of docstrings wrapped as chat turns.")
@click.option("--holdout-fraction", type=float, default=0.25, show_default=True, help="Share of each prompt label held out for the metrics.")
@click.option("--d-sae", type=int, default=2048, show_default=True, help="Number of latents.")
@click.option("--k", type=int, default=32, show_default=True, help="Active latents per token (TopK).")
@click.option("--epochs", type=float, default=6.0, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--batch-size", type=int, default=1024, show_default=True, help="Training batch in tokens.")
@click.option("--dead-window", "dead_window_tokens", type=int, default=50_000, show_default=True, help="Tokens without firing after which a latent counts as dead (aux-k loss).")
@click.option("--massive-tokens", type=click.Choice(["rescale", "drop", "keep"]), default="rescale", show_default=True, help="Training treatment of massive-norm tokens (first token, some template tokens).")
@click.option("--forward-batch-size", type=int, default=8, show_default=True, help="Sequences per model forward pass.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True, help="Model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
@click.option("--activations", type=click.Path(path_type=Path), help="Activation cache file (default OUT/activations.h5); rerunning continues it.")
@click.option("--overwrite", is_flag=True, help="Replace SAEs already in OUT.")
@_friendly
def train_sae_command(**options: Any) -> None:
    """Train TopK SAEs (sae-lens trainer) on an offline corpus; writes weights + metrics."""
    from cache.train_sae import TrainSAEConfig, train_saes

    options["layers"] = int_list(options["layers"], "--layers")
    options["text_files"] = tuple(options["text_files"])
    options["doc_packages"] = tuple(p.strip() for p in options["doc_packages"].split(",") if p.strip())
    config = TrainSAEConfig(**options)
    results = train_saes(config, command=_canonical_command(click.get_current_context()))
    for layer, m in sorted(results.items()):
        click.echo(
            f"layer {layer}: explained variance {m['explained_variance']:.3f} "
            f"(without first/massive-norm tokens {m['explained_variance_ordinary_tokens']:.3f}, "
            f"post-instruction {m['explained_variance_post_instruction']:.3f}), "
            f"L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}  -> {config.layer_dir(layer)}"
        )
