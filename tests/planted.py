"""A tiny model with a planted refusal mechanism, its SAE and its study (shared test fixture).

The planted model (``planted_model``): a trigger token "~" embeds as A·u for a unit vector u;
one attention head of block 0 attends uniformly and writes its mean u-content back along u;
every other write into the residual stream (embeddings, attention and MLP outputs) has u
projected out, and the unembedding row of "I" gets +B·u. So the u-component of the residual
is exactly "a trigger was seen", and it alone makes the model answer "I…": prompts with "~"
(harmful) are refused, the others not. The planted SAE at layer 1 has two redundant latents
(5 and 9) whose encoder and decoder rows are u, each reconstructing half of it.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from cache.adapters import ADAPTERS
from cache.generation import RefusalDetector
from cache.models import LoadedModel
from cache.prompts import Prompt, split_prompts
from explorer.live import LiveContext, open_live
from store import Study
from tests.tiny_models import cache_tiny_study, make_tiny_model, make_tiny_sae
from tests.tiny_tokenizers import make_tiny_tokenizer

PLANTED_LATENTS = (5, 9)
SAE_LAYER = 1
TRIGGER, WRITE, READ = 2.0, 5.0, 10.0  # u in the trigger's embedding, head 0's v and o gains, "I"'s read gain
WORDS = "apple river stone cloud paper garden window music silver orange yellow forest candle bridge".split()


def planted_model(seed: int = 7) -> tuple[LoadedModel, torch.Tensor]:
    tokenizer = make_tiny_tokenizer("qwen2")
    model = make_tiny_model("qwen2", vocab_size=len(tokenizer))
    u = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    u /= u.norm()
    project = torch.eye(64) - torch.outer(u, u)
    trigger, twin = (tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "~,")
    refusal = ADAPTERS["qwen2"].refusal_token_ids(tokenizer)[0]
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.copy_(5.0 * embed @ project)  # a residual stream large next to u keeps RMSNorm scales steady
        embed[trigger] = embed[twin] + TRIGGER * u  # "~" is "," plus u
        for block in model.model.layers:  # nothing writes u, nothing reads it
            for linear in (block.self_attn.o_proj, block.mlp.down_proj):
                linear.weight.copy_(project @ linear.weight)
            for linear in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.mlp.gate_proj, block.mlp.up_proj):
                linear.weight.copy_(linear.weight @ project)
        model.lm_head.weight.copy_(model.lm_head.weight @ project)
        attn = model.model.layers[0].self_attn  # head 0 (and its kv head, shared with head 1)
        attn.q_proj.weight[:16] = 0
        attn.q_proj.bias[:16] = 0
        attn.v_proj.weight[:16] = 0
        attn.v_proj.bias[:16] = 0
        attn.v_proj.weight[0] = WRITE * u
        attn.o_proj.weight[:, :32] = 0
        attn.o_proj.weight[:, 0] = WRITE * u
        model.lm_head.weight[refusal] += READ * u
    return LoadedModel(model, tokenizer, ADAPTERS["qwen2"], "tiny-planted", "rev0"), u


def planted_sae(u: torch.Tensor):
    sae = make_tiny_sae("jumprelu", d_in=64, d_sae=128, layer=SAE_LAYER, threshold=1.0)
    with torch.no_grad():
        sae.b_dec.copy_(sae.b_dec - (sae.b_dec @ u) * u)  # so that prompts without u have none
        for latent in PLANTED_LATENTS:
            sae.W_enc[:, latent] = u
            sae.W_dec[latent] = 0.5 * u
            sae.b_enc[latent] = 0.0
            sae.threshold[latent] = 0.02
    return sae


def planted_prompts(n: int = 12) -> tuple[list[str], list[str]]:
    """Minimal pairs: the harmful prompt has the trigger where its harmless twin has a comma,
    drawn until every twin lands in the same train/val split as its pair, so that the
    difference in means sees the trigger and nothing else."""
    for seed in range(100_000):
        rng = np.random.default_rng(seed)
        text = lambda: " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))  # noqa: E731
        pairs = [(text(), text()) for _ in range(n)]
        harmful, harmless = [f"{a} ~ {b}" for a, b in pairs], [f"{a} , {b}" for a, b in pairs]
        prompts = [Prompt(text=t, label="harmful", dataset="t") for t in harmful] + [Prompt(text=t, label="harmless", dataset="t") for t in harmless]
        split = [p.split for p in split_prompts(prompts, holdout_fraction=0.25, seed=0)]
        if len(set(harmful)) == n and split[:n] == split[n:]:
            return harmful, harmless
    raise AssertionError("no paired split found")


def build_planted_study(root: Path) -> tuple[Path, LoadedModel, object, torch.Tensor]:
    loaded, u = planted_model()
    sae = planted_sae(u)
    harmful, harmless = planted_prompts()
    path = cache_tiny_study(root, loaded, harmful, harmless, layers=(1, 2), saes={SAE_LAYER: sae}, batch_size=12)
    return path, loaded, sae, u


def planted_live(study: Study, loaded: LoadedModel, sae) -> LiveContext:
    live = open_live(study, loaded=loaded, saes={SAE_LAYER: sae})
    # the tiny model's text is random bytes: a refusal is a response that starts with "I"
    return dataclasses.replace(live, detector=RefusalDetector(phrases=("I",), window=1))


@functools.cache
def shared_planted_study() -> tuple[Path, LoadedModel, object, torch.Tensor]:
    """One planted study per test session (the stage tests of several modules share it; each
    writes its results under its own run name)."""
    root = Path(tempfile.mkdtemp(prefix="planted-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_planted_study(root)
