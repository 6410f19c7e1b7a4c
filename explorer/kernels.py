"""Numba kernels of the project, each with a NumPy reference beside it.

Every kernel is ``@njit(cache=True)``; nothing is compiled at import time (the first call
compiles, later runs load the on-disk cache). Each public function is a thin Python wrapper
that validates and normalises its inputs, then calls a private ``_..._kernel``; the
``*_reference`` function beside it computes the same result with vectorised NumPy and is what
the tests compare against.

Paired bootstrap sums (``bootstrap_sums``)
-----------------------------------------
For resamples given as row indices ``idx [B, m]`` (drawn with replacement), the sums a paired
bootstrap of R² needs: per resample, ``Σ y``, ``Σ y²`` and, per model, ``Σ e²`` over the
drawn rows (``sq_err [models, m]`` the squared out-of-fold errors). The kernel accumulates
them without materialising the resampled arrays, in parallel over resamples.

Factorization-machine scoring over CSR rows
-------------------------------------------
A second-order FM over ``n`` features scores a row ``x`` as::

    y = w0 + Σ_i w_i x_i + Σ_{i<j} <v_i, v_j> x_i x_j
      = w0 + Σ_i (w_i x_i - ½ x_i² ||v_i||²) + ½ Σ_f (Σ_i V_if x_i)²

which costs O(k · nnz) per row. Rows are cached SAE codes in CSR form over the *global*
latent vocabulary (``indptr`` int64 ``[n_rows + 1]``, ``indices`` int32 ``[nnz]``, ``values``
float32 ``[nnz]``), while the FM is fitted over a subset of latents. ``index_map`` (int32)
maps a global latent id to its FM column:

* a stored entry with global id ``g`` contributes iff ``0 <= g < len(index_map)`` and
  ``index_map[g] >= 0``; every other entry is ignored (as if the latent were inactive);
* ``index_map=None`` means the identity over the FM's ``n`` columns (ids ``>= n`` ignored);
* :func:`build_index_map` builds one from the FM's list of global latent ids.

Rows are expected to be canonical CSR (no repeated id in a row). A repeated id, or two global
ids mapped to the same column, counts as two features that share parameters.
Parameters are used as float32 (``w``, ``V``) and every sum is accumulated in float64; the
scores are float64. An empty row, or one whose entries are all ignored, scores ``w0``.
The kernels run in parallel over blocks of rows (numba's threading layer; with the
``workqueue`` layer, do not call them from several Python threads at once).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "bootstrap_sums",
    "bootstrap_sums_reference",
    "build_index_map",
    "fm_score_binary_csr",
    "fm_score_binary_csr_reference",
    "fm_score_csr",
    "fm_score_csr_reference",
]

_ROWS_PER_TASK = 256
"""Rows scored by one parallel task; the per-task scratch vector is allocated once per task."""

_REFERENCE_CHUNK_NNZ = 1 << 20
"""Stored entries the NumPy reference materialises at once (bounds its ``[nnz, k]`` buffer)."""


# --------------------------------------------------------------------------------------------
# Input handling shared by the kernels and their references.


def build_index_map(latent_ids: np.ndarray, n_global: int) -> np.ndarray:
    """``index_map`` int32 ``[n_global]`` sending ``latent_ids[c]`` to FM column ``c``, else -1.

    ``latent_ids`` are the global ids of the FM's columns, in column order; they must be
    distinct and in ``[0, n_global)``.
    """
    ids = np.asarray(latent_ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError("latent_ids must be a 1-D integer array")
    if n_global < 0 or n_global > np.iinfo(np.int32).max:
        raise ValueError(f"n_global must be in [0, 2**31), got {n_global}")
    if ids.size and (ids.min() < 0 or ids.max() >= n_global):
        raise ValueError(f"latent_ids must lie in [0, {n_global})")
    if np.unique(ids).size != ids.size:
        raise ValueError("latent_ids must be distinct")
    index_map = np.full(n_global, -1, dtype=np.int32)
    index_map[ids] = np.arange(ids.size, dtype=np.int32)
    return index_map


def _check_csr(indptr, indices, values):
    """Contiguous ``(indptr int64, indices int32, values float32 | None)``; raises on bad CSR."""
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    if indptr.ndim != 1 or indptr.size == 0:
        raise ValueError("indptr must be a 1-D array of length n_rows + 1 >= 1")
    if indices.ndim != 1:
        raise ValueError("indices must be 1-D")
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise ValueError("indptr must start at 0, be non-decreasing and end at len(indices)")
    if values is not None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.shape != indices.shape:
            raise ValueError("values must have the same shape as indices")
    return indptr, indices, values


def _check_fm(w0, w, V, index_map):
    """``(w0 float, w float32 [n], V float32 [n, k], index_map int32)``; raises on bad shapes."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    V = np.ascontiguousarray(V, dtype=np.float32)
    if w.ndim != 1 or V.ndim != 2 or V.shape[0] != w.shape[0]:
        raise ValueError(f"need w [n] and V [n, k], got {w.shape} and {V.shape}")
    if index_map is None:
        index_map = np.arange(w.shape[0], dtype=np.int32)
    else:
        index_map = np.ascontiguousarray(index_map, dtype=np.int32)
        if index_map.ndim != 1:
            raise ValueError("index_map must be 1-D")
        if index_map.size and index_map.max() >= w.shape[0]:
            raise ValueError(f"index_map points past the FM's {w.shape[0]} columns")
    return float(w0), w, V, index_map


