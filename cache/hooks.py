"""The one hook layer (ARCHITECTURE §6): finding the decoder blocks, reading and replacing a
block's hidden state, capturing residuals, and hook handles that are always removed.

The cache (``cache.forward``), the interventions (``cache.interventions``,
``cache.directions``) and the ablation evaluator (``explorer.evaluate``) all go through it, so
"layer L" means the same thing everywhere: the output of ``decoder_layers(model)[L]``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
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


class _StopForward(Exception):
    """Raised by ``capture_resid(stop=True)`` after the last requested layer."""


class Residuals(dict):
    """``{layer: [residual per forward]}`` from ``capture_resid``; ``as_tuple`` records whether
    the blocks returned a tuple (older transformers) or a bare tensor (None: nothing ran)."""

    as_tuple: bool | None = None

    def last(self) -> dict[int, torch.Tensor]:
        """The residual of the latest forward at each layer that saw one."""
        return {layer: seen[-1] for layer, seen in self.items() if seen}


@contextmanager
def capture_resid(model: nn.Module, layers: Sequence[int], *, stop: bool = False, detach: bool = True) -> Iterator[Residuals]:
    """Capture the residual at ``layers`` (block outputs, detached), one tensor per forward.

    Hooks registered earlier (edits, ablations) run first, so the capture sees their effect.
    With ``stop=True`` the forward is cut short after the last requested layer: the model
    call raises an internal exception that this context manager swallows, so put the model
    call last in the ``with`` block. ``detach=False`` keeps the autograd graph, for gradients
    of something computed from the captured residual (attribution to earlier inputs).
    """
    blocks = decoder_layers(model)
    wanted = sorted(set(layers))
    for layer in wanted:
        check_layer(blocks, layer)
    out = Residuals({layer: [] for layer in wanted})
    last = wanted[-1] if wanted else None

    def make_hook(layer: int) -> Callable:
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            out.as_tuple = isinstance(output, tuple)
            hidden = block_hidden(output)
            out[layer].append(hidden.detach() if detach else hidden)
            if stop and layer == last:
                raise _StopForward

        return hook

    with collected_hooks() as handles:
        for layer in wanted:
            handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
        try:
            yield out
        except _StopForward:
            pass


@contextmanager
def transform_resid(model: nn.Module, layer: int, transform: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace block ``layer``'s output hidden state ``h`` [batch, seq, d_model] by
    ``transform(h)`` (same shape) for every forward inside the block: the splice of a bare
    reconstruction or a zero-ablation when an SAE's loss recovered is measured."""
    blocks = decoder_layers(model)
    check_layer(blocks, layer)

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        hidden = block_hidden(output)
        return replace_hidden(output, transform(hidden).to(dtype=hidden.dtype, device=hidden.device))

    with collected_hooks() as handles:
        handles.append(blocks[layer].register_forward_hook(hook))
        yield
