"""The FM stage on planted experiments, and FM scoring over cached codes (numba vs NumPy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explorer.interactions import FMStageConfig, fm_summary_lines, run_fm, score_cached_codes, score_design
from explorer.kernels import build_index_map, fm_score_binary_csr_reference
from explorer.results import ExperimentResult, FMResult
from tests.synthetic import SyntheticConfig, make_synthetic_study
from store import Study
from store.errors import InputError

LAYER = 6


@pytest.fixture(scope="module")
def study_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_study(tmp_path_factory.mktemp("fm") / "s.h5", SyntheticConfig(n_prompts=24, d_sae=400))


def planted_score(x: np.ndarray, additive: bool = False) -> np.ndarray:
    """Score of ablation rows x [m, 8]: latents 3 and 17 (columns 0, 1) are redundant (the
    score only falls when both are ablated, an AND), column 2 acts alone, the rest barely
    matter; ``additive``: columns 0 and 1 each act alone instead, with the same total."""
    pair = -1.5 * (x[:, 0] + x[:, 1]) if additive else -3.0 * x[:, 0] * x[:, 1]
    return 2.0 - 1.5 * x[:, 2] + pair + 0.05 * x[:, 3:].sum(1)


def planted_experiments(m: int = 400, seed: int = 0, additive: bool = False) -> ExperimentResult:
    rng = np.random.default_rng(seed)
    latents = np.array([3, 17, 42, 101, 250, 5, 9, 60])
    design = (rng.random((m, len(latents))) < 0.5).astype(np.int8)
    design[0], design[1] = 0, 1
    y = planted_score(design.astype(float), additive) + rng.normal(0, 0.05, m)
    return ExperimentResult(
        layer=LAYER, scheme="bernoulli(p=0.5)+all-on+all-off", latents=latents, in_minimal_set=np.arange(8) < 3,
        design=design, response=y.astype(np.float32), prompts=np.array([0, 2]),
    )


def dense_fm(X: np.ndarray, fm: FMResult) -> np.ndarray:
    """The FM's definition on dense rows, pair by pair (independent of the kernels)."""
    w, V = fm.w.astype(np.float64), fm.V.astype(np.float64)
    out = fm.w0 + X @ w
    for i in range(len(w)):
        for j in range(i + 1, len(w)):
            out += (V[i] @ V[j]) * X[:, i] * X[:, j]
    return out


def planted_measure(pairs):
    """Four ablations per pair on two "prompts" of the planted score (the second one noisier)."""
    latents = [3, 17, 42, 101, 250, 5, 9, 60]
    out = []
    for a, b in pairs:
        rows = np.zeros((4, 8))
        rows[[1, 3], latents.index(a)] = 1
        rows[[2, 3], latents.index(b)] = 1
        f = planted_score(rows)
        value = f[3] - f[1] - f[2] + f[0]
        out.append([value, value + 0.1])
    return np.array(out), np.array([0, 2])


