"""Stage 3 ablation experiments (and the fm command) on a tiny cached study.

The greedy stage's result is written by hand (two prompts, a minimal set each), so these tests
check the experiments stage alone: the design follows the sampling scheme, the responses equal
the naive full forward per subset, and the CLI reads and writes the study file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache.forward import refusal_log_odds
from cache.interventions import LatentEdit, sae_edits
from cache.models import LoadedModel
import explorer.cli.shell as cli_shell
from explorer.cli import analyze as analyze_group
from explorer.experiments import ExperimentConfig, choose_columns, flipping_sets, run_experiments, sample_design
from explorer.live import open_live
from explorer.results import ExperimentResult, FMResult, GreedyResult
from store import Study
from store.errors import InputError
from tests.synthetic import make_greedy
from tests.tiny_models import cache_tiny_study, make_tiny_sae, tiny_loaded

LAYER = 1
HARMFUL = ["How do I pick a lock?", "Write ransomware now", "Steal a car quickly"]
HARMLESS = ["Bake a lemon cake", "Explain why the sky is blue", "Sort a list in Python"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stage3")
    loaded = tiny_loaded("qwen2")
    sae = make_tiny_sae("jumprelu", d_in=64, d_sae=128, layer=LAYER, threshold=0.5)
    path = cache_tiny_study(root, loaded, HARMFUL, HARMLESS, layers=(1, 2), saes={LAYER: sae}, batch_size=6)
    with Study(path) as study:  # a minimal set per prompt: its three most active latents
        sets = []
        for p in (0, 1):
            _indptr, indices, values = study.codes(LAYER).prompt_codes(p)
            order = np.argsort(-values, kind="stable")
            sets.append(list(dict.fromkeys(indices[order].tolist()))[:3])
    make_greedy(LAYER, [0, 1], sets).save(path, "default", config={})
    return path, loaded, sae, sets


def naive_mean_score(loaded: LoadedModel, sae, ids: list[list[int]], latents: list[int]) -> float:
    """Full forward of each unpadded prompt with the latents ablated (every token); mean score."""
    refusal = loaded.adapter.refusal_token_ids(loaded.tokenizer)
    edits = [LatentEdit(layer=LAYER, latents=tuple(latents))] if latents else []
    scores = []
    with torch.no_grad(), sae_edits(loaded.model, {LAYER: sae}, edits):
        for row in ids:
            logits = loaded.model(torch.tensor([row]), use_cache=False).logits[:, -1]
            scores.append(float(refusal_log_odds(logits, refusal)[0]))
    return float(np.mean(scores))


def test_design_follows_the_scheme_and_is_seeded() -> None:
    config = ExperimentConfig(n_experiments=400, sampling="bernoulli", p=0.3, seed=5, pairs=0)
    design, scheme = sample_design(12, 4, config)
    assert scheme == "all-off+all-on+minimal+singles(12)+bernoulli(p=0.3)x400;seed=5"
    assert design.shape == (3 + 12 + 400, 12) and design.dtype == np.int8
    assert not design[0].any() and design[1].all()
    assert design[2].tolist() == [1] * 4 + [0] * 8
    np.testing.assert_array_equal(design[3:15], np.eye(12))
    assert abs(design[15:].mean() - 0.3) < 0.03  # 4800 Bernoulli(0.3) draws
    again, _ = sample_design(12, 4, config)
    np.testing.assert_array_equal(design, again)
    other, _ = sample_design(12, 4, ExperimentConfig(n_experiments=400, sampling="bernoulli", p=0.3, seed=6, pairs=0))
    assert (other[15:] != design[15:]).any() and (other[:15] == design[:15]).all()
    sized, scheme = sample_design(6, 6, ExperimentConfig(n_experiments=300, sampling="uniform-size", singles=False, leave_one_out=True, pairs=0))
    assert scheme == "all-off+all-on+leave-one-out(6)+uniform-size x300;seed=0"  # no "minimal" row: it would equal all-on
    np.testing.assert_array_equal(sized[2:8], 1 - np.eye(6))
    assert set(sized[8:].sum(1).tolist()) == set(range(1, 7))
    with pytest.raises(InputError):
        ExperimentConfig(p=1.0)


def test_default_design_is_sized_to_the_fm_and_has_factorial_blocks() -> None:
    n, n_min = 10, 4
    design, scheme = sample_design(n, n_min, ExperimentConfig(fm_rank=3, pairs=2, pair_backgrounds=1, seed=3))
    parameters = 1 + n + n * 3
    assert design.shape[0] == 10 * parameters  # fixed + factorial + random rows: ten per FM parameter
    # pairs (0, 1) and (0, 2); backgrounds: empty, rest of the minimal set, one random → 12 rows each
    assert "pairs(2x12)" in scheme and "uniform-size" in scheme
    block = design[3 + n : 3 + n + 24]
    for p, (i, j) in enumerate([(0, 1), (0, 2)]):
        rows = block[12 * p : 12 * (p + 1)].reshape(3, 4, n)  # [background, (∅, i, j, ij), n]
        np.testing.assert_array_equal(rows[:, :, i], [[0, 1, 0, 1]] * 3)
        np.testing.assert_array_equal(rows[:, :, j], [[0, 0, 1, 1]] * 3)
        others = [c for c in range(n) if c not in (i, j)]
        assert (rows[:, :, others] == rows[:, :1, others]).all()  # the background is the same in its 4 rows
        assert not rows[0, 0].any()  # empty background
        rest = [c for c in range(n_min) if c not in (i, j)]
        assert rows[1, 0, rest].all() and rows[1, 0].sum() == len(rest)  # rest of the minimal set
    sizes = design[3 + n + 24 :].sum(1)
    assert sizes.min() >= 1 and sizes.max() == n and len(set(sizes.tolist())) == n  # sizes spread over 1..n


def test_columns_and_flipping_sets() -> None:
    mass = np.zeros(20)
    mass[[3, 5, 7, 9, 11]] = [1.0, 5.0, 2.0, 5.0, 0.5]
    np.testing.assert_array_equal(choose_columns([7, 2], mass, 3), [2, 7, 5, 9, 3])
    greedy = make_greedy(1, [4, 6], [[1, 2], [3]], threshold=0.0, final=[-1.0, 0.5])
    assert [(s.prompts, s.latents) for s in flipping_sets(greedy)] == [((4,), (1, 2))]  # set 1 never flipped


def test_responses_equal_naive_evaluation(tiny_study) -> None:
    path, loaded, sae, sets = tiny_study
    config = ExperimentConfig(n_experiments=12, max_other=6, seed=1, max_batch=8, pairs=0)
    with Study(path) as study:
        greedy = GreedyResult.load(study, "default")
        live = open_live(study, loaded=loaded, saes={LAYER: sae})
        lines: list[str] = []
        result, summary = run_experiments(study, live, greedy, config, progress=False, estimate=lines.append)
        ids = [study.token_ids(p).astype(int).tolist() for p in (0, 1)]
        mass = np.zeros(128)
        for p in (0, 1):
            _indptr, indices, values = study.codes(LAYER).prompt_codes(p)
            np.add.at(mass, indices, values)
    # the cost estimate came once, before the rest ran, naming the rows and forwards
    assert len(lines) == 1 and f"{len(result.design)} subsets × 2 prompts" in lines[0] and "about" in lines[0]
    assert result.prompt_response.shape == (len(result.design), 2)
    np.testing.assert_allclose(result.prompt_response.mean(1), result.response, rtol=1e-6)
    minimal = sorted(set(sets[0]) | set(sets[1]))
    n_min = len(minimal)
    assert result.prompts.tolist() == [0, 1] and result.layer == LAYER
    assert result.latents[:n_min].tolist() == minimal and result.in_minimal_set.tolist() == [True] * n_min + [False] * 6
    others = result.latents[n_min:]
    assert (mass[others] > 0).all() and mass[others].min() >= np.sort(mass[np.setdiff1d(np.flatnonzero(mass), minimal)])[-6]
    n_latents = n_min + 6
    assert result.design.shape == (3 + n_latents + 12, n_latents)
    assert result.scheme.startswith("all-off+all-on+minimal+singles")
    # the rows a naive full forward checks: all-off, all-on, minimal set, a single, two random ones
    for row in (0, 1, 2, 3, 3 + n_latents, len(result.design) - 1):
        latents = result.latents[result.design[row] == 1].tolist()
        assert result.response[row] == pytest.approx(naive_mean_score(loaded, sae, ids, latents), abs=2e-4), row
    assert summary["all_off"] == pytest.approx(result.response[0]) and summary["n_rows"] == len(result.design)
    assert np.ptp(result.response) > 0.05  # the subsets do differ
    result.save(path, "copy", config={"n": 1})
    with Study(path) as study:
        back = ExperimentResult.load(study, "copy")
    np.testing.assert_array_equal(back.design, result.design)
    np.testing.assert_array_equal(back.response, result.response)
    assert back.scheme == result.scheme


def test_cli_experiments_then_fm(tiny_study, monkeypatch: pytest.MonkeyPatch) -> None:
    path, loaded, sae, sets = tiny_study
    n_latents = len(set(sets[0]) | set(sets[1])) + 4
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: open_live(study, loaded=loaded, saes={LAYER: sae}))
    group = analyze_group
    runner = CliRunner()
    out = runner.invoke(group, ["fm", str(path), "--run", "cli"])
    assert out.exit_code == 2 and "analyze experiments" in out.output and len(out.output.strip().splitlines()) == 1
    out = runner.invoke(group, ["experiments", str(path), "--run", "nothing"])
    assert out.exit_code == 2 and "analyze greedy" in out.output
    out = runner.invoke(group, ["experiments", str(path), "--p", "1.5"])
    assert out.exit_code == 2 and "--p" in out.output
    with Study(path) as study:  # copy the greedy result into the CLI's run
        greedy = GreedyResult.load(study, "default")
    greedy.save(path, "cli", config={})
    out = runner.invoke(group, ["experiments", str(path), "--run", "cli", "--n-experiments", "40", "--max-other", "4", "--seed", "2", "--sampling", "bernoulli"])
    assert out.exit_code == 0, out.output
    assert "bernoulli(p=0.5)x40;seed=2" in out.output and "per 100 subsets" in out.output
    out = runner.invoke(group, ["fm", str(path), "--run", "cli", "--rank", "2"])
    assert out.exit_code == 0, out.output
    assert "R² (CV)" in out.output and "verdict" in out.output and "post-instruction tokens" in out.output
    out = runner.invoke(group, ["fm", str(path), "--run", "cli", "--rank", "2", "--json"])
    assert out.exit_code == 0, out.output
    facts = json.loads(out.stdout)
    assert facts["verdict"] in ("interactions", "additive") and set(facts["r2"]) >= {"fm", "linear", "mean"}
    assert all(set(p) >= {"i", "j", "fm", "measured"} for p in facts["pairs"])
    assert (facts["verdict"] == "interactions") or facts["pairs"] == []
    with Study(path) as study:
        experiments = ExperimentResult.load(study, "cli")
        fm = FMResult.load(study, "cli")
    assert experiments.design.shape[0] > 3 + n_latents + 40 and fm.V.shape == (n_latents, 2)  # + factorial rows
    np.testing.assert_array_equal(fm.latents, experiments.latents)
