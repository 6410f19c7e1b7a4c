"""Forward-hook interventions on HF decoder models: SAE latent edits (direction edits live in
``cache.directions``).

SAE splice
----------
At every layer ``L`` in ``saes`` a forward hook on ``model.model.layers[L]`` replaces the
block's output hidden state ``x`` by::

    codes  = encode(x)
    error  = x - decode(codes)            # from the SAME, unedited x
    x_new  = decode(edit(codes)) + error

so with no edit ``x_new == x`` up to float rounding and the model's logits are unchanged; an
edit changes the residual by exactly ``decode(edited) - decode(codes)``. The error term is
what keeps the SAE's reconstruction loss out of the intervention; without it an "ablation"
would also remove everything the SAE fails to reconstruct.

Positions
---------
An edit with ``positions=None`` applies to every position of every forward, including tokens
generated under a KV cache. Explicit positions index the prompt forward (the one with an
empty cache); negative ones count from its end, so batches must be left-padded for "-1" to
mean each prompt's last token (non-negative positions count padding tokens too). On cached
decoding steps explicit-position edits do nothing; with ``use_cache=False`` every forward is
a prompt forward over the whole sequence so far.

Batched variants
----------------
``LatentEdit.rows`` restricts an edit to some batch rows, and ``RowMaskEdit`` carries a
``[batch, d_sae]`` boolean mask: row ``b`` edits the latents ``mask[b]``. One forward over B
copies of a prompt thus evaluates B different ablation sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from cache.hooks import (
    ForwardState,
    block_hidden,
    check_layer,
    collected_hooks,
    decoder_layers,
    decoder_stack,
    replace_hidden,
    track_past,
)
from store.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE

EditMode = Literal["ablate", "scale", "clamp"]
EDIT_MODES: tuple[str, ...] = ("ablate", "scale", "clamp")


# --------------------------------------------------------------------------------------------
# Edits
# --------------------------------------------------------------------------------------------


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, int):
        values = (values,)
    try:
        out = tuple(values)
    except TypeError:
        raise InputError(f"{what} must be a sequence of integers, got {values!r}") from None
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{what} must be integers, got {v!r}")
    return out


def _check_mode(mode: str, value: float | None) -> None:
    if mode not in EDIT_MODES:
        raise InputError(f"unknown edit mode {mode!r}; use one of {', '.join(EDIT_MODES)}")
    if mode == "ablate":
        if value is not None:
            raise InputError("an ablate edit takes no value (it sets the latents to 0)")
    elif value is None or not math.isfinite(float(value)):
        what = "a factor k" if mode == "scale" else "a value c"
        raise InputError(f"a {mode} edit needs {what} (finite number), got {value!r}")


def _normalise_mode_and_positions(edit: LatentEdit | RowMaskEdit) -> None:
    """Validation both edit kinds share: mode/value, and positions as a non-empty int tuple."""
    _check_mode(edit.mode, edit.value)
    if edit.value is not None:
        object.__setattr__(edit, "value", float(edit.value))
    if edit.positions is not None:
        positions = _int_tuple(edit.positions, "edit positions")
        if not positions:
            raise InputError("edit positions is empty; use None for all positions")
        object.__setattr__(edit, "positions", positions)


@dataclass(frozen=True, kw_only=True)
class LatentEdit:
    """Edit some latents of the SAE at one layer."""

    layer: int
    """The layer (output of decoder block ``layer``); an SAE must be loaded there."""
    latents: tuple[int, ...]
    """Latent indices to edit."""
    mode: EditMode = "ablate"
    """``ablate``: set to 0; ``scale``: multiply by ``value`` (k); ``clamp``: set to
    ``value`` (c)."""
    value: float | None = None
    """k for scale, c for clamp; None for ablate."""
    positions: tuple[int, ...] | None = None
    """None = every position (generated tokens too); else prompt positions, negative from the
    end of the prompt (left-padded batches)."""
    rows: tuple[int, ...] | None = None
    """None = every batch row; else only these rows (batched variants)."""

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise InputError(f"edit layer must be a non-negative integer, got {self.layer!r}")
        latents = _int_tuple(self.latents, "edit latents")
        if not latents:
            raise InputError(f"edit at layer {self.layer} lists no latents")
        if min(latents) < 0:
            raise InputError(f"edit latents must be non-negative, got {min(latents)}")
        object.__setattr__(self, "latents", latents)
        _normalise_mode_and_positions(self)
        if self.rows is not None:
            rows = _int_tuple(self.rows, "edit rows")
            if not rows or min(rows) < 0:
                raise InputError("edit rows must be a non-empty list of non-negative integers")
            object.__setattr__(self, "rows", rows)


@dataclass(frozen=True, kw_only=True, eq=False)
class RowMaskEdit:
    """A different latent set per batch row: row ``b`` edits the latents where ``mask[b]``."""

    layer: int
    """The layer (output of decoder block ``layer``)."""
    mask: torch.Tensor
    """Bool ``[batch, d_sae]``; the forward's batch size must equal ``mask.shape[0]``."""
    mode: EditMode = "ablate"
    """As in ``LatentEdit``."""
    value: float | None = None
    """As in ``LatentEdit``."""
    positions: tuple[int, ...] | None = None
    """As in ``LatentEdit``."""

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise InputError(f"edit layer must be a non-negative integer, got {self.layer!r}")
        if not isinstance(self.mask, torch.Tensor) or self.mask.ndim != 2:
            raise InputError("RowMaskEdit.mask must be a [batch, d_sae] tensor")
        if self.mask.dtype != torch.bool:
            object.__setattr__(self, "mask", self.mask != 0)
        _normalise_mode_and_positions(self)


