"""The factorization machine: recovery of a planted FM, the linear baseline, the helpers."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import kernels
from explorer.fm import FMConfig, FMFit, fit_fm, interaction_matrix, interaction_share, top_pairs

PLANTED_PAIRS = ((0, 5, 2.0), (3, 17, 1.5), (8, 9, -2.0))


def _planted(m, *, n=32, noise=0.1, seed=0, linear_only=False):
    """Experiments X (0/1) and noisy scores y from a known FM with a few strong pairs."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n)
    V = np.zeros((n, 4)) if linear_only else 0.15 * rng.standard_normal((n, 4))
    if not linear_only:
        for f, (a, b, value) in enumerate(PLANTED_PAIRS):  # one private factor per pair
            V[a, f], V[b, f] = np.sqrt(abs(value)), np.sign(value) * np.sqrt(abs(value))
    X = (rng.random((m, n)) < 0.5).astype(np.float64)
    xv = X @ V
    y = 0.3 + X @ w + 0.5 * ((xv**2).sum(1) - X @ (V**2).sum(1))
    return X, y + noise * y.std() * rng.standard_normal(m)


@pytest.fixture(scope="module")
def planted_fit():
    X, y = _planted(1024)
    return X, y, fit_fm(X, y, FMConfig(seed=3))


def test_recovers_planted_fm(planted_fit):
    X, y, fit = planted_fit
    assert fit.holdout_r2 > 0.9
    assert fit.holdout_r2 > fit.linear_holdout_r2 + 0.05  # the interactions are real
    assert fit.train_r2 > 0.9
    strongest = {(i, j) for i, j, _ in top_pairs(fit.V, 5, "abs")}
    assert {(a, b) for a, b, _ in PLANTED_PAIRS} <= strongest
    positive = [(i, j) for i, j, _ in top_pairs(fit.V, 2, "positive")]
    negative = [(i, j) for i, j, _ in top_pairs(fit.V, 1, "negative")]
    assert set(positive) == {(0, 5), (3, 17)} and negative == [(8, 9)]
    # the split partitions the rows and the holdout was never fitted on
    split = np.concatenate([fit.train_index, fit.validation_index, fit.holdout_index])
    np.testing.assert_array_equal(np.sort(split), np.arange(X.shape[0]))
    assert fit.holdout_index.size == round(0.2 * X.shape[0]) and fit.validation_index.size > 0
    assert fit.best_epoch <= fit.epochs


def test_linear_data_fits_with_both_models():
    X, y = _planted(768, linear_only=True, seed=5)
    fit = fit_fm(X, y)
    assert fit.holdout_r2 > 0.9 and fit.linear_holdout_r2 > 0.9


def test_fit_is_deterministic_and_seeded():
    X, y = _planted(200, seed=1)
    config = FMConfig(max_epochs=15, seed=11)
    a, b = fit_fm(X, y, config), fit_fm(X, y, config)
    np.testing.assert_array_equal(a.V, b.V)
    np.testing.assert_array_equal(a.holdout_index, b.holdout_index)
    assert a.w0 == b.w0 and a.epochs == b.epochs
    c = fit_fm(X, y, FMConfig(max_epochs=15, seed=12))
    assert not np.array_equal(a.V, c.V)


def test_predict_matches_the_csr_kernel(planted_fit):
    X, _, fit = planted_fit
    X = X[:50] * np.linspace(0.5, 2.0, X.shape[1])  # real-valued rows too
    rows, cols = np.nonzero(X)
    indptr = np.searchsorted(rows, np.arange(X.shape[0] + 1)).astype(np.int64)
    scores = kernels.fm_score_csr(indptr, cols, X[rows, cols], fit.w0, fit.w, fit.V)
    np.testing.assert_allclose(scores, fit.predict(X), rtol=1e-4, atol=1e-4)  # float32 params


def test_interaction_matrix_and_top_pairs():
    V = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0], [0.0, 0.0]])
    M = interaction_matrix(V)
    np.testing.assert_array_equal(np.diag(M), 0.0)
    np.testing.assert_array_equal(M, M.T)
    assert M[0, 1] == 1.0 and M[1, 2] == -2.0 and M[0, 2] == 0.0
    assert top_pairs(V, 5, "positive") == [(0, 1, 1.0)]
    assert top_pairs(V, 5, "negative") == [(1, 2, -2.0)]
    assert top_pairs(V, 5, "abs") == [(1, 2, -2.0), (0, 1, 1.0)]
    assert top_pairs(V, 1, "abs") == [(1, 2, -2.0)]
    assert top_pairs(V, 0, "abs") == []
    with pytest.raises(ValueError, match="sign"):
        top_pairs(V, 1, "largest")


def test_interaction_share():
    # latent 0: main effect only; latents 1 and 2 interact with each other only; 3 never on
    fit = FMFit(
        w0=0.0, w=np.array([2.0, 1.0, 0.0, 1.0]), V=np.array([[0.0], [1.0], [3.0], [0.0]]),
        train_r2=1.0, holdout_r2=1.0, linear_train_r2=1.0, linear_holdout_r2=1.0,
        epochs=1, best_epoch=1, train_index=np.arange(3), validation_index=np.arange(0),
        holdout_index=np.arange(0),
    )
    X = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    share = interaction_share(fit, X)
    # latent 1: |M| = 1, 1; |I| = 3, 0 -> 3 / (2 + 3); latent 2: |M| = 0; |I| = 3, 0 -> 1
    np.testing.assert_allclose(share[:3], [0.0, 0.6, 1.0])
    assert np.isnan(share[3])
    # the two parts add up to the drop when the latent is switched off
    X_off = X.copy()
    X_off[:, 1] = 0
    drop = fit.predict(X) - fit.predict(X_off)
    np.testing.assert_allclose(drop, [1.0 + 3.0, 1.0, 0.0])


@pytest.mark.parametrize(
    "kwargs",
    [{"rank": 0}, {"rank": 2.5}, {"l2_w": -1.0}, {"lr": 0.0}, {"batch_size": 0},
     {"holdout_fraction": 1.0}, {"validation_fraction": -0.1}, {"patience": 0}, {"seed": 1.5}],
)
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError):
        FMConfig(**kwargs)


def test_fit_rejects_bad_inputs():
    with pytest.raises(ValueError, match="need X"):
        fit_fm(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        fit_fm(np.full((4, 2), np.nan), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        fit_fm(np.zeros((1, 2)), np.zeros(1))
