"""Stage 1b: candidate refusal latents at one SAE layer, ranked three ways.

* ``cosine``: cosine of each decoder row with the refusal direction (Beyond I'm Sorry, stage 1).
* ``attribution``: gradient × activation of the refusal score with respect to the codes at
  layer L, the SAE error term held fixed, summed over harmful prompts and positions.
* ``integrated_gradients``: codes (and the error term) move in ``ig_steps`` steps from clean
  to their values under direction ablation (Yeo et al.); per latent
  ``(clean − ablated) · mean gradient``, so it is the latent's share of the score drop
  (positive = the latent carries refusal; the shares plus the error term's sum to the drop).

The gradients come from a forward of layers L+1.. only (``AblationEvaluator.forward_from``)
with ``resid_L = decode(codes) + error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import pad_left, refusal_log_odds
from cache.directions import direction_ablation
from cache.hooks import capture_resid
from cache.sae import decode, decoder_rows, encode
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import LiveContext, prompt_token_ids, select_prompts
from explorer.results import CandidateResult
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class CandidateConfig:
    layer: int
    """The SAE layer whose latents are ranked."""
    top_k: int = 50
    """Length of the stored top lists (and of the overlap)."""
    direction: Literal["chosen", "layer"] = "chosen"
    """``chosen``: the direction stage's pick; ``layer``: the difference in means at this layer
    (same position), for directions chosen at another layer."""
    positions: Literal["post-instruction", "all"] = "post-instruction"
    """Where attribution is summed (and IG moves the codes): the post-instruction tokens, or
    every token but the first (BOS and its outsized norm are ignored, as in Yeo et al.)."""
    split: Literal["train", "all"] = "train"
    """Harmful prompts of the train split (val stays held out) or all of them."""
    max_prompts: int | None = 32
    """Use at most this many harmful prompts (None = all)."""
    ig_steps: int = 16
    """Riemann steps (midpoints) of integrated gradients; 0 skips IG."""
    batch_size: int = 8
    """Prompts per forward."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.ig_steps < 0 or self.batch_size < 1:
            raise InputError("--top-k and --batch-size must be ≥ 1, --ig-steps ≥ 0")
        if self.direction not in ("chosen", "layer") or self.positions not in ("post-instruction", "all"):
            raise InputError("--direction must be chosen|layer and --positions post-instruction|all")
        if self.split not in ("train", "all"):
            raise InputError("--split must be train or all")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise InputError("--max-prompts must be ≥ 1")


def cosine_scores(decoder: torch.Tensor, direction: torch.Tensor) -> np.ndarray:
    """Cosine of each decoder row [d_sae, d] with the direction [d] -> float32 [d_sae]."""
    decoder = decoder.float().cpu()
    unit = direction.float().cpu() / direction.float().norm()
    return (decoder @ unit / decoder.norm(dim=-1).clamp_min(1e-12)).numpy().astype(np.float32)