Edit = LatentEdit | RowMaskEdit


def _position_index(
    positions: tuple[int, ...] | None, seq_len: int, past: int
) -> torch.Tensor | None | Literal[False]:
    """Index tensor of the positions to edit in this forward; None = all; False = none."""
    if positions is None:
        return None
    if past > 0:
        return False
    idx = []
    for p in positions:
        q = p + seq_len if p < 0 else p
        if not 0 <= q < seq_len:
            raise InputError(f"edit position {p} is outside the prompt (length {seq_len})")
        idx.append(q)
    return torch.tensor(sorted(set(idx)), dtype=torch.long)


def _latent_range_message(edit: LatentEdit, d_sae: int) -> str:
    return (
        f"latent {max(edit.latents)} is out of range: "
        f"the SAE at layer {edit.layer} has {d_sae} latents"
    )


def _edit_values(sub: torch.Tensor, mode: str, value: float | None) -> torch.Tensor:
    if mode == "ablate":
        return torch.zeros_like(sub)
    if mode == "scale":
        return sub * value
    return torch.full_like(sub, value)


def apply_edits(codes: torch.Tensor, edits: Sequence[Edit], *, past: int = 0) -> torch.Tensor:
    """Apply edits (in order) to codes ``[batch, seq, d_sae]``; returns a new tensor.

    ``past`` is the number of tokens already in the KV cache (0 for a prompt forward).
    Differentiable in ``codes`` (no in-place ops on the input).
    """
    if not edits:
        return codes
    batch, seq_len, d_sae = codes.shape
    out = codes.clone()  # [batch, seq, d_sae]
    device = codes.device
    for edit in edits:
        pos = _position_index(edit.positions, seq_len, past)
        if pos is False:
            continue
        if isinstance(edit, LatentEdit):
            if max(edit.latents) >= d_sae:
                raise InputError(_latent_range_message(edit, d_sae))
            if edit.rows is not None and max(edit.rows) >= batch:
                raise InputError(
                    f"edit row {max(edit.rows)} is out of range for a batch of {batch}"
                )
            if edit.rows is None:
                r = torch.arange(batch, device=device)
            else:
                r = torch.tensor(edit.rows, device=device)
            p = torch.arange(seq_len, device=device) if pos is None else pos.to(device)
            lat = torch.tensor(edit.latents, device=device)
            index = (r[:, None, None], p[None, :, None], lat[None, None, :])
            out = out.index_put(index, _edit_values(out[index], edit.mode, edit.value))
        else:
            mask = edit.mask.to(device)
            if mask.shape != (batch, d_sae):
                raise InputError(
                    f"RowMaskEdit at layer {edit.layer} has mask shape {tuple(mask.shape)}, "
                    f"expected [batch={batch}, d_sae={d_sae}]"
                )
            full = mask[:, None, :].expand(batch, seq_len, d_sae)  # [batch, seq, d_sae]
            if pos is not None:
                on = torch.zeros(seq_len, dtype=torch.bool, device=device)
                on[pos.to(device)] = True
                full = full & on[None, :, None]
            out = torch.where(full, _edit_values(out, edit.mode, edit.value), out)
    return out


# --------------------------------------------------------------------------------------------
# SAE splice
# --------------------------------------------------------------------------------------------


@dataclass
class SpliceRecord:
    """Codes seen by the splice hooks, one tensor per forward call, when ``record=True``."""

    clean: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    """Codes of the unedited residual, ``[batch, seq, d_sae]`` (detached)."""
    edited: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    """Codes after the edits (equal to ``clean`` where nothing was edited)."""
    error_norm: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    """``||resid - decode(encode(resid))||`` per token, ``[batch, seq]``."""


CodeTransform = Callable[[int, torch.Tensor, int], torch.Tensor]
"""``transform(layer, codes[batch, seq, d_sae], past) -> edited codes`` (same shape)."""


