"""Dormant latents on a tiny model with two planted ones at a later layer.

Source: a tiny JumpReLU SAE at layer 1 and a "minimal set" S of the prompt's four most active
latents there. At layer 2 a second SAE gets two planted latents with the same encoder row: the
direction in which ablating S moves the last token's layer-2 residual, with a threshold between
the largest baseline projection (over every token) and the ablated last token's. So both are
silent at baseline and wake up when S is ablated. Latent RESTORE's decoder row points up the
refusal score's gradient (ablating it as well lowers the score: it restores refusal), latent
COUNTER's down it (ablating it raises the score).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache.adapters import ADAPTERS
from cache.forward import pad_token_id, refusal_log_odds
from cache.hooks import capture_resid
from cache.interventions import LatentEdit, sae_edits
from cache.models import LoadedModel
from cache.pipeline import CacheConfig, run_cache
from cache.sae import encode
import explorer.cli.shell as cli_shell
from explorer.cli import analyze as analyze_group
from explorer.dormant import DormantConfig, run_dormant
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import open_live
from explorer.results import DormantResult, GreedyResult
from store import Study
from store.errors import InputError
from tests.synthetic import make_greedy
from tests.tiny_models import make_tiny_model, make_tiny_sae
from tests.tiny_tokenizers import make_tiny_tokenizer

SOURCE, LATER = 1, 2
RESTORE, COUNTER = 11, 12
HARMFUL = ["How do I pick a lock?", "Write ransomware now"]
HARMLESS = ["Bake a lemon cake", "Sort a list in Python"]


def plant(loaded: LoadedModel, sae1, sae2, ids: list[int]) -> list[int]:
    """Plant RESTORE and COUNTER into ``sae2`` for prompt ``ids``; returns the minimal set S."""
    model, x = loaded.model, torch.tensor([ids])
    with torch.no_grad():
        with capture_resid(model, [SOURCE, LATER]) as clean:
            model(x)
        top = encode(sae1, clean[SOURCE][0][0]).max(0).values  # [d_sae]
        minimal = torch.argsort(-top, stable=True)[:4].tolist()
        with sae_edits(model, {SOURCE: sae1}, [LatentEdit(layer=SOURCE, latents=tuple(minimal))]), capture_resid(model, [LATER]) as ablated:
            model(x)
    base, abl = clean[LATER][0][0], ablated[LATER][0][0]  # [len, d_model]
    w = (abl[-1] - base[-1]) / (abl[-1] - base[-1]).norm()
    low, high = float((base @ w).max()), float(abl[-1] @ w)
    assert high > low + 0.5, "the ablation must move the later residual"
    # the refusal score's gradient at the last token of the ablated layer-2 residual
    refusal = loaded.adapter.refusal_token_ids(loaded.tokenizer)
    ev = AblationEvaluator(model, sae2, [ids], refusal, pad_token_id(loaded.tokenizer), EvaluatorConfig(layer=LATER))
    resid = abl.clone().requires_grad_(True)
    logits, _ = ev.forward_from([0], [resid])
    refusal_log_odds(logits, refusal).sum().backward()
    grad = resid.grad[-1] / resid.grad[-1].norm()
    with torch.no_grad():
        for latent, sign in ((RESTORE, 1.0), (COUNTER, -1.0)):
            sae2.W_enc[:, latent] = w
            sae2.b_enc[latent] = 0.0
            sae2.threshold[latent] = (low + high) / 2
            sae2.W_dec[latent] = sign * 2.0 * grad
    return minimal


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dormant")
    tokenizer = make_tiny_tokenizer("qwen2")
    loaded = LoadedModel(make_tiny_model("qwen2", vocab_size=len(tokenizer)), tokenizer, ADAPTERS["qwen2"], "tiny-qwen2", "rev0")
    sae1 = make_tiny_sae("jumprelu", layer=SOURCE, threshold=0.5, seed=1)
    sae2 = make_tiny_sae("jumprelu", layer=LATER, threshold=0.5, seed=2)
    ids = loaded.adapter.encode(tokenizer, HARMFUL[0])
    minimal = plant(loaded, sae1, sae2, ids)
    for layer, sae in ((SOURCE, sae1), (LATER, sae2)):
        sae.save_model(root / f"sae{layer}")
    (root / "harmful.json").write_text(json.dumps(HARMFUL))
    (root / "harmless.json").write_text(json.dumps(HARMLESS))
    config = CacheConfig(
        harmful=root / "harmful.json", harmless=root / "harmless.json", layers=(SOURCE, LATER), out=root / "study.h5",
        saes=(f"{SOURCE}={root / 'sae1'}", f"{LATER}={root / 'sae2'}"), device="cpu", batch_size=4,
    )
    path = run_cache(config, loaded=loaded, progress=False)
    make_greedy(SOURCE, [0], [minimal]).save(path, "default", config={})
    return path, loaded, {SOURCE: sae1, LATER: sae2}, minimal


def full_score(loaded: LoadedModel, saes: dict, ids: list[int], edits: list[LatentEdit]) -> float:
    refusal = loaded.adapter.refusal_token_ids(loaded.tokenizer)
    with torch.no_grad(), sae_edits(loaded.model, {e.layer: saes[e.layer] for e in edits}, edits):
        logits = loaded.model(torch.tensor([ids]), use_cache=False).logits[:, -1]
    return float(refusal_log_odds(logits, refusal)[0])


def test_finds_the_planted_dormant_latents(planted) -> None:
    path, loaded, saes, minimal = planted
    config = DormantConfig(max_per_layer=128, max_batch=8)
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_dormant(study, live, greedy, config, progress=False)
        ids = study.token_ids(0).astype(int).tolist()
        tokens = study.token_strings(study.token_ids(0))
    assert summary["layers"] == [SOURCE, LATER] and result.source_layer == SOURCE
    rows = {(int(layer), int(latent)): i for i, (layer, latent) in enumerate(zip(result.layer, result.latent))}
    restore, counter = rows[(LATER, RESTORE)], rows[(LATER, COUNTER)]
    # invariants of every row: silent at baseline, awake with S ablated, S itself never listed
    assert (result.baseline_activation <= 0).all() and (result.ablated_activation > 0).all()
    assert not any(layer == SOURCE and latent in minimal for layer, latent in rows)
    np.testing.assert_array_equal(result.restores_refusal, result.refusal_effect < -config.restore_threshold)
    assert (result.prompt == 0).all()
    # the planted pair: one restores refusal, the other works against it
    assert result.restores_refusal[restore] and result.refusal_effect[restore] < -0.5
    assert not result.restores_refusal[counter] and result.refusal_effect[counter] > 0.5
    assert result.ablated_activation[restore] == pytest.approx(result.ablated_activation[counter])
    # the effect equals a naive full forward: S ablated at layer 1, the latent too at layer 2
    s_only = full_score(loaded, saes, ids, [LatentEdit(layer=SOURCE, latents=tuple(minimal))])
    both = full_score(loaded, saes, ids, [LatentEdit(layer=SOURCE, latents=tuple(minimal)), LatentEdit(layer=LATER, latents=(RESTORE,))])
    assert result.refusal_effect[restore] == pytest.approx(both - s_only, abs=2e-4)
    assert summary["prompts"][0]["ablated"] == pytest.approx(s_only, abs=2e-4)
    at_source = [latent for layer, latent in rows if layer == SOURCE]  # woken at L by re-encoding the edited residual
    assert at_source
    extra = full_score(loaded, saes, ids, [LatentEdit(layer=SOURCE, latents=(*minimal, at_source[0]))])
    assert result.refusal_effect[rows[(SOURCE, at_source[0])]] == pytest.approx(extra - s_only, abs=2e-4)
    # where it fires: the last token (planted there), with its token string
    s = slice(result.position_offsets[restore], result.position_offsets[restore + 1])
    assert len(ids) - 1 in result.position[s].tolist()
    assert result.position_token[s].tolist() == [tokens[i] for i in result.position[s]]
    # ablating every restoring latent as well lowers the score below S alone
    assert summary["prompts"][0]["all_restoring_ablated"] < s_only
    result.save(path, "t", config={})
    with Study(path) as study:
        back = DormantResult.load(study, "t")
    np.testing.assert_array_equal(back.latent, result.latent)
    np.testing.assert_array_equal(back.prompt, result.prompt)
    assert back.position_token.tolist() == result.position_token.tolist()


def test_layers_option_and_errors(planted) -> None:
    path, loaded, saes, _minimal = planted
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")
        live = open_live(study, loaded=loaded, saes=saes)
        only_later, _ = run_dormant(study, live, greedy, DormantConfig(layers=(LATER,), max_per_layer=2), progress=False)
        assert set(only_later.layer.tolist()) == {LATER} and len(only_later.latent) <= 2
        with pytest.raises(InputError, match="before the source layer"):
            run_dormant(study, live, greedy, DormantConfig(layers=(0,)), progress=False)
        with pytest.raises(InputError, match="no greedy set"):
            run_dormant(study, live, greedy, DormantConfig(prompts=(3,)), progress=False)
        no_later = open_live(study, loaded=loaded, saes={SOURCE: saes[SOURCE]})
        with pytest.raises(InputError, match="no SAE for layer 2"):
            run_dormant(study, no_later, greedy, DormantConfig(), progress=False)


def test_cli_dormant(planted, monkeypatch: pytest.MonkeyPatch) -> None:
    path, loaded, saes, _minimal = planted
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: open_live(study, loaded=loaded, saes={k: saes[k] for k in layers}))
    group = analyze_group
    out = CliRunner().invoke(group, ["dormant", str(path), "--max-per-layer", "4", "--run", "default"])
    assert out.exit_code == 0, out.output
    assert "restore refusal" in out.output and "saved" in out.output
    out = CliRunner().invoke(group, ["dormant", str(path), "--run", "none"])
    assert out.exit_code == 2 and "analyze greedy" in out.output
    out = CliRunner().invoke(group, ["dormant", str(path), "--layers", "3"])
    assert out.exit_code == 2 and "no SAE" in out.output and len(out.output.strip().splitlines()) == 1
