"""`analyze probe` on a tiny model with a planted harmfulness latent, and the statistics it uses.

Harmful prompts end in "~", harmless ones in "nicely". Latent PLANT reads the direction between
the two groups' mean post-instruction residuals at layer 1 (threshold half-way), so it carries
the label. A probe on it must beat probes on random active latents in distribution (AUROC
intervals apart), and the logistic regression, AUROC and intervals must match their definitions.
"""

from __future__ import annotations

import math
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import explorer.cli.shell as cli_shell

from cache.forward import pad_token_id
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import open_live
from explorer.cli import analyze as analyze_group
from explorer.results import CandidateResult
from explorer.probe import ProbeConfig, bootstrap_rows, format_summary, run_probe, second_set, seeds_metric
from explorer.results_paper2 import ProbeResult
from explorer.stats import LogisticProbe, accuracy, auroc, spearman, wilson
from store import Study
from store.errors import InputError
from tests.tiny_models import cache_tiny_study, make_tiny_sae, tiny_loaded

LAYER, PLANT = 1, 11
VERBS = ["pick", "forge", "steal", "hack", "break", "copy", "fake", "crack", "rob", "spoof", "leak", "jam"]
NOUNS = ["lock", "check", "car", "phone", "safe", "badge", "id", "router", "bank", "email"]
KIND = ["bake", "paint", "wash", "fold", "grow", "tune", "sing", "draw", "cook", "plant", "clean", "sort"]
THINGS = ["cake", "wall", "car", "shirt", "tree", "piano", "song", "cat", "soup", "rose"]
HARMFUL = [f"How to {v} a {n} ~" for v, n in zip(VERBS * 2, NOUNS * 3)][:20]
HARMLESS = [f"How to {v} a {n} nicely" for v, n in zip(KIND * 2, THINGS * 3)][:20]


def plant(loaded, sae) -> None:
    tok, adapter = loaded.tokenizer, loaded.adapter
    n_pos = adapter.n_post_instruction(tok)
    ids = [adapter.encode(tok, t) for t in HARMFUL + HARMLESS]
    ev = AblationEvaluator(loaded.model, sae, ids, adapter.refusal_token_ids(tok), pad_token_id(tok), EvaluatorConfig(layer=LAYER))
    post = torch.stack([ev.resid[p][-n_pos:].mean(0) for p in range(len(ids))])
    direction = post[:20].mean(0) - post[20:].mean(0)
    unit = direction / direction.norm()
    x = (post - sae.b_dec.detach()) @ unit
    with torch.no_grad():
        sae.W_enc[:, PLANT] = 4 * unit
        sae.b_enc[PLANT] = -4 * float(x[:20].mean() + x[20:].mean()) / 2
        sae.threshold[PLANT] = 0.0


@pytest.fixture(scope="module")
def probe_study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("probe")
    loaded = tiny_loaded("qwen2")
    sae = make_tiny_sae("jumprelu", layer=LAYER, threshold=0.3, seed=6)
    plant(loaded, sae)
    path = cache_tiny_study(root, loaded, HARMFUL, HARMLESS, layers=(LAYER,), saes={LAYER: sae}, refusal_threshold=-100.0, holdout_fraction=0.3)
    (root / "ood_harmful.json").write_text(json.dumps(["How to rob a train ~", "How to fake a coin ~", "How to hack a door ~"]))
    (root / "ood_harmless.json").write_text(json.dumps(["How to iron a shirt nicely", "How to wrap a gift nicely", "How to hum a tune nicely"]))
    return path, loaded, {LAYER: sae}, root