@contextmanager
def sae_splice(
    model: nn.Module,
    saes: Mapping[int, SAE],
    transform: CodeTransform | None = None,
    *,
    record: bool = False,
) -> Iterator[SpliceRecord]:
    """Splice the SAEs into the model: at each layer in ``saes`` the block output becomes
    ``decode(transform(codes)) + error`` with ``error = resid - decode(codes)`` from the
    unedited residual. ``transform=None`` leaves the codes as they are (a no-op splice, up to
    float rounding). The primitive behind ``sae_edits``; yields a ``SpliceRecord``.
    """
    base, layers = decoder_stack(model)
    for layer, sae in saes.items():
        check_layer(layers, layer)
        d_in = int(sae.cfg.d_in)
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is not None and d_in != int(hidden):
            raise InputError(
                f"SAE at layer {layer} has d_in={d_in} but the model's hidden size is {hidden}"
            )
    rec = SpliceRecord()
    state = ForwardState()

    def make_hook(layer: int, sae: SAE) -> Callable:
        w = sae.W_dec

        def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
            resid = block_hidden(output)  # [batch, seq, d_model], model dtype
            x = resid.to(device=w.device, dtype=w.dtype)  # [batch, seq, d_in], SAE dtype
            codes = sae.encode(x)  # [batch, seq, d_sae]
            recon = sae.decode(codes)  # [batch, seq, d_in]
            # The error term comes from the unedited residual: it carries what the SAE cannot
            # reconstruct, so only the edited latents' share of the residual changes.
            error = x - recon
            edited = codes if transform is None else transform(layer, codes, state.past)
            new_recon = recon if edited is codes else sae.decode(edited)
            new = (new_recon + error).to(device=resid.device, dtype=resid.dtype)
            if record:
                rec.clean.setdefault(layer, []).append(codes.detach())
                rec.edited.setdefault(layer, []).append(edited.detach())
                rec.error_norm.setdefault(layer, []).append(error.detach().norm(dim=-1))
            return replace_hidden(output, new)

        return hook

    with collected_hooks() as handles:
        track_past(base, state, handles)
        for layer in sorted(saes):
            handles.append(layers[layer].register_forward_hook(make_hook(layer, saes[layer])))
        yield rec


def check_edits(
    saes: Mapping[int, SAE], edits: Sequence[Edit], n_layers: int | None = None
) -> None:
    """Raise ``InputError`` for an edit at a layer without an SAE or a latent out of range."""
    for edit in edits:
        if not isinstance(edit, (LatentEdit, RowMaskEdit)):
            raise InputError(f"not an edit: {edit!r}")
        if n_layers is not None and edit.layer >= n_layers:
            raise InputError(
                f"edit layer {edit.layer} is out of range: the model has {n_layers} layers"
            )
        if edit.layer not in saes:
            have = ", ".join(str(k) for k in sorted(saes)) or "none"
            raise InputError(f"no SAE loaded for layer {edit.layer}; layers with an SAE: {have}")
        d_sae = int(saes[edit.layer].cfg.d_sae)
        if isinstance(edit, LatentEdit):
            if max(edit.latents) >= d_sae:
                raise InputError(_latent_range_message(edit, d_sae))
        elif edit.mask.shape[1] != d_sae:
            raise InputError(
                f"RowMaskEdit at layer {edit.layer} masks {edit.mask.shape[1]} latents; "
                f"the SAE has {d_sae}"
            )


@contextmanager
def sae_edits(
    model: nn.Module,
    saes: Mapping[int, SAE],
    edits: Sequence[Edit] = (),
    *,
    record: bool = False,
) -> Iterator[SpliceRecord]:
    """Splice every SAE in ``saes`` into the model and apply ``edits`` to its codes.

    Every layer in ``saes`` is spliced (``decode(edited codes) + error``), edited or not; pass
    only the SAEs you want in the forward. Hooks are removed on exit, exceptions included.
    """
    edits = list(edits)
    check_edits(saes, edits, n_layers=len(decoder_layers(model)))
    by_layer: dict[int, list[Edit]] = {}
    for edit in edits:
        by_layer.setdefault(edit.layer, []).append(edit)

    def transform(layer: int, codes: torch.Tensor, past: int) -> torch.Tensor:
        layer_edits = by_layer.get(layer)
        if not layer_edits:
            return codes
        return apply_edits(codes, layer_edits, past=past)

    with sae_splice(model, saes, transform, record=record) as rec:
        yield rec


__all__ = [
    "EDIT_MODES",
    "CodeTransform",
    "Edit",
    "LatentEdit",
    "RowMaskEdit",
    "SpliceRecord",
    "apply_edits",
    "check_edits",
    "sae_edits",
    "sae_splice",
]
