"""Cost of the FM-vs-linear comparison (``explorer.fm_compare``), in one run.

    python bench/bench_fm_compare.py [--rows 400,1600 --latents 17 --rank 2 --bootstrap 2000]

For each experiment count: the k-fold cross-validation (k FM fits and ridge fits), and the
paired bootstrap, numba sums over drawn indices (explorer.kernels.bootstrap_sums) vs a naive Python loop that
resamples rows one resample at a time (timed on ``--naive`` resamples and scaled). Target: the
numba bootstrap well under a second and the cross-validation's time (the FM fits dominate).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from explorer.fm import FMConfig
from explorer.fm_compare import MODELS, bootstrap_r2, out_of_fold


def planted(m: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = (rng.random((m, n)) < 0.5).astype(np.float64)
    y = X @ rng.normal(size=n) - 2.0 * X[:, 0] * X[:, 1] + rng.normal(0, 0.2, m)
    return X, y


def naive_bootstrap(y: np.ndarray, predictions: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, predictions.shape[0]))
    for b in range(n_resamples):
        idx = rng.integers(0, y.size, y.size)
        ys = y[idx]
        sst = np.sum((ys - ys.mean()) ** 2)
        for k in range(predictions.shape[0]):
            out[b, k] = 1 - np.sum((ys - predictions[k, idx]) ** 2) / sst
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="400,1600")
    parser.add_argument("--latents", type=int, default=17)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--naive", type=int, default=200, help="naive resamples timed (then scaled to --bootstrap)")
    args = parser.parse_args()
    bootstrap_r2(np.arange(10.0), np.zeros((1, 10)), 10, 0)  # compile (or load) the numba kernel outside the timings
    print(f"{'rows':>6} {'cv fits s':>10} {'bootstrap s':>12} {'naive s (scaled)':>17} {'speed-up':>9}")
    for m in (int(r) for r in args.rows.split(",")):
        X, y = planted(m, args.latents)
        started = time.perf_counter()
        oof = out_of_fold(X, y, FMConfig(rank=args.rank, holdout_fraction=0.0), args.folds, 0)
        cv = time.perf_counter() - started
        predictions = np.stack([oof[k] for k in MODELS])
        started = time.perf_counter()
        bootstrap_r2(y, predictions, args.bootstrap, 0)
        fast = time.perf_counter() - started
        started = time.perf_counter()
        naive_bootstrap(y, predictions, args.naive, 0)
        naive = (time.perf_counter() - started) * args.bootstrap / args.naive
        print(f"{m:>6} {cv:>10.2f} {fast:>12.3f} {naive:>17.3f} {naive / fast:>8.1f}x")


if __name__ == "__main__":
    main()
