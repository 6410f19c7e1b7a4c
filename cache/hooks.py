"""Model plumbing the forward-hook interventions share: the decoder stack, block outputs, and
hook handles that are always removed."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from store.errors import InputError


def decoder_stack(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """``(base_model, layers)`` for an HF causal LM (``model.model.layers``) or a bare decoder."""
    for base in (getattr(model, "model", None), model):
        if base is not None and isinstance(getattr(base, "layers", None), nn.ModuleList):
            return base, base.layers
    raise TypeError(
        f"{type(model).__name__} has no decoder layers at .model.layers or .layers; "
        "only HF decoder-only models (Qwen2, Gemma2, Llama, ...) are supported"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks; "layer L" is the output of ``decoder_layers(model)[L]``."""
    return decoder_stack(model)[1]


def block_hidden(output: Any) -> torch.Tensor:
    """The hidden state in a block's (or submodule's) output, which HF returns bare or as a tuple's
    first element depending on the model and version."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden state swapped for ``hidden``, in the same shape (tuple or bare)."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def check_layer(layers: nn.ModuleList, layer: int) -> None:
    if not 0 <= layer < len(layers):
        raise InputError(
            f"layer {layer} is out of range: the model has {len(layers)} layers "
            f"(0-{len(layers) - 1})"
        )


@contextmanager
def collected_hooks() -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Collect hook handles; remove them all on exit, exceptions included."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        yield handles
    finally:
        for handle in reversed(handles):
            handle.remove()


@dataclass
class ForwardState:
    """Per-forward facts the layer hooks need: how many tokens the KV cache already holds."""

    past: int = 0


def cached_length(kwargs: dict) -> int:
    """Tokens the KV cache of a forward already holds (0 for a prompt forward).

    The cache is found by what it is, not by its keyword: transformers 4.x passes it as
    ``past_key_values``, 5.x as ``cache`` (the old name is an alias until 5.40).
    """
    for value in kwargs.values():
        if hasattr(value, "get_seq_length"):
            return int(value.get_seq_length())
    return 0


def track_past(base: nn.Module, state: ForwardState, handles: list) -> None:
    def pre_hook(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
        state.past = cached_length(kwargs)

    handles.append(base.register_forward_pre_hook(pre_hook, with_kwargs=True))


def kv_cache_kwargs(model: nn.Module) -> dict[str, Any]:
    """A fresh KV cache as the keyword argument this transformers version's forward takes.

    Pass the same dict to every step of a hand-written decoding loop: the cache fills in
    place. transformers 5.x renamed ``past_key_values`` to ``cache``; asking the signature keeps
    both the locked and the newest releases on their current API, without deprecation warnings.
    """
    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    keyword = "cache" if "cache" in params else "past_key_values"
    return {keyword: DynamicCache(), "use_cache": True}
