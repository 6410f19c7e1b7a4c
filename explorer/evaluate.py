"""Fast evaluation of many SAE-latent ablation variants on a few prompts.

An ablation at layer L cannot change layers 0..L, so ``AblationEvaluator`` runs them once per
prompt, keeps the layer-L residual of every token in memory, and evaluates each variant with a
batched forward of layers L+1.. only: one row per (variant, prompt), the residual at L being

    decode(codes · keep) + error,        error = resid − decode(codes)

with ``codes = encode(resid)`` of the unedited residual, ``keep`` zero for the variant's
latents at the ablated positions: exactly what ``cache.interventions.sae_edits`` computes in a
full forward, so the scores are the same up to float rounding.

How layers 0..L are skipped, for any HF decoder stack: for the duration of a forward, blocks
0..L-1 in ``model.model.layers`` are swapped for pass-through modules and block L for a replay
module that returns the prepared residual; the originals are put back in ``finally``. The
embeddings are still looked up (cheap) and the attention masks/rotary embeddings are built by
the model as usual. While a forward runs, hooks on blocks 0..L do not fire and the model must
not be used by another thread.

API for the stages (greedy search, experiments, dormant latents)::

    ev = AblationEvaluator.from_live(live, token_ids, EvaluatorConfig(layer=L))
    ev.baseline                   # [P] refusal scores, nothing ablated
    ev.scores(masks)              # masks bool [B, d_sae] -> [B, P] scores (log-odds)
    ev.scores_of_sets([[3, 17], [42]])
    ev.run(masks, capture=(L2,))  # scores + residuals at later layers, per row
    ev.active_latents(p)          # latents firing at the ablated positions of prompt p
    ev.n_forwards, ev.n_rows      # cost counters (forwards from L, rows evaluated)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cache.forward import pad_left, refusal_log_odds
from cache.hooks import capture_resid, decoder_layers
from cache.sae import decode, encode
from store.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE

    from explorer.live import LiveContext


@dataclass(frozen=True, kw_only=True)
class EvaluatorConfig:
    layer: int
    """The SAE layer whose latents are ablated (output of decoder block ``layer``)."""
    positions: tuple[int, ...] | None = None
    """Token positions where latents are ablated: None = every token of the prompt; else
    indices into each prompt's own tokens (padding never counts), negative from its end."""
    max_batch: int = 32
    """Rows (variant × prompt) per batched forward of layers L+1..; lower it to save memory."""
    prepare_batch: int = 8
    """Prompts per forward when running layers 0..L once."""

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise InputError(f"the ablation layer must be a non-negative integer, got {self.layer!r}")
        if self.max_batch < 1 or self.prepare_batch < 1:
            raise InputError("max_batch and prepare_batch must be ≥ 1")
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
            if not self.positions:
                raise InputError("positions is empty; use None to ablate at every token")


class _PassThrough(nn.Module):
    """Stands in for a skipped block: returns its input hidden state unchanged."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states,) if self.as_tuple else hidden_states


class _Replay(nn.Module):
    """Stands in for block L: returns the prepared layer-L residual instead of computing it."""

    def __init__(self, resid: torch.Tensor, as_tuple: bool) -> None:
        super().__init__()
        self.resid = resid
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if hidden_states.shape != self.resid.shape:
            raise RuntimeError(f"replay residual {tuple(self.resid.shape)} does not match {tuple(hidden_states.shape)}")
        out = self.resid.to(hidden_states.dtype)
        return (out,) if self.as_tuple else out


@contextmanager
def replay_from_layer(model: nn.Module, layer: int, resid: torch.Tensor, *, as_tuple: bool = False) -> Iterator[None]:
    """Within the block, a forward of ``model`` skips blocks 0..layer and continues from
    ``resid`` [batch, width, d_model] (left-padded like the inputs) as block ``layer``'s output.
    ``as_tuple``: whether the model's blocks return a tuple (older transformers) or a tensor."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise InputError(f"layer {layer} is out of range: the model has {len(layers)} layers")
    originals = [layers[i] for i in range(layer + 1)]
    try:
        for i in range(layer):
            layers[i] = _PassThrough(as_tuple)
        layers[layer] = _Replay(resid, as_tuple)
        yield
    finally:
        for i, block in enumerate(originals):
            layers[i] = block


