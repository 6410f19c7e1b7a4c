"""Batched forward passes: left padding, residual capture, and the fast refusal score."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cache.hooks import capture_resid


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding id; tokenizers without one (Llama 3) pad with EOS, which the mask hides anyway."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_left(token_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Left-pad so every prompt ends at the last column: the post-instruction positions and the
    first response position line up across the batch. Position ids restart at each prompt's
    first real token, so padding does not shift what the model sees."""
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "position_ids": position_ids.to(device)}


def refusal_log_odds(last_logits: torch.Tensor, refusal_ids: Sequence[int]) -> torch.Tensor:
    """log p − log(1 − p), p = probability that the response starts with a refusal token.

    [batch, vocab] -> [batch]. Computed in log space so saturated probabilities stay finite.
    """
    log_probs = torch.log_softmax(last_logits.float(), dim=-1)
    log_p = torch.logsumexp(log_probs[:, list(refusal_ids)], dim=-1).clamp(max=-1e-7)
    return log_p - torch.log(-torch.expm1(log_p))


@torch.no_grad()
def forward_with_residuals(
    model: PreTrainedModel, token_ids: Sequence[Sequence[int]], layers: Sequence[int],
    refusal_ids: Sequence[int], pad_id: int,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """One batched forward: residuals {layer: [batch, width, d_model]} (left-padded) and the
    refusal score [batch] at the first response position."""
    inputs = pad_left(token_ids, pad_id, model.device)
    with capture_resid(model, layers) as captured:
        # logits_to_keep=1: only the last position's logits are needed, which saves the large
        # [batch, width, vocab] tensor.
        logits = model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
    return captured.last(), refusal_log_odds(logits, refusal_ids)
