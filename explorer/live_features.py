"""Per-prompt features the second paper's stages compute live: residuals and SAE codes at one
layer pooled over the post-instruction tokens, and per-prompt gradient × activation.

These stages read prompts the study never cached (HarmBench categories, wrapped jailbreaks),
so they encode texts with the study's own chat template (``encode_texts``) and run the model
up to the SAE layer only (``layer_resid``). Prompts the study did cache keep their exact
cached token ids (``explorer.live.prompt_token_ids``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import pad_left, refusal_log_odds
from cache.hooks import capture_resid
from cache.sae import decode, encode
from explorer.evaluate import AblationEvaluator
from explorer.live import LiveContext
from store.errors import InputError


def encode_texts(live: LiveContext, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each instruction as one user turn (the study's chat template)."""
    tokenizer, adapter = live.loaded.tokenizer, live.loaded.adapter
    return [list(map(int, adapter.encode(tokenizer, text))) for text in texts]


def post_instruction_mask(length: int, n_positions: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool [length]: the last ``n_positions`` tokens (the template after the instruction)."""
    if length <= n_positions:
        raise InputError(f"a prompt of {length} tokens has no instruction before its {n_positions} template tokens")
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    mask[-n_positions:] = True
    return mask


@torch.no_grad()
def layer_resid(live: LiveContext, token_ids: Sequence[Sequence[int]], layer: int, batch: int = 8, *, progress: bool = False) -> list[torch.Tensor]:
    """Per prompt the residual [len, d_model] (float32, CPU) after block ``layer``; the forward
    stops there."""
    out: list[torch.Tensor] = []
    for start in tqdm(range(0, len(token_ids), batch), desc=f"layer {layer}", unit="batch", disable=not progress):
        chunk = token_ids[start : start + batch]
        inputs = pad_left(chunk, live.pad_id, live.device)
        with capture_resid(live.model, [layer], stop=True) as captured:
            live.model(**inputs, use_cache=False)
        hidden = captured[layer][-1]
        for row, ids in enumerate(chunk):
            out.append(hidden[row, hidden.shape[1] - len(ids) :].float().cpu())
    return out


@torch.no_grad()
def pooled_features(
    live: LiveContext, token_ids: Sequence[Sequence[int]], layer: int, batch: int = 8, *, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the post-instruction tokens of the SAE codes [P, d_sae] and of the residual
    [P, d_model] at ``layer`` (float32)."""
    sae = live.sae(layer)
    codes, resid = [], []
    for r in layer_resid(live, token_ids, layer, batch, progress=progress):
        post = r[-live.n_positions :]
        resid.append(post.mean(0).numpy())
        codes.append(encode(sae, post.to(sae.W_dec)).float().mean(0).cpu().numpy())
    return np.asarray(codes, np.float32), np.asarray(resid, np.float32)


def attribution_per_prompt(ev: AblationEvaluator, masks: Sequence[torch.Tensor], batch: int = 8, *, progress: bool = False) -> np.ndarray:
    """Per prompt Σ over the masked positions of codes · ∂(refusal score)/∂codes -> float32 [P, d_sae].

    The SAE error term is held fixed; the score is the evaluator's refusal log-odds. Positive:
    the latent pushes the score up (towards refusal)."""
    out = np.zeros((ev.n_prompts, ev.d_sae), np.float32)
    for start in tqdm(range(0, ev.n_prompts, batch), desc="attribution", unit="batch", disable=not progress):
        prompts = list(range(start, min(start + batch, ev.n_prompts)))
        codes = [ev.codes[p].detach().clone().requires_grad_(True) for p in prompts]
        resid = [decode(ev.sae, c) + ev.error[p] for c, p in zip(codes, prompts)]
        with torch.enable_grad():
            logits, _ = ev.forward_from(prompts, resid)
            grads = torch.autograd.grad(refusal_log_odds(logits, ev.refusal_ids).sum(), codes)
        for c, g, p in zip(codes, grads, prompts):
            out[p] = (c.detach() * g)[masks[p]].sum(0).float().cpu().numpy()
    return out


def pooled_codes_of(ev: AblationEvaluator, masks: Sequence[torch.Tensor]) -> np.ndarray:
    """Mean code over the masked positions of every evaluator prompt -> float32 [P, d_sae]."""
    return np.stack([ev.codes[p][masks[p]].float().mean(0).detach().cpu().numpy() for p in range(ev.n_prompts)]).astype(np.float32)
