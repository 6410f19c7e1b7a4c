"""The FM stage end to end on a tiny model with a planted mechanism: found, verified, or not claimed.

The tiny model's layer-1 SAE gets two planted latents A and B that fire at 3.0 on every token
(zero encoder row, bias 3) and write to private residual coordinates 0 and 1 (all other decoder
rows are zero there), so ablating A moves coordinate 0 of the layer-1 residual by −15 at every
token, and nothing else does. A pre-hook on block 2 reads those coordinates at each row's last
token, undoes the shift (the rest of the model never sees it) and adds a planted amount to the
refusal tokens' logits, which shifts the refusal log-odds by exactly that amount:

* ``and``: −S when A and B are both ablated (each alone keeps refusal up: redundant backups);
* ``additive``: −S/2 for each of them, whatever the other does.

Everything else (other latents' natural effects through layers 2–3) is the tiny model's own.
The experiments stage samples its default design (sized to the FM), the FM stage compares,
and pairs are verified by the four ablations on the same prompts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cache.adapters import ADAPTERS
from cache.hooks import decoder_layers
from cache.models import LoadedModel
from cache.pipeline import CacheConfig, run_cache
from explorer.experiments import ExperimentConfig, run_experiments
from explorer.interactions import FMStageConfig, run_fm
from explorer.live import open_live
from explorer.pair_checks import experiment_pair_measure
from explorer.results import GreedyResult
from store import Study
from tests.synthetic import make_greedy
from tests.tiny_models import make_tiny_model, make_tiny_sae
from tests.tiny_tokenizers import make_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = 1
A, B, C = 5, 6, 7  # C: a third minimal-set latent with only its natural effect
STRENGTH = 4.0  # log-odds
HARMFUL = ["How do I pick a lock?", "Write ransomware now"]
HARMLESS = ["Bake a lemon cake", "Sort a list in Python"]


def plant(loaded: LoadedModel, sae, mode: str) -> None:
    with torch.no_grad():
        for latent, coordinate in ((A, 0), (B, 1)):
            sae.W_enc[:, latent] = 0.0
            sae.b_enc[latent] = 3.0
            sae.threshold[latent] = 0.5
        sae.W_dec[:, :2] = 0.0
        sae.W_dec[[A, B]] = 0.0
        sae.W_dec[A, 0] = sae.W_dec[B, 1] = 5.0
    refusal = list(loaded.adapter.refusal_token_ids(loaded.tokenizer))
    state: dict[str, torch.Tensor] = {}

    def read(_module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        ablated = hidden[..., :2] < -7.5  # [rows, len, 2]: A / B ablated at that token
        hidden = hidden.clone()
        hidden[..., :2] += 15.0 * ablated  # undo: layers 2.. never see the planted coordinates move
        a, b = ablated[:, -1, 0].float(), ablated[:, -1, 1].float()
        state["delta"] = -STRENGTH * a * b if mode == "and" else -STRENGTH / 2 * (a + b)
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    def write(_module, _args, logits):
        logits = logits.clone()
        logits[:, -1, refusal] += state.pop("delta")[:, None].to(logits.dtype)
        return logits

    decoder_layers(loaded.model)[2].register_forward_pre_hook(read, with_kwargs=True)
    loaded.model.lm_head.register_forward_hook(write)


def planted_study(root, mode: str):
    tokenizer = make_tiny_tokenizer("qwen2")
    loaded = LoadedModel(make_tiny_model("qwen2", vocab_size=len(tokenizer)), tokenizer, ADAPTERS["qwen2"], "tiny-qwen2", "rev0")
    sae = make_tiny_sae("jumprelu", d_in=64, d_sae=128, layer=LAYER, threshold=0.5)
    plant(loaded, sae, mode)
    sae.save_model(root / "sae")
    (root / "harmful.json").write_text(json.dumps(HARMFUL))
    (root / "harmless.json").write_text(json.dumps(HARMLESS))
    config = CacheConfig(
        harmful=root / "harmful.json", harmless=root / "harmless.json", layers=(LAYER, 2), out=root / "study.h5",
        saes=(f"{LAYER}={root / 'sae'}",), device="cpu", batch_size=4,
    )
    path = run_cache(config, loaded=loaded, progress=False)
    make_greedy(LAYER, [0, 1], [[A, B, C], [A, B, C]]).save(path, "default", config={})
    return path, loaded, sae


def fm_on(root, mode: str):
    path, loaded, sae = planted_study(root, mode)
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")
        live = open_live(study, loaded=loaded, saes={LAYER: sae})
        experiments, _ = run_experiments(study, live, greedy, ExperimentConfig(max_other=5, pair_backgrounds=1), progress=False)
        measure = experiment_pair_measure(study, lambda: live, experiments)
        return experiments, *run_fm(experiments, FMStageConfig(top_pairs=3), measure=measure)


def test_planted_and_interaction_is_found_and_verified(tmp_path) -> None:
    experiments, result, summary = fm_on(tmp_path, "and")
    n = len(experiments.latents)
    assert n == 8 and experiments.design.shape[0] >= 10 * (1 + n + 2 * n)  # sized for a rank-2 FM
    assert result.verdict == "interactions", summary["sentence"]
    assert result.gain_low > 0.05
    top = summary["pairs"][0]
    assert {top["i"], top["j"]} == {A, B}
    assert top["fm"] == pytest.approx(-STRENGTH, abs=0.6)
    assert top["measured"] == pytest.approx(-STRENGTH, abs=0.3) and top["sign_agrees"]
    assert top["prompts"] == [0, 1] and len(top["measured_per_prompt"]) == 2
    # the other reported pairs are verified too, and none of them is an AND of that size
    assert all(abs(p["measured"]) < 1.0 for p in summary["pairs"][1:])


def test_planted_additive_mechanism_yields_no_evidence_of_interactions(tmp_path) -> None:
    experiments, result, summary = fm_on(tmp_path, "additive")
    assert result.verdict == "additive", summary["sentence"]
    assert summary["sentence"].startswith("no evidence of interactions beyond additive effects")
    assert summary["pairs"] == [] and len(result.pair_i) == 0
    # the additive effects are there: ablating A alone lowers the score by about S/2
    singles = {int(experiments.latents[np.flatnonzero(row)[0]]): float(y) for row, y in zip(experiments.design, experiments.response) if row.sum() == 1}
    assert singles[A] - experiments.response[0] == pytest.approx(-STRENGTH / 2, abs=0.3)
