"""Every kernel in explorer.kernels against its NumPy reference and the FM's definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from explorer import kernels as K


def _random_csr(rng, n_rows, n_global, max_nnz, p_empty=0.2):
    """Canonical CSR (sorted, distinct ids per row) with some empty and single-entry rows."""
    counts = rng.integers(0, max_nnz + 1, n_rows)
    counts[rng.random(n_rows) < p_empty] = 0
    counts[rng.random(n_rows) < 0.1] = 1
    counts = np.minimum(counts, n_global)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate(
        [np.sort(rng.choice(n_global, c, replace=False)) for c in counts] or [np.empty(0)]
    ).astype(np.int32)
    values = rng.uniform(-2.0, 3.0, indptr[-1]).astype(np.float32)
    return indptr, indices, values


def _random_fm(rng, n, k):
    w = rng.standard_normal(n).astype(np.float32)
    V = (0.5 * rng.standard_normal((n, k))).astype(np.float32)
    return float(rng.standard_normal()), w, V


def _dense_definition(indptr, indices, values, w0, w, V, index_map):
    """y = w0 + Σ w_i x_i + Σ_{i<j} <v_i, v_j> x_i x_j, with explicit pairs over dense rows."""
    n_rows = indptr.size - 1
    X = np.zeros((n_rows, w.size))
    for r in range(n_rows):
        for p in range(indptr[r], indptr[r + 1]):
            g = indices[p]
            if 0 <= g < index_map.size and index_map[g] >= 0:
                X[r, index_map[g]] += values[p]
    V64 = V.astype(np.float64)
    G = V64 @ V64.T
    pairs = np.einsum("ri,ij,rj->r", X, np.triu(G, 1), X)
    return w0 + X @ w.astype(np.float64) + pairs


CASES = list(itertools.product([0, 1, 7, 300], [1, 4, 16], [False, True]))


@pytest.mark.parametrize(("n_rows", "k", "with_map"), CASES)
def test_fm_score_csr_matches_reference(n_rows, k, with_map):
    rng = np.random.default_rng(1000 * n_rows + 10 * k + with_map)
    n_global, n_fm = 50, 50
    index_map = None
    if with_map:  # the FM covers a random subset of the global latents
        n_fm = 20
        index_map = K.build_index_map(rng.choice(n_global, n_fm, replace=False), n_global)
    indptr, indices, values = _random_csr(rng, n_rows, n_global, max_nnz=12)
    w0, w, V = _random_fm(rng, n_fm, k)

    got = K.fm_score_csr(indptr, indices, values, w0, w, V, index_map)
    ref = K.fm_score_csr_reference(indptr, indices, values, w0, w, V, index_map)
    assert got.shape == (n_rows,) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)
    full_map = np.arange(n_fm, dtype=np.int32) if index_map is None else index_map
    np.testing.assert_allclose(
        ref, _dense_definition(indptr, indices, values, w0, w, V, full_map), rtol=1e-5, atol=1e-9
    )

    ones = np.ones_like(values)
    got_b = K.fm_score_binary_csr(indptr, indices, w0, w, V, index_map)
    ref_b = K.fm_score_binary_csr_reference(indptr, indices, w0, w, V, index_map)
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        got_b, K.fm_score_csr(indptr, indices, ones, w0, w, V, index_map), rtol=1e-5, atol=1e-9
    )


def test_reference_chunking_matches_one_chunk(monkeypatch):
    rng = np.random.default_rng(7)
    indptr, indices, values = _random_csr(rng, 500, 40, max_nnz=10)
    w0, w, V = _random_fm(rng, 40, 8)
    whole = K.fm_score_csr_reference(indptr, indices, values, w0, w, V)
    monkeypatch.setattr(K, "_REFERENCE_CHUNK_NNZ", 17)  # many chunks, some all-empty
    chunked = K.fm_score_csr_reference(indptr, indices, values, w0, w, V)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
    np.testing.assert_allclose(
        K.fm_score_csr(indptr, indices, values, w0, w, V), whole, rtol=1e-5, atol=1e-9
    )


def test_edge_rows_score_as_defined():
    # row 0 empty, row 1 a single latent, row 2 only ignored latents (unmapped, past the
    # map's end, negative), row 3 a pair, row 4 a mapped latent among ignored ones.
    w0, w = 0.25, np.array([1.0, -2.0, 0.5], dtype=np.float32)
    V = np.array([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]], dtype=np.float32)
    index_map = np.array([2, -1, 0, 1], dtype=np.int32)  # global 1 unmapped, 4+ unknown
    indptr = np.array([0, 0, 1, 4, 6, 9], dtype=np.int64)
    indices = np.array([2, 1, 9, -3, 0, 3, 1, 3, 7], dtype=np.int32)
    values = np.array([3.0, 5.0, 1.0, 1.0, 2.0, 1.5, 4.0, -1.0, 2.0], dtype=np.float32)
    # row 3: global 0 -> col 2 (x=2), global 3 -> col 1 (x=1.5): <v2, v1> = -0.5 + 2 = 1.5
    expected = [w0, w0 + 3.0, w0, w0 + 0.5 * 2 - 2.0 * 1.5 + 1.5 * 2 * 1.5, w0 + 2.0]
    for fn in (K.fm_score_csr, K.fm_score_csr_reference):
        np.testing.assert_allclose(fn(indptr, indices, values, w0, w, V, index_map), expected, rtol=1e-6)
    expected_b = [w0, w0 + 1.0, w0, w0 + 0.5 - 2.0 + 1.5, w0 - 2.0]
    for fn in (K.fm_score_binary_csr, K.fm_score_binary_csr_reference):
        np.testing.assert_allclose(fn(indptr, indices, w0, w, V, index_map), expected_b, rtol=1e-6)


def test_zero_rows_and_no_entries():
    w0, w, V = 1.5, np.ones(3, np.float32), np.ones((3, 2), np.float32)
    empty = np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    for fn in (K.fm_score_csr, K.fm_score_csr_reference):
        assert fn(*empty, w0, w, V).shape == (0,)
        np.testing.assert_array_equal(fn(np.zeros(4, np.int64), empty[1], empty[2], w0, w, V), [w0] * 3)
    for fn in (K.fm_score_binary_csr, K.fm_score_binary_csr_reference):
        assert fn(empty[0], empty[1], w0, w, V).shape == (0,)


def test_inputs_are_checked():
    w0, w, V = 0.0, np.ones(3, np.float32), np.ones((3, 2), np.float32)
    indices, values = np.array([0, 1], np.int32), np.ones(2, np.float32)
    with pytest.raises(ValueError, match="indptr"):
        K.fm_score_csr(np.array([0, 3], np.int64), indices, values, w0, w, V)
    with pytest.raises(ValueError, match="indptr"):
        K.fm_score_csr(np.array([0, 2, 1, 2], np.int64), indices, values, w0, w, V)
    with pytest.raises(ValueError, match="values"):
        K.fm_score_csr(np.array([0, 2], np.int64), indices, values[:1], w0, w, V)
    with pytest.raises(ValueError, match="V"):
        K.fm_score_csr(np.array([0, 2], np.int64), indices, values, w0, w, V[:2])
    with pytest.raises(ValueError, match="columns"):
        K.fm_score_csr(np.array([0, 2], np.int64), indices, values, w0, w, V, np.array([0, 3], np.int32))


def test_build_index_map():
    index_map = K.build_index_map(np.array([5, 2, 7]), 9)
    assert index_map.dtype == np.int32
    np.testing.assert_array_equal(index_map, [-1, -1, 1, -1, -1, 0, -1, 2, -1])
    with pytest.raises(ValueError, match="distinct"):
        K.build_index_map(np.array([1, 1]), 4)
    with pytest.raises(ValueError, match="lie in"):
        K.build_index_map(np.array([4]), 4)


def test_bootstrap_sums_match_the_reference() -> None:
    rng = np.random.default_rng(7)
    y = rng.normal(size=300)
    sq_err = rng.random((3, 300))
    idx = rng.integers(0, 300, (50, 300))
    fast = K.bootstrap_sums(idx, y, sq_err)
    slow = K.bootstrap_sums_reference(idx, y, sq_err)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="idx must lie"):
        K.bootstrap_sums(np.array([[300]]), y, sq_err)
