"""Cross-validated FM-vs-linear comparison: the bootstrap against a naive loop, rank choice, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.fm import FMConfig
from explorer.fm_compare import CompareConfig, bootstrap_r2, choose_rank, compare_models, fm_parameters


def test_bootstrap_equals_explicit_resampling() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    predictions = np.stack([y + rng.normal(0, s, 50) for s in (0.1, 0.5, 2.0)])
    boot = bootstrap_r2(y, predictions, 300, seed=4, chunk=64)
    # the same draws, resampled row by row
    replay = np.random.default_rng(4)
    for start in range(0, 300, 64):
        draws = replay.integers(0, 50, (min(64, 300 - start), 50))
        for r, idx in enumerate(draws):
            ys = y[idx]
            for model in range(3):
                expected = 1 - np.sum((ys - predictions[model, idx]) ** 2) / np.sum((ys - ys.mean()) ** 2)
                assert boot[start + r, model] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_rank_is_sized_to_the_experiments() -> None:
    assert fm_parameters(17, 8) == 154
    assert choose_rank(1540, 17) == 8 and choose_rank(1539, 17) == 7
    assert choose_rank(350, 17) == 1 and choose_rank(349, 17) == 0
    assert choose_rank(10**6, 4, max_rank=6) == 6


def test_constant_scores_give_no_evidence() -> None:
    X = (np.random.default_rng(1).random((60, 4)) < 0.5).astype(float)
    comparison = compare_models(X, np.ones(60), FMConfig(rank=1, max_epochs=5), CompareConfig(bootstrap=200))
    assert comparison.verdict == "additive" and "do not vary" in comparison.sentence()


def test_folds_partition_and_predictions_are_out_of_fold() -> None:
    rng = np.random.default_rng(2)
    X = (rng.random((100, 5)) < 0.5).astype(float)
    y = X @ np.arange(5.0)  # exactly linear: the linear model's out-of-fold R² is ~1
    comparison = compare_models(X, y, FMConfig(rank=1, max_epochs=30), CompareConfig(bootstrap=200, folds=4))
    assert comparison.r2["linear"] > 0.999 and comparison.r2["mean"] < 0.0  # the mean of other folds loses a little
    assert comparison.verdict == "additive" and comparison.r2_low["linear"] <= comparison.r2["linear"] <= comparison.r2_high["linear"]
    facts = comparison.as_dict()
    assert set(facts["r2"]) == {"fm", "linear", "mean", "fm_minus_linear"} and facts["verdict"] == "additive"


@pytest.mark.parametrize("kwargs", [{"folds": 1}, {"bootstrap": 10}, {"confidence": 1.0}, {"min_gain": -0.1}])
def test_config_is_validated(kwargs) -> None:
    with pytest.raises(ValueError):
        CompareConfig(**kwargs)
