"""Why this prompt: its latents ranked by their attribution to its own refusal score.

For each prompt, the refusal score's gradient × activation with respect to the SAE codes at one
layer, with the SAE error term held fixed (``resid = decode(codes) + error``), summed over the
post-instruction tokens only. Those are the tokens where the model decides to refuse; the
system prompt, the template before the instruction and the first token (whose outsized norm
dominates every raw-activation ranking) never enter the sum, so two prompts that share a system
prompt still get their own rankings. The top ``top_n`` latents of every prompt are stored, so
the viewers (which read only the study) can show them without the model.

The candidates stage sums the same quantity over the harmful train prompts into one ranking;
this stage keeps it per prompt. ARCHITECTURE §5 lists where a stage plugs in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import refusal_log_odds
from cache.sae import decode
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import LiveContext, checked_prompts, prompt_token_ids
from explorer.results import WhyResult
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class WhyConfig:
    layer: int
    """The SAE layer whose latents are ranked."""
    prompts: Literal["refused", "harmful", "all"] = "all"
    """Which prompts get a ranking: those the fast score says are refused, every harmful one, or all."""
    top_n: int = 24
    """Latents kept per prompt (the strongest by |attribution|)."""
    batch_size: int = 8
    """Prompts per forward and backward."""
    max_prompts: int | None = None
    """Rank at most this many prompts (None = all chosen), in study order."""

    def __post_init__(self) -> None:
        if self.top_n < 1 or self.batch_size < 1:
            raise InputError("--top-n and --batch-size must be ≥ 1")
        if self.prompts not in ("refused", "harmful", "all"):
            raise InputError("--prompts must be refused, harmful or all")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise InputError("--max-prompts must be ≥ 1")


def chosen_prompts(study: Study, which: str) -> list[int]:
    labels = study.column("label")
    keep = np.ones(len(labels), bool) if which == "all" else labels == "harmful"
    if which == "refused":
        keep &= study.column("refusal_score") > study.meta.refusal_threshold
    return [int(i) for i in np.flatnonzero(keep)]


def per_prompt_attribution(ev: AblationEvaluator, n_positions: int, batch: int, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt: (attribution [n, d_sae], summed activation [n, d_sae], refusal score [n]),
    over the last ``n_positions`` tokens of each prompt (the post-instruction ones)."""
    n, d_sae = ev.n_prompts, ev.d_sae
    attribution = np.zeros((n, d_sae), np.float32)
    activation = np.zeros((n, d_sae), np.float32)
    scores = np.zeros(n, np.float32)
    for start in tqdm(range(0, n, batch), desc="why (attribution)", unit="batch", disable=not progress):
        prompts = list(range(start, min(start + batch, n)))
        codes = [ev.codes[p].detach().clone().requires_grad_(True) for p in prompts]
        resid = [decode(ev.sae, c) + ev.error[p] for c, p in zip(codes, prompts)]
        with torch.enable_grad():
            logits, _ = ev.forward_from(prompts, resid)
            score = refusal_log_odds(logits, ev.refusal_ids)
            # autograd.grad, not backward(): no gradients pile up in the model's parameters
            grads = torch.autograd.grad(score.sum(), codes)
        for row, (c, g, p) in enumerate(zip(codes, grads, prompts)):
            post = slice(max(0, len(c) - n_positions), len(c))
            attribution[p] = (c.detach() * g)[post].sum(0).float().cpu().numpy()
            activation[p] = c.detach()[post].sum(0).float().cpu().numpy()
            scores[p] = float(score[row].detach())
    return attribution, activation, scores


def top_by_magnitude(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest |values| among the non-zero ones, strongest first."""
    nonzero = np.flatnonzero(values)
    order = np.argsort(-np.abs(values[nonzero]), kind="stable")[:n]
    return nonzero[order]


def run_why(study: Study, live: LiveContext, config: WhyConfig, *, prompts: Sequence[int] | None = None,
            progress: bool = True) -> tuple[WhyResult, dict[str, Any]]:
    """Rank every chosen prompt's latents; returns the result and a summary."""
    chosen = checked_prompts(study, prompts) if prompts is not None else chosen_prompts(study, config.prompts)
    chosen = chosen[: config.max_prompts]
    if not chosen:
        raise InputError(f"no prompts to rank ({config.prompts}); pass --prompts all")
    ev = AblationEvaluator.from_live(live, prompt_token_ids(study, chosen), EvaluatorConfig(layer=config.layer, max_batch=config.batch_size))
    attribution, activation, scores = per_prompt_attribution(ev, live.n_positions, config.batch_size, progress)
    tops = [top_by_magnitude(attribution[i], config.top_n) for i in range(len(chosen))]
    result = WhyResult(
        layer=config.layer, positions=int(live.n_positions), prompt=np.asarray(chosen, np.int64),
        offsets=np.concatenate([[0], np.cumsum([len(t) for t in tops])]).astype(np.int64),
        latent=np.concatenate(tops).astype(np.int64) if tops else np.zeros(0, np.int64),
        attribution=np.concatenate([attribution[i, t] for i, t in enumerate(tops)]).astype(np.float32),
        activation=np.concatenate([activation[i, t] for i, t in enumerate(tops)]).astype(np.float32),
        score=scores, total=attribution.sum(1).astype(np.float32),
    )
    firsts = [int(t[0]) for t in tops if len(t)]
    summary = {
        "layer": config.layer, "prompts": len(chosen), "top_n": config.top_n, "positions": int(live.n_positions),
        "distinct_top_latents": len(set(firsts)),
        "most_common_top": max(set(firsts), key=firsts.count) if firsts else None,
        "forwards": ev.n_forwards + ev.n_prepare_forwards,
    }
    return result, summary
