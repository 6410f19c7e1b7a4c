"""Stage 2 (greedy minimal sets) and the `analyze` CLI on the planted tiny model.

The planted SAE has two redundant latents (5, 9) that each reconstruct half of the refusal
direction u; with the flip threshold at −4 neither half alone flips a prompt, so the minimal
set of every prompt is exactly {5, 9}.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

import explorer.cli.shell as cli_shell
from cache.sae import decoder_rows
from explorer.cli import analyze as analyze_group
from explorer.candidates import cosine_scores
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.greedy import GreedyConfig, run_greedy, search
from explorer.live import prompt_token_ids, select_prompts
from explorer.results import CandidateResult, DirectionResult, GreedyResult
from store import Study
from tests.planted import PLANTED_LATENTS, SAE_LAYER, planted_live

THRESHOLD = -4.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cosine_candidates(sae, u, reverse: bool = False) -> CandidateResult:
    cosine = cosine_scores(decoder_rows(sae), u)
    if reverse:
        cosine = -cosine
    zeros = np.zeros_like(cosine)
    top = np.argsort(-cosine)[:10]
    return CandidateResult(layer=SAE_LAYER, cosine=cosine, attribution=zeros, integrated_gradients=zeros,
                           top_cosine=top, top_attribution=top, overlap=1.0)


def check_invariants(result: GreedyResult, ev: AblationEvaluator, chosen: list[int]) -> None:
    for s in range(len(result.prompt)):
        sizes, scores, removed = result.trajectory_of(s)
        final = result.latents_of(s)
        assert removed[0] == -1 and np.all(np.diff(sizes) == -1)  # one latent per step
        assert sizes[-1] == len(final) and result.final_score[s] == pytest.approx(scores[-1])
        start = set(final.tolist()) | set(removed[1:].tolist())
        assert len(start) == sizes[0] and set(final.tolist()) <= start
        if result.start_score[s] < result.threshold:  # the start flipped: every step keeps the flip
            assert np.all(scores < result.threshold)
            rows = [chosen.index(int(p)) for p in (result.joint_prompts if s == len(result.prompt) - 1 and len(result.joint_prompts) else [result.prompt[s]])]
            assert np.all(ev.scores_of_sets([final.tolist()], rows) < result.threshold)


def test_greedy_finds_the_planted_pair_for_every_prompt_and_jointly(planted) -> None:
    path, loaded, sae, u = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        config = GreedyConfig(
            layer=SAE_LAYER, k=8, threshold=THRESHOLD, max_prompts=4, joint=True, generate=2, max_batch=16, prefix_pass=False,
            side_by_side=1,  # one search after the other: the forward count below is per search
        )
        result, summary = run_greedy(study, live, cosine_candidates(sae, u), config, progress=False)
        chosen = select_prompts(study, label="harmful", refused=True)[:4]
        ev = AblationEvaluator.from_live(live, prompt_token_ids(study, chosen), EvaluatorConfig(layer=SAE_LAYER))
    assert len(result.prompt) == 5 and result.joint_prompts.tolist() == chosen
    for s in range(5):
        assert sorted(result.latents_of(s).tolist()) == sorted(PLANTED_LATENTS)
        assert result.baseline_score[s] > -1 > THRESHOLD > result.start_score[s]
    assert (result.flipped == 1).all() and all(text.startswith("I") for text in result.baseline_generation)
    assert not any(text.startswith(("I", "i")) for text in result.ablated_generation)
    check_invariants(result, ev, chosen)
    # each half of u alone does not flip: both latents are needed
    assert np.all(ev.scores_of_sets([[5], [9]]) > THRESHOLD)
    assert summary["sizes"] == [2, 2, 2, 2] and summary["mean_jaccard"] == 1.0 and summary["joint_size"] == 2
    # cost (one latent per step): the baseline, then per search its start set and one batched
    # step per removal attempt
    expected = 1
    for s in range(5):
        sizes, _, _ = result.trajectory_of(s)
        rows = 4 if s == 4 else 1
        expected += 1 + sum(math.ceil(n * rows / 16) for n in sizes)
    assert summary["forwards_from_layer"] == expected
    result.save(path, "greedy-test", config={})
    with Study(path) as study:
        back = GreedyResult.load(study, "greedy-test")
    assert back.joint_prompts.tolist() == chosen and back.latents_of(0).tolist() == result.latents_of(0).tolist()


def test_search_orders_and_the_prefix_pass(planted) -> None:
    path, loaded, sae, u = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        chosen = select_prompts(study, label="harmful", refused=True)[:1]
        ev = AblationEvaluator.from_live(live, prompt_token_ids(study, chosen), EvaluatorConfig(layer=SAE_LAYER))
    active = ev.active_latents(0).tolist()
    start = list(PLANTED_LATENTS) + [i for i in active if i not in PLANTED_LATENTS][:6]
    loose = search(ev, [0], start, threshold=THRESHOLD, order="thresholded", p_threshold=0.5)
    assert sorted(loose.final) == sorted(PLANTED_LATENTS)
    # p_threshold 0: every active latent moves p a little, so none may be dropped
    strict = search(ev, [0], start, threshold=THRESHOLD, order="thresholded", p_threshold=0.0)
    assert strict.final == start and strict.sizes == [len(start)]
    stepwise = search(ev, [0], start, threshold=THRESHOLD, order="ascending", prefix_pass=False)
    assert sorted(stepwise.final) == sorted(PLANTED_LATENTS) and stepwise.sizes == list(range(len(start), 1, -1))
    # the prefix pass drops the six random latents in two forwards; one more step proves the
    # planted pair minimal: start + singles + prefixes + that step = 4 forwards (vs 1 + 7)
    before = ev.n_forwards
    fast = search(ev, [0], start, threshold=THRESHOLD, order="ascending")
    assert ev.n_forwards - before == 4 and fast.prefix_removed == 6
    assert sorted(fast.final) == sorted(PLANTED_LATENTS) and fast.sizes == stepwise.sizes
    assert np.all(np.array(fast.scores) < THRESHOLD) and set(fast.removed[1:]) == set(start) - set(PLANTED_LATENTS)


def test_start_set_without_the_planted_latents_does_not_flip(planted) -> None:
    path, loaded, sae, u = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        config = GreedyConfig(layer=SAE_LAYER, k=4, threshold=THRESHOLD, max_prompts=2, generate=0)
        result, summary = run_greedy(study, live, cosine_candidates(sae, u, reverse=True), config, progress=False)
    assert summary["start_flips"] == 0 and len(summary["no_flip_at_k"]) == 2
    assert (result.flipped == -1).all() and (result.start_score >= THRESHOLD).all()
    assert np.diff(result.trajectory_offsets).tolist() == [1, 1] and np.diff(result.set_offsets).tolist() == [4, 4]


def test_analyze_cli_runs_the_three_stages_and_explains_missing_inputs(planted, monkeypatch, tmp_path) -> None:
    path, loaded, sae, u = planted
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: planted_live(study, loaded, sae))
    runner = CliRunner()
    missing = runner.invoke(analyze_group, ["greedy", str(path), "--run", "cli-empty"])
    assert missing.exit_code == 2 and "run `refusal-explorer analyze candidates" in missing.output
    missing = runner.invoke(analyze_group, ["candidates", str(path), "--run", "cli-empty"])
    assert missing.exit_code == 2 and "run `refusal-explorer analyze direction" in missing.output
    no_codes = runner.invoke(analyze_group, ["candidates", str(path), "--layer", "2", "--run", "cli"])
    assert no_codes.exit_code == 2 and "layer 2 has no SAE codes" in no_codes.output
    assert len(no_codes.output.strip().splitlines()) == 1
    out = runner.invoke(analyze_group, ["direction", str(path), "--run", "cli", "--layers", "1", "--positions=-2,-3"])
    assert out.exit_code == 0, out.output
    assert "direction  layer 1" in out.output
    assert "control    3 random directions ablated: harmless argmax changed" in out.output
    out = runner.invoke(analyze_group, ["candidates", str(path), "--run", "cli", "--top-k", "5", "--ig-steps", "2", "--max-prompts", "3"])
    assert out.exit_code == 0, out.output
    assert "overlap@5" in out.output
    out = runner.invoke(analyze_group, ["greedy", str(path), "--run", "cli", "--k", "6", "--max-prompts", "2", "--generate", "2",
                                        "--threshold", str(THRESHOLD)])
    assert out.exit_code == 0, out.output
    assert "set sizes  [2, 2]" in out.output
    with Study(path) as study:
        assert DirectionResult.load(study, "cli").layer == 1
        assert set(CandidateResult.load(study, "cli").top_cosine[:2].tolist()) == set(PLANTED_LATENTS)
        greedy = GreedyResult.load(study, "cli")
        assert GreedyResult.config_of(study, "cli")["k"] == 6 and (greedy.flipped == 1).all()


def test_searches_side_by_side_find_the_same_sets_in_fewer_forwards(planted) -> None:
    """The searches of several prompts share batched forwards (explorer/greedy_search.search_many):
    every set, score and step is what one search after the other finds."""
    path, loaded, sae, u = planted
    results = {}
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        for side_by_side in (1, 8):
            config = GreedyConfig(layer=SAE_LAYER, k=8, threshold=THRESHOLD, max_prompts=4, joint=True, generate=0,
                                  max_batch=32, side_by_side=side_by_side)
            results[side_by_side] = run_greedy(study, live, cosine_candidates(sae, u), config, progress=False)
    (alone, alone_summary), (together, together_summary) = results[1], results[8]
    for name in ("prompt", "set_offsets", "set_latents", "trajectory_offsets", "trajectory_size", "trajectory_removed", "joint_prompts"):
        np.testing.assert_array_equal(getattr(alone, name), getattr(together, name))
    for name in ("baseline_score", "start_score", "final_score", "trajectory_score"):
        np.testing.assert_allclose(getattr(alone, name), getattr(together, name), atol=1e-4)
    assert alone_summary["rows"] == together_summary["rows"]  # the same (set, prompt) rows were scored
    assert together_summary["forwards_from_layer"] < alone_summary["forwards_from_layer"] / 2
