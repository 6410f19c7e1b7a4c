"""Direction edits of the residual stream: projecting a direction out everywhere (Arditi et al.
2024) and adding one at a layer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from cache.hooks import block_hidden, check_layer, collected_hooks, decoder_stack, replace_hidden
from store.errors import InputError


def _unit(direction: torch.Tensor) -> torch.Tensor:
    direction = direction.detach().float().reshape(-1)
    norm = direction.norm()
    if not torch.isfinite(norm) or norm <= 0:
        raise InputError("the direction must be a non-zero finite vector")
    return direction / norm


def _project_out(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    u = unit.to(device=x.device)
    x32 = x.float()
    return (x32 - (x32 @ u)[..., None] * u).to(x.dtype)


def _residual_writers(layer: nn.Module) -> list[nn.Module]:
    """Submodules whose outputs are added to the residual stream inside a block.

    Gemma2-style blocks add the post-norms' outputs; Llama/Qwen2-style blocks add the
    attention's and the MLP's outputs. Unknown blocks: none (block inputs/outputs still are).
    """
    post_attn = getattr(layer, "post_attention_layernorm", None)
    post_ffw = getattr(layer, "post_feedforward_layernorm", None)
    if post_attn is not None and post_ffw is not None:
        return [post_attn, post_ffw]
    writers = (getattr(layer, "self_attn", None), getattr(layer, "mlp", None))
    return [m for m in writers if m is not None]


@contextmanager
def direction_ablation(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Project the unit ``direction`` out of the residual stream everywhere (Arditi et al.).

    Hooks: every block's input (so the embeddings too), every write into the residual inside
    a block (attention / MLP outputs, or Gemma2's post-norms), and every block's output, so
    the residual has no component along the direction at any layer.
    """
    _base, layers = decoder_stack(model)
    unit = _unit(direction)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden is not None and unit.numel() != int(hidden):
        raise InputError(
            f"the direction has {unit.numel()} dims but the model's hidden size is {hidden}"
        )

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            return (_project_out(args[0], unit), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": _project_out(kwargs["hidden_states"], unit)}
        return args, kwargs

    def out_hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        return replace_hidden(output, _project_out(block_hidden(output), unit))

    with collected_hooks() as handles:
        for layer in layers:
            handles.append(layer.register_forward_pre_hook(pre_hook, with_kwargs=True))
            for writer in _residual_writers(layer):
                handles.append(writer.register_forward_hook(out_hook))
            handles.append(layer.register_forward_hook(out_hook))
        yield


@contextmanager
def direction_addition(
    model: nn.Module, direction: torch.Tensor, layer: int, coeff: float = 1.0
) -> Iterator[None]:
    """Add ``coeff * direction`` (as given, not normalised) to the residual at ``layer`` (the
    output of block ``layer``), at every position."""
    _base, layers = decoder_stack(model)
    check_layer(layers, layer)
    vec = direction.detach().float().reshape(-1) * float(coeff)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden is not None and vec.numel() != int(hidden):
        raise InputError(
            f"the direction has {vec.numel()} dims but the model's hidden size is {hidden}"
        )

    def out_hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        h = block_hidden(output)
        return replace_hidden(output, (h.float() + vec.to(h.device)).to(h.dtype))

    with collected_hooks() as handles:
        handles.append(layers[layer].register_forward_hook(out_hook))
        yield