def included_positions(length: int, n_positions: int, positions: str, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    if positions == "post-instruction":
        mask[-n_positions:] = True
    else:
        mask[1:] = True
    return mask


def gradient_times_activation(ev: AblationEvaluator, masks: list[torch.Tensor], batch: int, progress: bool) -> np.ndarray:
    """Σ over prompts and included positions of codes · ∂score/∂codes  -> float32 [d_sae]."""
    total = torch.zeros(ev.d_sae, dtype=torch.float64)
    for start in tqdm(range(0, ev.n_prompts, batch), desc="attribution", unit="batch", disable=not progress):
        prompts = list(range(start, min(start + batch, ev.n_prompts)))
        codes = [ev.codes[p].detach().clone().requires_grad_(True) for p in prompts]
        resid = [decode(ev.sae, c) + ev.error[p] for c, p in zip(codes, prompts)]
        with torch.enable_grad():
            logits, _ = ev.forward_from(prompts, resid)
            # autograd.grad, not backward(): no gradients pile up in the model's parameters
            grads = torch.autograd.grad(refusal_log_odds(logits, ev.refusal_ids).sum(), codes)
        for c, g, p in zip(codes, grads, prompts):
            total += (c.detach() * g)[masks[p]].sum(0).double().cpu()
    return total.float().numpy()


@torch.no_grad()
def ablated_codes(live: LiveContext, ev: AblationEvaluator, direction: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per prompt (codes, error) [len, ·] at layer L under direction ablation at every layer."""
    out = []
    for start in range(0, ev.n_prompts, batch):
        chunk = ev.token_ids[start : start + batch]
        inputs = pad_left(chunk, live.pad_id, live.device)
        with direction_ablation(live.model, direction), capture_resid(live.model, [ev.layer], stop=True) as cap:
            live.model(**inputs, use_cache=False)
        hidden = cap[ev.layer][0]
        for row, ids in enumerate(chunk):
            resid = hidden[row, hidden.shape[1] - len(ids) :].to(ev.sae.W_dec)
            codes = encode(ev.sae, resid)
            out.append((codes, resid - decode(ev.sae, codes)))
    return out


def integrated_gradients(
    ev: AblationEvaluator, targets: list[tuple[torch.Tensor, torch.Tensor]], masks: list[torch.Tensor], steps: int, progress: bool,
) -> tuple[np.ndarray, float, float]:
    """IG of the score along the straight path clean → ablated (codes and error), midpoint rule.

    Returns per-latent shares of the drop [d_sae] (summed over prompts), the error term's share,
    and the total drop S(clean) − S(path end) for checking completeness.
    """
    total = torch.zeros(ev.d_sae, dtype=torch.float64)
    error_share, drop = 0.0, 0.0
    alphas = (torch.arange(steps, dtype=ev.sae.W_dec.dtype, device=ev.sae.W_dec.device) + 0.5) / steps
    for p in tqdm(range(ev.n_prompts), desc="integrated gradients", unit="prompt", disable=not progress):
        keep = masks[p][:, None]
        c0, e0 = ev.codes[p], ev.error[p]
        c1 = torch.where(keep, targets[p][0], c0)
        e1 = torch.where(keep, targets[p][1], e0)
        codes = (c0[None] + alphas[:, None, None] * (c1 - c0)[None]).detach().requires_grad_(True)  # [steps, len, d_sae]
        error = (e0[None] + alphas[:, None, None] * (e1 - e0)[None]).detach().requires_grad_(True)
        with torch.enable_grad():
            logits, _ = ev.forward_from([p] * steps, list(decode(ev.sae, codes) + error))
            g_codes, g_error = torch.autograd.grad(refusal_log_odds(logits, ev.refusal_ids).sum(), (codes, error))
        # detach: codes encoded with grad-requiring SAE weights (registry loads) carry a graph
        total += ((c0 - c1) * g_codes.mean(0)).sum(0).detach().double().cpu()
        error_share += float(((e0 - e1) * g_error.mean(0)).sum())
        with torch.no_grad():
            ends, _ = ev.forward_from([p, p], [decode(ev.sae, c0) + e0, decode(ev.sae, c1) + e1])
            s = refusal_log_odds(ends, ev.refusal_ids)
        drop += float(s[0] - s[1])
    return total.float().numpy(), error_share, drop


def layer_direction(study: Study, layer: int, position: int) -> np.ndarray:
    """Difference in means (train split) at ``layer`` and the post-instruction ``position``."""
    harmful = np.asarray(select_prompts(study, label="harmful", split="train"))
    harmless = np.asarray(select_prompts(study, label="harmless", split="train"))
    if not len(harmful) or not len(harmless):
        raise InputError("the study needs train-split prompts of both labels")
    index = position + study.meta.n_positions
    return study.resid(layer, harmful)[:, index].mean(0) - study.resid(layer, harmless)[:, index].mean(0)


def run_candidates(
    study: Study, live: LiveContext, direction: np.ndarray, direction_position: int, config: CandidateConfig, *, progress: bool = True,
) -> tuple[CandidateResult, dict[str, Any]]:
    """Rank every latent of the SAE at ``config.layer``; returns the result and a summary."""
    sae = live.sae(config.layer)
    if config.direction == "layer":
        direction = layer_direction(study, config.layer, direction_position)
    direction_t = torch.from_numpy(np.asarray(direction, np.float32))
    cosine = cosine_scores(decoder_rows(sae), direction_t)
    prompts = select_prompts(study, label="harmful", split=None if config.split == "all" else "train")[: config.max_prompts]
    if not prompts:
        raise InputError("the study has no harmful prompts in that split to attribute on")
    token_ids = prompt_token_ids(study, prompts)
    ev = AblationEvaluator.from_live(live, token_ids, EvaluatorConfig(layer=config.layer, max_batch=max(config.ig_steps, config.batch_size)))
    masks = [included_positions(len(ids), live.n_positions, config.positions, sae.W_dec.device) for ids in token_ids]
    attribution = gradient_times_activation(ev, masks, config.batch_size, progress)
    ig = np.zeros_like(attribution)
    error_share = drop = float("nan")
    if config.ig_steps:
        targets = ablated_codes(live, ev, direction_t, config.batch_size)
        ig, error_share, drop = integrated_gradients(ev, targets, masks, config.ig_steps, progress)
    k = min(config.top_k, len(cosine))
    top_cos = np.argsort(-cosine, kind="stable")[:k]
    top_attr = np.argsort(-attribution, kind="stable")[:k]
    top_ig = np.argsort(-ig, kind="stable")[:k]
    result = CandidateResult(
        layer=config.layer, cosine=cosine, attribution=attribution, integrated_gradients=ig.astype(np.float32),
        top_cosine=top_cos, top_attribution=top_attr, overlap=len(set(top_cos.tolist()) & set(top_attr.tolist())) / k,
    )
    summary = {
        "layer": config.layer, "prompts": len(prompts), "k": k, "overlap_cosine_attribution": result.overlap,
        "overlap_cosine_ig": len(set(top_cos.tolist()) & set(top_ig.tolist())) / k,
        "overlap_attribution_ig": len(set(top_attr.tolist()) & set(top_ig.tolist())) / k,
        "ig_drop": drop, "ig_latent_share": float(ig.sum()), "ig_error_share": error_share,
        "top_cosine": top_cos[:10].tolist(), "top_attribution": top_attr[:10].tolist(), "top_ig": top_ig[:10].tolist(),
        "forwards": ev.n_forwards + ev.n_prepare_forwards,
    }
    return result, summary


def top_latents(result: CandidateResult, ranking: str, k: int, allowed: Sequence[int] | None = None) -> list[int]:
    """The k best latents by ``ranking`` (cosine|attribution|integrated_gradients), optionally
    only among ``allowed``."""
    if ranking not in ("cosine", "attribution", "integrated_gradients"):
        raise InputError(f"unknown ranking {ranking!r}; use cosine, attribution or integrated_gradients")
    values = np.asarray(getattr(result, ranking), np.float64)
    order = np.argsort(-values, kind="stable")
    if allowed is not None:
        allowed_set = set(int(i) for i in allowed)
        order = np.array([i for i in order if int(i) in allowed_set], np.int64)
    return [int(i) for i in order[:k]]
