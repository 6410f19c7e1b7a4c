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

from cache.forward import pad_token_id, refusal_log_odds
from cache.hooks import capture_resid
from cache.interventions import LatentEdit, sae_edits
from cache.models import LoadedModel
from cache.sae import encode
import explorer.cli.shell as cli_shell
from explorer.cli import analyze as analyze_group
from explorer.dormant import DormantConfig, dormant_summary_lines, run_dormant
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import open_live
from explorer.results import DormantResult, GreedyResult
from store import Study
from store.errors import InputError
from tests.synthetic import make_greedy
from tests.tiny_models import cache_tiny_study, make_tiny_sae, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_torch_thread")

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
def hydra(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dormant")
    loaded = tiny_loaded("qwen2")
    tokenizer = loaded.tokenizer
    sae1 = make_tiny_sae("jumprelu", layer=SOURCE, threshold=0.5, seed=1)
    sae2 = make_tiny_sae("jumprelu", layer=LATER, threshold=0.5, seed=2)
    ids = loaded.adapter.encode(tokenizer, HARMFUL[0])
    minimal = plant(loaded, sae1, sae2, ids)
    path = cache_tiny_study(root, loaded, HARMFUL, HARMLESS, layers=(SOURCE, LATER), saes={SOURCE: sae1, LATER: sae2}, batch_size=4)
    make_greedy(SOURCE, [0], [minimal]).save(path, "default", config={})
    return path, loaded, {SOURCE: sae1, LATER: sae2}, minimal


def full_score(loaded: LoadedModel, saes: dict, ids: list[int], edits: list[LatentEdit]) -> float:
    refusal = loaded.adapter.refusal_token_ids(loaded.tokenizer)
    with torch.no_grad(), sae_edits(loaded.model, {e.layer: saes[e.layer] for e in edits}, edits):
        logits = loaded.model(torch.tensor([ids]), use_cache=False).logits[:, -1]
    return float(refusal_log_odds(logits, refusal)[0])


def rows_of(result: DormantResult, context: str) -> dict[tuple[int, int], int]:
    return {(int(result.layer[i]), int(result.latent[i])): i for i in np.flatnonzero(result.context == context)}


def test_planted_dormant_backup_is_found_and_verified(hydra) -> None:
    path, loaded, saes, minimal = hydra
    config = DormantConfig(max_per_layer=128, max_batch=8)
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")  # threshold 100: every context flips
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_dormant(study, live, greedy, config, progress=False)
        ids = study.token_ids(0).astype(int).tolist()
        tokens = study.token_strings(study.token_ids(0))
    assert summary["layers"] == [SOURCE, LATER] and result.source_layer == SOURCE
    # contexts: the set, the set less each latent; no direction result in this run
    assert result.context_label.tolist() == ["set 0", *(f"set 0 − {i}" for i in minimal)] and not summary["direction_searched"]
    rows = rows_of(result, "set 0")
    restore, counter = rows[(LATER, RESTORE)], rows[(LATER, COUNTER)]
    # invariants of every row: silent at baseline, awake in its context, the set itself never listed
    assert (result.baseline_activation <= 0).all() and (result.ablated_activation > 0).all()
    assert not any(layer == SOURCE and latent in minimal for layer, latent in rows)
    np.testing.assert_array_equal(result.backup, result.restores_refusal | result.raises_refusal)
    assert (result.prompt == 0).all() and result.context_flips.all() and not result.redundant.any()
    # the planted backup: suppressing it deepens the flip, clamping it on the untouched prompt raises refusal
    assert result.backup[restore] and result.restores_refusal[restore] and result.refusal_effect[restore] < -0.5
    assert result.raises_refusal[restore] and result.clamp_effect[restore] > 0.5
    # the planted counter-latent works against refusal: no backup by either test
    assert not result.backup[counter] and result.refusal_effect[counter] > 0.5 and result.clamp_effect[counter] < 0
    assert (LATER, RESTORE) in {(layer, j) for _p, layer, j in summary["backups"]}
    # the measurements equal naive full forwards
    s_only = full_score(loaded, saes, ids, [LatentEdit(layer=SOURCE, latents=tuple(minimal))])
    both = full_score(loaded, saes, ids, [LatentEdit(layer=SOURCE, latents=tuple(minimal)), LatentEdit(layer=LATER, latents=(RESTORE,))])
    assert result.refusal_effect[restore] == pytest.approx(both - s_only, abs=2e-4)
    assert result.context_score[restore] == pytest.approx(s_only, abs=2e-4)
    s = slice(result.position_offsets[restore], result.position_offsets[restore + 1])
    where = result.position[s].tolist()
    value = float(result.ablated_activation[restore])
    base = full_score(loaded, saes, ids, [])
    if len(where) == 1:  # clamped to its woken activation where it woke
        clamped = full_score(loaded, saes, ids, [LatentEdit(layer=LATER, latents=(RESTORE,), mode="clamp", value=value, positions=tuple(where))])
        assert result.clamp_effect[restore] == pytest.approx(clamped - base, abs=2e-4)
    # where it fires: the last token (planted there), with its token string
    assert len(ids) - 1 in where
    assert result.position_token[s].tolist() == [tokens[i] for i in where]
    # woken at L by re-encoding the edited residual: suppressing subtracts its re-encoded activation
    assert any(layer == SOURCE for layer, _ in rows)
    result.save(path, "t", config={})
    with Study(path) as study:
        back = DormantResult.load(study, "t")
    for name in ("latent", "prompt", "backup", "redundant", "clamp_effect", "context_label"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.position_token.tolist() == result.position_token.tolist()
    text = "\n".join(dormant_summary_lines(summary, SOURCE))
    assert "dormant backups" in text and f"L{LATER}#{RESTORE}" in text


def test_planted_backup_is_redundant_with_a_set_that_then_does_not_flip(hydra) -> None:
    path, loaded, saes, minimal = hydra
    with Study(path) as study:
        ids = study.token_ids(0).astype(int).tolist()
    s_only = full_score(loaded, saes, ids, [LatentEdit(layer=SOURCE, latents=tuple(minimal))])
    both = full_score(loaded, saes, ids, [LatentEdit(layer=SOURCE, latents=tuple(minimal)), LatentEdit(layer=LATER, latents=(RESTORE,))])
    threshold = (s_only + both) / 2  # the set alone stays above it, the set and the backup go below
    make_greedy(SOURCE, [0], [minimal], threshold=threshold, final=[threshold - 1]).save(path, "redundant", config={})
    with Study(path) as study:
        greedy = GreedyResult.load(study, "redundant")
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_dormant(study, live, greedy, DormantConfig(max_per_layer=128, subsets=False), progress=False)
    rows = rows_of(result, "set 0")
    restore = rows[(LATER, RESTORE)]
    assert not result.context_flips[restore] and result.redundant[restore] and not result.backup[restore]
    assert np.isnan(result.clamp_effect[restore])  # clamping is a backup test, only in flipping contexts
    assert result.with_latent_score[restore] < threshold <= result.context_score[restore]
    assert not result.redundant[rows[(LATER, COUNTER)]]
    assert summary["n_redundant"] >= 1 and summary["redundant"][0][1] == "set 0"


def test_nothing_planted_says_none_found(hydra) -> None:
    path, loaded, saes, minimal = hydra
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")
        live = open_live(study, loaded=loaded, saes=saes)
        # a huge effect threshold and only the source layer: nothing passes a test
        result, summary = run_dormant(study, live, greedy, DormantConfig(layers=(SOURCE,), restore_threshold=1e6, subsets=False), progress=False)
    assert summary["n_backups"] == 0 and summary["n_redundant"] == 0
    assert "found      none" in "\n".join(dormant_summary_lines(summary, SOURCE))


def test_layers_option_and_errors(hydra) -> None:
    path, loaded, saes, _minimal = hydra
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")
        live = open_live(study, loaded=loaded, saes=saes)
        only_later, _ = run_dormant(study, live, greedy, DormantConfig(layers=(LATER,), max_per_layer=2), progress=False)
        assert set(only_later.layer.tolist()) == {LATER}
        assert max(np.unique(only_later.context, return_counts=True)[1]) <= 2  # per context (and prompt)
        with pytest.raises(InputError, match="before the source layer"):
            run_dormant(study, live, greedy, DormantConfig(layers=(0,)), progress=False)
        with pytest.raises(InputError, match="no greedy set"):
            run_dormant(study, live, greedy, DormantConfig(prompts=(3,)), progress=False)
        no_later = open_live(study, loaded=loaded, saes={SOURCE: saes[SOURCE]})
        with pytest.raises(InputError, match="no SAE for layer 2"):
            run_dormant(study, no_later, greedy, DormantConfig(), progress=False)


def test_cli_dormant(hydra, monkeypatch: pytest.MonkeyPatch) -> None:
    path, loaded, saes, _minimal = hydra
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: open_live(study, loaded=loaded, saes={k: saes[k] for k in layers}))
    group = analyze_group
    out = CliRunner().invoke(group, ["dormant", str(path), "--max-per-layer", "4", "--run", "default"])
    assert out.exit_code == 0, out.output
    assert "dormant backups" in out.output and "saved" in out.output
    out = CliRunner().invoke(group, ["dormant", str(path), "--max-per-layer", "4", "--run", "default", "--json"])
    assert out.exit_code == 0, out.output
    facts = json.loads(out.stdout)
    assert facts["n_backups"] >= 1 and facts["prompts"][0]["evidence"]
    out = CliRunner().invoke(group, ["dormant", str(path), "--run", "none"])
    assert out.exit_code == 2 and "analyze greedy" in out.output
    out = CliRunner().invoke(group, ["dormant", str(path), "--layers", "3"])
    assert out.exit_code == 2 and "no SAE" in out.output and len(out.output.strip().splitlines()) == 1


def test_direction_ablation_is_a_context(hydra) -> None:
    from cache.directions import direction_ablation
    from explorer.results import DirectionResult

    path, loaded, saes, minimal = hydra
    with Study(path) as study:
        ids = study.token_ids(0).astype(int).tolist()
        greedy = GreedyResult.load(study, "default")
    direction = saes[SOURCE].W_dec[list(minimal)].detach().sum(0)
    direction = (direction / direction.norm()).numpy()
    greedy.save(path, "withdir", config={})
    DirectionResult(
        layer=SOURCE, position=-1, direction=direction, candidate_layer=np.array([SOURCE]), candidate_position=np.array([-1]),
        refusal_drop=np.zeros(1, np.float32), kl=np.zeros(1, np.float32), induce=np.zeros(1, np.float32),
        baseline_score=0.0, ablated_score=0.0,
    ).save(path, "withdir", config={})
    with Study(path) as study:
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_dormant(study, live, greedy, DormantConfig(max_per_layer=4, subsets=False), progress=False, run="withdir")
    assert summary["direction_searched"] and result.context_label.tolist() == ["set 0", "direction"]
    refusal = loaded.adapter.refusal_token_ids(loaded.tokenizer)
    with torch.no_grad(), direction_ablation(loaded.model, torch.as_tensor(direction)):
        ablated = float(refusal_log_odds(loaded.model(torch.tensor([ids]), use_cache=False).logits[:, -1], refusal)[0])
    assert result.context_ablated[1] == pytest.approx(ablated, abs=2e-4)
    rows = np.flatnonzero(result.context == "direction")
    assert len(rows) == result.context_woken[1] > 0
    for i in rows[:2]:  # suppressing a woken latent under the direction ablation = a naive forward with both
        edit = LatentEdit(layer=int(result.layer[i]), latents=(int(result.latent[i]),))
        with torch.no_grad(), direction_ablation(loaded.model, torch.as_tensor(direction)), sae_edits(loaded.model, {edit.layer: saes[edit.layer]}, [edit]):
            both = float(refusal_log_odds(loaded.model(torch.tensor([ids]), use_cache=False).logits[:, -1], refusal)[0])
        assert result.with_latent_score[i] == pytest.approx(both, abs=2e-4)