@dataclass
class EvalOutput:
    """What ``AblationEvaluator.run`` returns."""

    scores: np.ndarray  # float32 [B, P]: refusal log-odds per variant and prompt
    captured: dict[int, list[list[torch.Tensor]]] = field(default_factory=dict)
    """Layer → [B][P] residuals [len_p, d_model] (float32, CPU) at the captured later layers."""


class AblationEvaluator:
    """Scores of ablation variants on a fixed set of prompts, forwarding from layer L only."""

    def __init__(
        self, model: nn.Module, sae: SAE, token_ids: Sequence[Sequence[int]], refusal_ids: Sequence[int], pad_id: int,
        config: EvaluatorConfig,
    ) -> None:
        if not token_ids:
            raise InputError("the evaluator needs at least one prompt")
        n_layers = len(decoder_layers(model))
        if config.layer >= n_layers:
            raise InputError(f"layer {config.layer} is out of range: the model has {n_layers} layers")
        if config.layer == n_layers - 1:
            raise InputError(f"layer {config.layer} is the last block; ablations there need a later block to act on")
        self.model, self.sae, self.config = model, sae, config
        self.layer = config.layer
        self.token_ids = [list(map(int, ids)) for ids in token_ids]
        self.refusal_ids, self.pad_id = list(refusal_ids), pad_id
        self.d_sae = int(sae.cfg.d_sae)
        self.n_forwards = 0  # batched forwards from layer L
        self.n_rows = 0  # (variant, prompt) rows evaluated
        self.n_prepare_forwards = 0  # forwards of layers 0..L
        self._as_tuple = False
        self.resid: list[torch.Tensor] = []  # per prompt [len_p, d_model], SAE dtype/device
        self.codes: list[torch.Tensor] = []  # per prompt [len_p, d_sae]
        self.error: list[torch.Tensor] = []  # per prompt [len_p, d_model]
        self.position_mask: list[torch.Tensor] = []  # per prompt bool [len_p]: where ablations apply
        self._prepare()
        self.baseline: np.ndarray = self.scores(torch.zeros(1, self.d_sae, dtype=torch.bool))[0]  # [P]

    @classmethod
    def from_live(cls, live: LiveContext, token_ids: Sequence[Sequence[int]], config: EvaluatorConfig) -> AblationEvaluator:
        return cls(live.model, live.sae(config.layer), token_ids, live.refusal_ids, live.pad_id, config)

    @property
    def n_prompts(self) -> int:
        return len(self.token_ids)

    # ------------------------------------------------------------------ preparation (layers 0..L)

    @torch.no_grad()
    def _prepare(self) -> None:
        w = self.sae.W_dec
        as_tuple = None
        step = self.config.prepare_batch
        for start in range(0, self.n_prompts, step):
            chunk = self.token_ids[start : start + step]
            inputs = pad_left(chunk, self.pad_id, self.model.device)
            with capture_resid(self.model, [self.layer], stop=True) as captured:
                self.model(**inputs, use_cache=False)
            self.n_prepare_forwards += 1
            hidden, as_tuple = captured[self.layer][-1], captured.as_tuple  # [chunk, width, d_model]
            width = hidden.shape[1]
            for row, ids in enumerate(chunk):
                resid = hidden[row, width - len(ids) :].to(device=w.device, dtype=w.dtype)  # [len, d_model]
                codes = encode(self.sae, resid)
                self.resid.append(resid)
                self.codes.append(codes)
                self.error.append(resid - decode(self.sae, codes))
                self.position_mask.append(self._positions(len(ids)))
        self._as_tuple = bool(as_tuple)

    def _positions(self, length: int) -> torch.Tensor:
        mask = torch.zeros(length, dtype=torch.bool, device=self.sae.W_dec.device)
        if self.config.positions is None:
            mask[:] = True
            return mask
        for p in self.config.positions:
            q = p + length if p < 0 else p
            if not 0 <= q < length:
                raise InputError(f"ablation position {p} is outside a prompt of {length} tokens")
            mask[q] = True
        return mask

    def active_latents(self, prompt: int | None = None) -> np.ndarray:
        """Latents with a non-zero code at an ablated position of ``prompt`` (None: any prompt)."""
        prompts = range(self.n_prompts) if prompt is None else [prompt]
        active = torch.zeros(self.d_sae, dtype=torch.bool, device=self.sae.W_dec.device)
        for p in prompts:
            active |= (self.codes[p][self.position_mask[p]] != 0).any(0)
        return active.nonzero().flatten().cpu().numpy()

    # ------------------------------------------------------------------ forwards from layer L

    def forward_from(
        self, prompts: Sequence[int], resid: Sequence[torch.Tensor], *, capture: Sequence[int] = (),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run layers L+1.. on rows whose layer-L residuals are given.

        ``prompts[r]`` says which prompt row r is (its token ids build the attention mask);
        ``resid[r]`` is [len_p, d_model]. Differentiable in ``resid`` when grad is enabled.
        Returns the last position's logits [rows, vocab] and the residuals at ``capture``
        layers (> L) as left-padded [rows, width, d_model].
        """
        inputs, padded = self._replay_inputs(prompts, resid)
        n_layers = len(decoder_layers(self.model))
        for layer in capture:
            if not self.layer < layer < n_layers:
                raise InputError(f"capture layer {layer} must come after the ablation layer {self.layer}")
        with capture_resid(self.model, capture) as captured, \
                replay_from_layer(self.model, self.layer, padded, as_tuple=self._as_tuple):
            logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]  # [rows, vocab]
        self.n_forwards += 1
        self.n_rows += len(prompts)
        return logits, captured.last()

    def forward_to(self, prompts: Sequence[int], resid: Sequence[torch.Tensor], layer: int) -> list[torch.Tensor]:
        """Residuals [len_p, d_model] at a later ``layer`` from given layer-L residuals, one per
        row; the forward stops there. Differentiable in ``resid`` when grad is enabled."""
        if not self.layer < layer < len(decoder_layers(self.model)):
            raise InputError(f"layer {layer} must come after the ablation layer {self.layer}")
        inputs, padded = self._replay_inputs(prompts, resid)
        width = padded.shape[1]
        with capture_resid(self.model, [layer], stop=True, detach=False) as captured, \
                replay_from_layer(self.model, self.layer, padded, as_tuple=self._as_tuple):
            self.model(**inputs, use_cache=False)
        hidden = captured[layer][-1]
        return [hidden[r, width - len(self.token_ids[p]) :] for r, p in enumerate(prompts)]

    def _replay_inputs(self, prompts: Sequence[int], resid: Sequence[torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The left-padded inputs of ``prompts`` and their layer-L residuals padded the same way
        ([rows, width, d_model], in the model's dtype), for a forward that replays from layer L."""
        ids = [self.token_ids[p] for p in prompts]
        width = max(len(i) for i in ids)
        inputs = pad_left(ids, self.pad_id, self.model.device)
        dtype = next(self.model.parameters()).dtype
        padded = torch.stack([
            torch.nn.functional.pad(r.to(device=self.model.device, dtype=dtype), (0, 0, width - r.shape[0], 0)) for r in resid
        ])
        return inputs, padded

    def edited_resid(self, prompt: int, masks: torch.Tensor) -> torch.Tensor:
        """Layer-L residuals [B, len_p, d_model] of one prompt with each mask row's latents ablated."""
        codes = self.codes[prompt]  # [len, d_sae]
        drop = masks.to(codes.device)[:, None, :] & self.position_mask[prompt][None, :, None]  # [B, len, d_sae]
        edited = torch.where(drop, torch.zeros((), dtype=codes.dtype, device=codes.device), codes[None])
        return decode(self.sae, edited) + self.error[prompt][None]

    @torch.no_grad()
    def run(
        self, masks: torch.Tensor, prompts: Sequence[int] | None = None, *, capture: Sequence[int] = (),
    ) -> EvalOutput:
        """Evaluate every mask row (bool [B, d_sae]: latents to ablate) on every prompt."""
        masks = self._check_masks(masks)
        chosen = list(range(self.n_prompts)) if prompts is None else [int(p) for p in prompts]
        rows = [(b, p) for b in range(masks.shape[0]) for p in chosen]
        scores = np.zeros((masks.shape[0], len(chosen)), np.float32)
        column = {p: j for j, p in enumerate(chosen)}
        captured: dict[int, list[list[torch.Tensor]]] = {
            layer: [[None] * len(chosen) for _ in range(masks.shape[0])] for layer in capture  # type: ignore[list-item]
        }
        self._run_rows(masks, rows, scores, column, captured, capture)
        return EvalOutput(scores=scores, captured=captured)

    @torch.no_grad()
    def scores_of_pairs(self, sets: Sequence[Sequence[int]], prompts: Sequence[int]) -> np.ndarray:
        """Refusal scores [len(sets)]: set r ablated on prompt ``prompts[r]`` (rows of different
        prompts share batched forwards: the greedy searches of several prompts in one go)."""
        if len(sets) != len(prompts):
            raise InputError("scores_of_pairs needs one prompt per set")
        masks = self._check_masks(self.masks_of_sets(sets))
        rows = [(r, int(p)) for r, p in enumerate(prompts)]
        out = np.zeros((len(sets), 1), np.float32)
        self._run_rows(masks, rows, out, None, {}, ())
        return out[:, 0]

    def _run_rows(self, masks: torch.Tensor, rows: list[tuple[int, int]], scores: np.ndarray, column: dict[int, int] | None,
                  captured: dict[int, list[list[torch.Tensor]]], capture: Sequence[int]) -> None:
        """Score (mask row, prompt) rows, ``max_batch`` per forward, into ``scores[b, column[p]]``
        (``column`` None: ``scores[b, 0]``, one row per mask)."""
        for start in range(0, len(rows), self.config.max_batch):
            chunk = rows[start : start + self.config.max_batch]
            resid: list[torch.Tensor] = [None] * len(chunk)  # type: ignore[list-item]
            by_prompt: dict[int, list[int]] = {}
            for r, (_b, p) in enumerate(chunk):
                by_prompt.setdefault(p, []).append(r)
            for p, members in by_prompt.items():
                edited = self.edited_resid(p, masks[[chunk[r][0] for r in members]])
                for k, r in enumerate(members):
                    resid[r] = edited[k]
            logits, layer_resid = self.forward_from([p for _b, p in chunk], resid, capture=capture)
            values = refusal_log_odds(logits, self.refusal_ids).float().cpu().numpy()
            for r, (b, p) in enumerate(chunk):
                j = 0 if column is None else column[p]
                scores[b, j] = values[r]
                for layer, hidden in layer_resid.items():
                    length = len(self.token_ids[p])
                    captured[layer][b][j] = hidden[r, hidden.shape[1] - length :].float().cpu()

    def scores(self, masks: torch.Tensor, prompts: Sequence[int] | None = None) -> np.ndarray:
        """Refusal scores [B, P] with each mask row's latents ablated (bool [B, d_sae])."""
        return self.run(masks, prompts).scores

    def masks_of_sets(self, sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """Bool masks [len(sets), d_sae] of latent-index lists."""
        masks = torch.zeros(len(sets), self.d_sae, dtype=torch.bool)
        for row, latents in enumerate(sets):
            latents = [int(i) for i in latents]
            if latents and not 0 <= min(latents) <= max(latents) < self.d_sae:
                raise InputError(f"latent out of range: the SAE at layer {self.layer} has {self.d_sae} latents")
            masks[row, latents] = True
        return masks

    def scores_of_sets(self, sets: Sequence[Sequence[int]], prompts: Sequence[int] | None = None) -> np.ndarray:
        """Refusal scores [len(sets), P] with each set of latents ablated."""
        return self.scores(self.masks_of_sets(sets), prompts)

    def _check_masks(self, masks: torch.Tensor) -> torch.Tensor:
        masks = torch.as_tensor(masks)
        if masks.ndim != 2 or masks.shape[1] != self.d_sae:
            raise InputError(f"masks must be [B, {self.d_sae}], got {tuple(masks.shape)}")
        return masks.to(device=self.sae.W_dec.device, dtype=torch.bool)