def _half_sq_norms(V: np.ndarray) -> np.ndarray:
    """``½ ||v_i||²`` per FM column, float64 ``[n]``."""
    V64 = V.astype(np.float64)
    return 0.5 * np.einsum("ik,ik->i", V64, V64)


# --------------------------------------------------------------------------------------------
# Real-valued rows.


def fm_score_csr(indptr, indices, values, w0, w, V, index_map=None) -> np.ndarray:
    """FM score of every CSR row, float64 ``[n_rows]`` (see the module docstring).

    ``w0`` is the bias, ``w`` ``[n]`` and ``V`` ``[n, k]`` the FM's parameters over its
    ``n`` columns, ``index_map`` the global-id → column map (``None``: identity).
    """
    indptr, indices, values = _check_csr(indptr, indices, values)
    w0, w, V, index_map = _check_fm(w0, w, V, index_map)
    out = np.empty(indptr.size - 1, dtype=np.float64)
    _fm_score_csr_kernel(indptr, indices, values, index_map, w0, w.astype(np.float64),
                         _half_sq_norms(V), V, out)
    return out


@njit(cache=True, parallel=True, nogil=True)
def _fm_score_csr_kernel(indptr, indices, values, index_map, w0, w, half_nrm, V, out):
    n_rows = indptr.shape[0] - 1
    n_map = index_map.shape[0]
    k = V.shape[1]
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in prange(n_tasks):
        s = np.empty(k, dtype=np.float64)
        r_end = min((task + 1) * _ROWS_PER_TASK, n_rows)
        for r in range(task * _ROWS_PER_TASK, r_end):
            for f in range(k):
                s[f] = 0.0
            acc = 0.0
            # Unsigned positions and columns spare numba's negative-index wraparound code.
            for p in range(np.uint64(indptr[r]), np.uint64(indptr[r + 1])):
                g = indices[p]
                if g < 0 or g >= n_map:
                    continue
                col = index_map[g]
                if col < 0:
                    continue
                c = np.uint64(col)
                x = np.float64(values[p])
                acc += x * (w[c] - x * half_nrm[c])
                v = V[c]
                for f in range(k):
                    s[f] += v[f] * x
            sq = 0.0
            for f in range(k):
                sq += s[f] * s[f]
            out[r] = w0 + acc + 0.5 * sq


def fm_score_csr_reference(indptr, indices, values, w0, w, V, index_map=None) -> np.ndarray:
    """Vectorised NumPy twin of :func:`fm_score_csr` (segment sums with ``np.add.reduceat``)."""
    indptr, indices, values = _check_csr(indptr, indices, values)
    w0, w, V, index_map = _check_fm(w0, w, V, index_map)
    return _score_reference(indptr, indices, values, w0, w, V, index_map)