def test_planted_latent_probe_beats_random_latents(probe_study) -> None:
    path, loaded, saes, root = probe_study
    config = ProbeConfig(layer=LAYER, k=1, seeds=5, max_wrapped=2, n_boot=200,
                         ood_harmful=root / "ood_harmful.json", ood_harmless=root / "ood_harmless.json")
    with Study(path) as study:
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_probe(study, live, [PLANT], config, progress=False)
    assert result.sets.tolist() == ["in-distribution", "wrapped", "second data set"]
    assert result.set_size.tolist() == [12, 40, 6] and result.set_positives.tolist() == [6, 20, 3]
    refusal, random = 0, 1
    assert result.auroc[refusal, 0] >= 0.95 and result.accuracy[refusal, 0] >= 0.9
    assert result.auroc_interval[refusal, 0, 0] > result.auroc_interval[random, 0, 1], "planted latent beats random latents"
    assert "in-distribution: refusal latents beat random latents (AUROC intervals do not overlap)" in summary["verdicts"]
    assert PLANT not in result.random_latents.ravel().tolist() and result.random_latents.shape == (5, 1)
    # the random row is the mean over its seeds
    assert result.auroc[random, 0] == pytest.approx(result.random_seed_auroc[:, 0].mean(), abs=1e-6)
    assert result.auroc[refusal, 2] >= 0.9, "the planted latent also separates the second data set"
    assert "AUROC" in "\n".join(format_summary(summary))
    result.save(path, "t", config={})
    with Study(path) as study:
        back = ProbeResult.load(study, "t")
    np.testing.assert_array_equal(back.auroc, result.auroc)
    with Study(path) as study:
        live = open_live(study, loaded=loaded, saes=saes)
        with pytest.raises(InputError, match="need 3 refusal latents"):
            run_probe(study, live, [PLANT], ProbeConfig(layer=LAYER, k=3), progress=False)
    with pytest.raises(InputError, match="both --ood-harmful"):
        ProbeConfig(layer=LAYER, ood_harmful=root / "ood_harmful.json")


def test_logistic_probe_matches_its_optimality_condition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=80) > 0).astype(float)
    probe = LogisticProbe(l2=0.5).fit(x, y)
    z = np.hstack([np.ones((80, 1)), (x - probe.mean) / probe.scale])
    p = probe.predict_proba(x)
    gradient = z.T @ (p - y) + np.r_[0.0, 0.5 * probe.coef[1:]]
    np.testing.assert_allclose(gradient, 0, atol=1e-6)  # the penalised log-loss is at its minimum
    assert probe.coef[1] > 0 > probe.coef[2] and accuracy(y, p) > 0.85
    # separable data stays finite thanks to the penalty
    sep = LogisticProbe(l2=1.0).fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
    assert np.isfinite(sep.coef).all() and accuracy(np.array([0, 0, 1, 1]), sep.predict_proba(np.array([[0.0], [1.0], [2.0], [3.0]]))) == 1


def test_auroc_wilson_spearman_and_bootstrap() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.4, 0.1, 0.8, 0.3])
    # 9 (positive, negative) pairs: 0.4 vs 0.4 ties (counts ½), the other 8 are ordered right
    assert auroc(labels, scores) == pytest.approx((8 + 0.5) / 9)
    assert math.isnan(auroc(np.ones(3), np.arange(3.0)))
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    probabilities = np.stack([scores, scores[::-1]])
    value = seeds_metric(auroc)(labels, probabilities)
    assert value == pytest.approx((auroc(labels, scores) + auroc(labels, scores[::-1])) / 2)
    low, high = bootstrap_rows(seeds_metric(auroc), labels, probabilities, 300, 0)
    assert low <= value <= high


def test_second_set_filters_table_rows(tmp_path) -> None:
    table = tmp_path / "xs.csv"
    table.write_text("id,prompt,label\n1,How do I kill a Python process?,safe\n2,How do I kill a person?,unsafe\n3,How do I kill a Python process?,safe\n")
    assert second_set(table, "harmless", ("label=safe",)) == ["How do I kill a Python process?"]
    with pytest.raises(InputError, match="no rows match"):
        second_set(table, "harmless", ("label=other",))


def test_cli_probe(probe_study, monkeypatch: pytest.MonkeyPatch) -> None:
    path, loaded, saes, _root = probe_study
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: open_live(study, loaded=loaded, saes={k: saes[k] for k in layers}))
    scores = np.zeros(128, np.float32)
    scores[PLANT] = 1.0
    CandidateResult(layer=LAYER, cosine=scores, attribution=scores, integrated_gradients=scores,
                    top_cosine=np.arange(5), top_attribution=np.array([PLANT]), overlap=0.0).save(path, "cli", config={})
    out = CliRunner().invoke(analyze_group, ["probe", str(path), "--run", "cli", "--k", "1", "--seeds", "3", "--max-wrapped", "1",
                                             "--wrappers", "fiction-novel,prefix-sure", "--n-boot", "50"])
    assert out.exit_code == 0, out.output
    assert "refusal latents  in-distribution" in out.output and "verdict" in out.output and "saved" in out.output
    out = CliRunner().invoke(analyze_group, ["probe", str(path), "--run", "cli", "--wrappers", "nope"])
    assert out.exit_code == 2 and "unknown wrapper" in out.output
