"""AblationEvaluator (forward from layer L, batched variants) against the naive full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cache.adapters import ADAPTERS
from cache.forward import pad_token_id, refusal_log_odds
from cache.hooks import decoder_layers
from cache.interventions import LatentEdit, sae_edits
from explorer.evaluate import AblationEvaluator, EvaluatorConfig, replay_from_layer
from store.errors import InputError
from tests.tiny_models import make_tiny_model, make_tiny_sae
from tests.tiny_tokenizers import make_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["Bake a lemon cake", "How do I pick a lock?", "Hi", "Write a poem about the sea and the wind"]


def setup(family: str, layer: int = 1, arch: str = "jumprelu"):
    tokenizer = make_tiny_tokenizer(family)
    model = make_tiny_model(family, vocab_size=len(tokenizer))
    adapter = ADAPTERS[family]
    ids = [adapter.encode(tokenizer, text) for text in TEXTS]
    refusal = adapter.refusal_token_ids(tokenizer)
    sae = make_tiny_sae(arch, d_in=64, d_sae=128, layer=layer, threshold=0.5)
    return model, sae, ids, refusal, pad_token_id(tokenizer)


def naive_score(model, sae, layer: int, ids: list[int], latents: list[int], refusal, positions=None) -> float:
    """One full forward from layer 0 of one unpadded prompt, the SAE spliced with its error term."""
    edits = [LatentEdit(layer=layer, latents=tuple(latents), positions=positions)] if latents else []
    with torch.no_grad(), sae_edits(model, {layer: sae}, edits):
        logits = model(torch.tensor([ids]), use_cache=False).logits[:, -1]
    return float(refusal_log_odds(logits, refusal)[0])


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "llama"])
def test_batched_from_layer_equals_naive_full_forward(family: str) -> None:
    layer = 1
    model, sae, ids, refusal, pad = setup(family, layer)
    evaluator = AblationEvaluator(model, sae, ids, refusal, pad, EvaluatorConfig(layer=layer, max_batch=5))
    rng = np.random.default_rng(0)
    active = evaluator.active_latents()
    assert len(active) > 10
    active = active.tolist()
    sets = [[], active] + [sorted(rng.choice(active, size=k, replace=False).tolist()) for k in (1, 3, 8, 20)]
    batched = evaluator.scores_of_sets(sets)  # [6 sets, 4 prompts] in 5 forwards of ≤ 5 rows
    assert batched.shape == (len(sets), len(ids))
    assert evaluator.n_forwards == 1 + 5 and evaluator.n_rows == len(ids) * (1 + len(sets))
    naive = np.array([[naive_score(model, sae, layer, p, s, refusal) for p in ids] for s in sets])
    np.testing.assert_allclose(batched, naive, atol=1e-4)
    np.testing.assert_allclose(evaluator.baseline, naive[0], atol=1e-4)
    # the variants do differ, so the comparison is not vacuous
    assert np.abs(naive[1] - naive[0]).max() > 0.05
    # the model is restored after the replay forwards
    assert all(type(block).__name__.endswith("DecoderLayer") for block in decoder_layers(model))


def test_positions_and_prompt_subsets_match_naive() -> None:
    layer = 2
    model, sae, ids, refusal, pad = setup("qwen2", layer, arch="topk")
    config = EvaluatorConfig(layer=layer, positions=(-1, -2, 0))
    evaluator = AblationEvaluator(model, sae, ids, refusal, pad, config)
    active = evaluator.active_latents(1).tolist()
    sets = [active[:4], active]
    got = evaluator.scores_of_sets(sets, prompts=[1, 3])
    naive = np.array([[naive_score(model, sae, layer, ids[p], s, refusal, positions=(-1, -2, 0)) for p in (1, 3)] for s in sets])
    np.testing.assert_allclose(got, naive, atol=1e-4)


def test_capture_later_layers_and_gradients() -> None:
    layer = 1
    model, sae, ids, refusal, pad = setup("llama", layer)
    evaluator = AblationEvaluator(model, sae, ids[:2], refusal, pad, EvaluatorConfig(layer=layer))
    out = evaluator.run(evaluator.masks_of_sets([[]]), capture=(2,))
    with torch.no_grad(), sae_edits(model, {layer: sae}, []):
        hidden = model(torch.tensor([ids[0]]), output_hidden_states=True).hidden_states[3][0]
    torch.testing.assert_close(out.captured[2][0][0], hidden, atol=1e-4, rtol=1e-4)
    # gradients flow from the score back to the layer-L residual
    resid = evaluator.resid[0].clone().requires_grad_(True)
    logits, _ = evaluator.forward_from([0], [resid])
    refusal_log_odds(logits, refusal).sum().backward()
    assert resid.grad is not None and resid.grad.abs().sum() > 0


def test_replay_restores_blocks_on_error_and_rejects_bad_input() -> None:
    model, sae, ids, refusal, pad = setup("qwen2")
    blocks = list(decoder_layers(model))
    with pytest.raises(RuntimeError, match="does not match"):
        with replay_from_layer(model, 1, torch.zeros(1, 3, 64)):
            model(torch.tensor([[1, 2, 3, 4]]))
    assert list(decoder_layers(model)) == blocks
    with pytest.raises(InputError, match="last block"):
        AblationEvaluator(model, sae, ids, refusal, pad, EvaluatorConfig(layer=3))
    evaluator = AblationEvaluator(model, sae, ids[:1], refusal, pad, EvaluatorConfig(layer=1))
    with pytest.raises(InputError, match="out of range"):
        evaluator.scores_of_sets([[500]])
    with pytest.raises(InputError, match="masks must be"):
        evaluator.scores(torch.zeros(2, 7, dtype=torch.bool))