def _score_reference(indptr, indices, values, w0, w, V, index_map):
    """Shared body of both references; ``values=None`` means every stored value is 1."""
    n_rows = indptr.size - 1
    out = np.full(n_rows, w0, dtype=np.float64)
    if n_rows == 0 or indices.size == 0:
        return out
    w64, V64, half_nrm = w.astype(np.float64), V.astype(np.float64), _half_sq_norms(V)
    rows_per_chunk = max(1, int(_REFERENCE_CHUNK_NNZ * n_rows // indices.size))
    for r0 in range(0, n_rows, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, n_rows)
        p0, p1 = indptr[r0], indptr[r1]
        nonempty = indptr[r0 + 1 : r1 + 1] > indptr[r0:r1]
        if p0 == p1:
            continue
        ids = indices[p0:p1]
        in_map = (ids >= 0) & (ids < index_map.size)
        cols = np.full(ids.size, -1, dtype=np.int64)
        cols[in_map] = index_map[ids[in_map]]
        keep = cols >= 0
        x = np.ones(ids.size) if values is None else values[p0:p1].astype(np.float64)
        x = np.where(keep, x, 0.0)  # an ignored entry becomes a zero on column 0
        cols = np.where(keep, cols, 0)
        # Starts of the non-empty rows: each segment then runs to the next non-empty start,
        # which is exactly the row's end because the rows in between are empty.
        starts = (indptr[r0:r1] - p0)[nonempty]
        lin = np.add.reduceat(x * (w64[cols] - x * half_nrm[cols]), starts)
        s = np.add.reduceat(V64[cols] * x[:, None], starts, axis=0)
        out[r0:r1][nonempty] += lin + 0.5 * np.einsum("rk,rk->r", s, s)
    return out


# --------------------------------------------------------------------------------------------
# Binary rows: every stored value is 1, so no value is loaded and the linear and
# self-interaction terms fold into one per-column constant ``w_i - ½ ||v_i||²``.


def fm_score_binary_csr(indptr, indices, w0, w, V, index_map=None) -> np.ndarray:
    """FM score of every binary CSR row (all stored values 1), float64 ``[n_rows]``."""
    indptr, indices, _ = _check_csr(indptr, indices, None)
    w0, w, V, index_map = _check_fm(w0, w, V, index_map)
    out = np.empty(indptr.size - 1, dtype=np.float64)
    _fm_score_binary_csr_kernel(indptr, indices, index_map, w0,
                                w.astype(np.float64) - _half_sq_norms(V), V, out)
    return out


@njit(cache=True, parallel=True, nogil=True)
def _fm_score_binary_csr_kernel(indptr, indices, index_map, w0, lin, V, out):
    n_rows = indptr.shape[0] - 1
    n_map = index_map.shape[0]
    k = V.shape[1]
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in prange(n_tasks):
        s = np.empty(k, dtype=np.float64)
        r_end = min((task + 1) * _ROWS_PER_TASK, n_rows)
        for r in range(task * _ROWS_PER_TASK, r_end):
            for f in range(k):
                s[f] = 0.0
            acc = 0.0
            for p in range(np.uint64(indptr[r]), np.uint64(indptr[r + 1])):
                g = indices[p]
                if g < 0 or g >= n_map:
                    continue
                col = index_map[g]
                if col < 0:
                    continue
                c = np.uint64(col)
                acc += lin[c]
                v = V[c]
                for f in range(k):
                    s[f] += v[f]
            sq = 0.0
            for f in range(k):
                sq += s[f] * s[f]
            out[r] = w0 + acc + 0.5 * sq


def fm_score_binary_csr_reference(indptr, indices, w0, w, V, index_map=None) -> np.ndarray:
    """Vectorised NumPy twin of :func:`fm_score_binary_csr`."""
    indptr, indices, _ = _check_csr(indptr, indices, None)
    w0, w, V, index_map = _check_fm(w0, w, V, index_map)
    return _score_reference(indptr, indices, None, w0, w, V, index_map)


# --------------------------------------------------------------------------------------------
# Paired bootstrap sums.


def _check_bootstrap(idx, y, sq_err):
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    sq_err = np.ascontiguousarray(np.atleast_2d(sq_err), dtype=np.float64)
    if idx.ndim != 2 or y.ndim != 1 or sq_err.shape[1] != y.size:
        raise ValueError(f"need idx [B, m], y [m] and sq_err [models, m], got {idx.shape}, {y.shape}, {sq_err.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= y.size):
        raise ValueError(f"idx must lie in [0, {y.size})")
    return idx, y, sq_err


def bootstrap_sums(idx, y, sq_err) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resample ``Σ y`` [B], ``Σ y²`` [B] and per model ``Σ e²`` [B, models], float64."""
    idx, y, sq_err = _check_bootstrap(idx, y, sq_err)
    B, models = idx.shape[0], sq_err.shape[0]
    sy, syy, sse = np.zeros(B), np.zeros(B), np.zeros((B, models))
    _bootstrap_sums_kernel(idx, y, np.ascontiguousarray(sq_err.T), sy, syy, sse)
    return sy, syy, sse


@njit(cache=True, parallel=True, nogil=True)
def _bootstrap_sums_kernel(idx, y, sq_err_t, sy, syy, sse):
    B, m = idx.shape
    models = sq_err_t.shape[1]
    for b in prange(B):
        a, aa = 0.0, 0.0
        acc = np.zeros(models)
        for t in range(m):
            r = np.uint64(idx[b, t])
            v = y[r]
            a += v
            aa += v * v
            for k in range(models):
                acc[k] += sq_err_t[r, k]
        sy[b] = a
        syy[b] = aa
        for k in range(models):
            sse[b, k] = acc[k]


def bootstrap_sums_reference(idx, y, sq_err) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised NumPy twin of :func:`bootstrap_sums` (fancy indexing)."""
    idx, y, sq_err = _check_bootstrap(idx, y, sq_err)
    ys = y[idx]  # [B, m]
    return ys.sum(1), (ys * ys).sum(1), sq_err[:, idx].sum(2).T