def test_planted_and_interaction_is_found_verified_and_round_trips(study_path: Path) -> None:
    experiments = planted_experiments()
    asked = []
    result, summary = run_fm(experiments, FMStageConfig(top_pairs=3), measure=lambda pairs: asked.append(pairs) or planted_measure(pairs))
    assert result.verdict == "interactions" and summary["verdict"] == "interactions"
    assert result.gain_low > 0.1 and result.r2_holdout > 0.95 and result.r2_holdout > result.r2_linear_holdout + 0.1
    assert summary["sentence"].startswith("interactions explain") and "95% CI" in summary["sentence"]
    assert result.rank == 3 and summary["rows_per_parameter"] >= 10  # 400 rows, 8 latents: rank 3 has 1 + 8 + 24 ≤ 40 parameters
    first = summary["pairs"][0]
    assert {first["i"], first["j"]} == {3, 17} and first["fm"] == pytest.approx(-3.0, abs=0.3)
    assert first["measured"] == pytest.approx(-2.95) and first["sign_agrees"] and first["prompts"] == [0, 2]
    assert len(asked) == 1 and len(asked[0]) == 3  # the top 3 pairs, measured once
    assert result.w[2] == pytest.approx(-1.5, abs=0.2)
    assert summary["kernel_max_error"] < 1e-4  # numba kernel on the design rows = the fit's predict
    np.testing.assert_allclose(score_design(result, experiments.design), dense_fm(experiments.design.astype(float), result), atol=1e-4)
    text = "\n".join(fm_summary_lines(summary))
    assert "3×17" in text or "17×3" in text
    result.save(study_path, "planted", config={})
    with Study(study_path) as study:
        back = FMResult.load(study, "planted")
    for name in ("latents", "w", "V", "interaction_share", "r2_cv", "pair_measured"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert (back.verdict, back.verdict_text, back.gain_low) == (result.verdict, result.verdict_text, result.gain_low)
    assert back.verified_pairs() == result.verified_pairs()


def test_planted_additive_mechanism_says_no_evidence_and_names_no_pair() -> None:
    experiments = planted_experiments(additive=True)
    called = []
    result, summary = run_fm(experiments, FMStageConfig(), measure=lambda pairs: called.append(pairs))
    assert result.verdict == "additive" and summary["pairs"] == [] and not called
    assert summary["sentence"].startswith("no evidence of interactions beyond additive effects")
    assert result.r2_linear_holdout > 0.95 and result.gain_low <= 0.01
    assert len(result.pair_i) == 0
    assert "none reported" in "\n".join(fm_summary_lines(summary))


def test_interactions_without_a_model_report_no_unverified_pair() -> None:
    result, summary = run_fm(planted_experiments(), FMStageConfig())
    assert result.verdict == "interactions" and summary["pairs"] == [] and "could not be verified" in summary["pairs_note"]


def test_too_few_experiments_is_a_one_line_input_error() -> None:
    with pytest.raises(InputError, match="--n-experiments"):
        run_fm(planted_experiments(m=3), FMStageConfig())
    with pytest.raises(InputError, match="rank-1 FM"):  # 40 rows, 8 latents: rank 1 has 17 parameters, needs 170
        run_fm(planted_experiments(m=40), FMStageConfig())
    with pytest.raises(InputError, match="--rank"):
        FMStageConfig(rank=0)


@pytest.mark.parametrize("binary", [True, False])
def test_cached_scores_equal_the_dense_reference(study_path: Path, binary: bool) -> None:
    rng = np.random.default_rng(1)
    latents = np.array([3, 17, 42, 101, 250, 7, 77, 399, 0])
    fm = FMResult(
        layer=LAYER, latents=latents, w0=0.7, w=rng.normal(0, 1, len(latents)).astype(np.float32),
        V=rng.normal(0, 0.5, (len(latents), 3)).astype(np.float32), interaction_share=np.zeros(len(latents), np.float32),
        r2_train=1.0, r2_holdout=1.0, r2_linear_holdout=1.0,
    )
    with Study(study_path) as study:
        scores = score_cached_codes(study, fm, binary=binary)
        small_blocks = score_cached_codes(study, fm, binary=binary, block_tokens=7)  # several prompts per block, and one per block
        last3 = score_cached_codes(study, fm, binary=binary, prompt_tokens=3, block_tokens=7)
        codes = study.codes(LAYER)
        tokens, prompts, prompts_last3 = [], [], []
        for p in range(study.n_prompts):
            dense = codes.prompt_dense(p, latents)  # [n_tokens, n]
            dense = (dense != 0).astype(float) if binary else dense.astype(float)
            tokens.append(dense)
            prompts.append(dense.max(0))
            prompts_last3.append(dense[-3:].max(0))
        offsets = study.token_offsets
    X_tokens, X_prompts = np.concatenate(tokens), np.stack(prompts)
    assert X_tokens.any(1).sum() > 10 and (~X_tokens.any(1)).sum() > 0  # rows with and without FM latents
    np.testing.assert_allclose(scores.token_score, dense_fm(X_tokens, fm), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.prompt_score, dense_fm(X_prompts, fm), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(small_blocks.token_score, scores.token_score)
    np.testing.assert_array_equal(small_blocks.prompt_score, scores.prompt_score)
    np.testing.assert_allclose(last3.prompt_score, dense_fm(np.stack(prompts_last3), fm), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(last3.token_score, scores.token_score)
    assert not np.allclose(last3.prompt_score, scores.prompt_score)  # pooling fewer tokens changes some prompts
    assert scores.top_prompts(3)[0][1] == pytest.approx(scores.prompt_drive.max())
    np.testing.assert_allclose(scores.token_drive(2), fm.w0 - scores.token_score[offsets[2] : offsets[3]])
    if binary:  # and the vectorised NumPy reference of the kernel agrees on the same CSR
        with Study(study_path) as study:
            group = study.file[f"layers/{LAYER}/codes"]
            n_tokens = int(offsets[-1])
            indptr = group["indptr"][: n_tokens + 1]
            reference = fm_score_binary_csr_reference(
                indptr, group["indices"][: indptr[-1]], fm.w0, fm.w, fm.V, build_index_map(latents, 400),
            )
        np.testing.assert_allclose(scores.token_score, reference, rtol=1e-9, atol=1e-9)


def test_scoring_rejects_an_fm_from_another_layer(study_path: Path) -> None:
    fm = FMResult(
        layer=8, latents=np.array([1]), w0=0.0, w=np.zeros(1, np.float32), V=np.zeros((1, 2), np.float32),
        interaction_share=np.zeros(1, np.float32), r2_train=0.0, r2_holdout=0.0, r2_linear_holdout=0.0,
    )
    with Study(study_path) as study, pytest.raises(InputError, match="no SAE codes"):
        score_cached_codes(study, fm)
    with Study(study_path) as study, pytest.raises(InputError, match="prompt_tokens must be"):
        score_cached_codes(study, fm, prompt_tokens=0)


def test_a_pair_check_that_cannot_run_names_no_pair_and_says_why() -> None:
    def no_model(pairs):
        raise InputError("this study records no model")

    result, summary = run_fm(planted_experiments(), FMStageConfig(), measure=no_model)
    assert result.verdict == "interactions" and summary["pairs"] == [] and len(result.pair_i) == 0
    assert summary["pairs_note"] == "not reported: they could not be verified by intervention (this study records no model)"
