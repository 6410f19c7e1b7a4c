"""FM scoring throughput (numba vs NumPy vs torch CPU) and FM fit time, in one run.

    python bench/bench_fm.py [--rows 1000000 --latents 16384 --nnz 50 --k 16]

Scoring: one seeded CSR matrix (``--rows`` rows over ``--latents`` global latents, about
``--nnz`` stored entries per row, real values) scored by an FM of rank ``--k`` over
``--fm-latents`` of the latents (default: all of them), with

* numba: ``explorer.kernels.fm_score_csr`` (parallel over rows; also the binary variant),
* NumPy: ``explorer.kernels.fm_score_csr_reference`` (vectorised, ``np.add.reduceat``),
* torch: ``torch.sparse_csr_tensor`` @ dense on CPU (``X @ [V | w]`` and ``X² @ ½||v||²``),
  with the FM's parameters scattered once into global-id order (not timed).

Each is timed over ``--repeats`` runs (NumPy stops after ~10 s); the table shows the median.
The numba kernel's bandwidth counts the bytes of indptr + indices + values it reads; the
machine's is a ~``--copy-gb`` GB ``np.copyto`` (one thread) counting read + write bytes.
Targets: numba >= 5x NumPy and >= 2x torch.

Fit: ``explorer.fm.fit_fm`` (defaults) on planted FMs over ``--fit-latents`` latents for each
of ``--fit-sizes`` experiment counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import torch  # noqa: E402

from explorer import kernels  # noqa: E402
from explorer.fm import FMConfig, fit_fm  # noqa: E402


def make_csr(rng, n_rows, n_global, nnz):
    """Canonical CSR: row lengths uniform in [nnz/2, 3nnz/2], sorted distinct ids, values in (0, 1]."""
    lo, hi = max(1, nnz // 2), max(1, (3 * nnz) // 2)
    if hi > n_global:
        raise SystemExit(f"--nnz {nnz} is too large for --latents {n_global}")
    counts = rng.integers(lo, hi + 1, n_rows)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # ids = running sum of gaps in [1, n_global // hi], restarted per row: sorted, distinct, < n_global
    gaps = rng.integers(1, n_global // hi + 1, int(indptr[-1]), dtype=np.int64)
    running = np.cumsum(gaps)
    row_base = np.repeat(running[indptr[:-1]] - gaps[indptr[:-1]], counts)
    indices = (running - row_base - 1).astype(np.int32)
    del gaps, running, row_base
    values = (1.0 - rng.random(int(indptr[-1]), dtype=np.float32)).astype(np.float32)
    return indptr, indices, values


def timed(fn, repeats, budget_s=10.0):
    """Median and min wall time of ``fn()`` over up to ``repeats`` runs (at least one)."""
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), len(times), result


def cpu_time(fn, repeats, budget_s=10.0):
    """Least process CPU time of ``fn()`` over up to ``repeats`` runs (at least one)."""
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def torch_scorer(indptr, indices, values, n_global, w0, w, V, latent_ids):
    """Closure scoring the CSR rows with torch sparse CSR @ dense on CPU."""
    P = torch.zeros(n_global, V.shape[1] + 1)  # [V | w] in global-id order, zero if unmapped
    P[torch.from_numpy(latent_ids), :-1] = torch.from_numpy(V)
    P[torch.from_numpy(latent_ids), -1] = torch.from_numpy(w)
    half_nrm = torch.zeros(n_global, 1)
    half_nrm[torch.from_numpy(latent_ids), 0] = torch.from_numpy(0.5 * (V.astype(np.float64) ** 2).sum(1)).float()
    crow, col, val = torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(values)
    shape = (indptr.size - 1, n_global)

    def score():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            X = torch.sparse_csr_tensor(crow, col, val, size=shape, check_invariants=False)
            X2 = torch.sparse_csr_tensor(crow, col, val * val, size=shape, check_invariants=False)
            A = X @ P  # [rows, k + 1]
            s = A[:, :-1]
            y = w0 + A[:, -1] + 0.5 * (s * s).sum(1) - (X2 @ half_nrm)[:, 0]
            return y.double().numpy()

    return score


def copy_bandwidth(gigabytes, repeats):
    """Bytes per second of ``np.copyto`` (read + write) over a ~``gigabytes`` GB buffer."""
    n = int(gigabytes * 1e9) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    median, best, _, _ = timed(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / median, 2 * src.nbytes / best


def planted_experiments(rng, m, n, k=4, n_pairs=4):
    """X (0/1) and y from a random FM with a few strong pairs, plus 10% noise."""
    w = rng.standard_normal(n)
    V = 0.15 * rng.standard_normal((n, k))
    for f in range(min(n_pairs, k)):
        a, b = rng.choice(n, 2, replace=False)
        V[a, f], V[b, f] = 1.4, 1.4 * rng.choice([-1.0, 1.0])
    X = (rng.random((m, n)) < 0.5).astype(np.float64)
    xv = X @ V
    y = X @ w + 0.5 * ((xv**2).sum(1) - X @ (V**2).sum(1))
    return X, y + 0.1 * y.std() * rng.standard_normal(m)


def score_scenario(indptr, indices, values, n_global, fm_latents, k, rng, repeats):
    """Time every scorer on the same rows for an FM over ``fm_latents`` random latents; print a table."""
    latent_ids = np.sort(rng.choice(n_global, fm_latents, replace=False))
    index_map = kernels.build_index_map(latent_ids, n_global)
    w0 = 0.1
    w = rng.standard_normal(fm_latents).astype(np.float32)
    V = (0.1 * rng.standard_normal((fm_latents, k))).astype(np.float32)
    n_rows = indptr.size - 1
    covered = np.count_nonzero(index_map[indices] >= 0) / max(indices.size, 1)
    print(f"\nFM over {fm_latents:,} of {n_global:,} latents, k={k} ({covered:.1%} of the stored entries are its latents)")

    runs = {
        "numba (parallel)": lambda: kernels.fm_score_csr(indptr, indices, values, w0, w, V, index_map),
        "numba binary": lambda: kernels.fm_score_binary_csr(indptr, indices, w0, w, V, index_map),
        "numpy (reduceat)": lambda: kernels.fm_score_csr_reference(indptr, indices, values, w0, w, V, index_map),
        "torch CPU (sparse CSR)": torch_scorer(indptr, indices, values, n_global, w0, w, V, latent_ids),
    }
    results = {name: timed(fn, repeats) for name, fn in runs.items()}
    reference = results["numba (parallel)"][3]
    t_numba = results["numba (parallel)"][0]
    print(f"{'scorer':<24}{'median ms':>11}{'best ms':>10}{'runs':>6}{'Mrows/s':>10}{'numba x':>9}{'max |diff|':>12}")
    for name, (median, best, n_runs, scores) in results.items():
        diff = "" if name == "numba binary" else f"{np.max(np.abs(scores - reference), initial=0.0):.1e}"
        print(f"{name:<24}{median * 1e3:>11.1f}{best * 1e3:>10.1f}{n_runs:>6}{n_rows / median / 1e6:>10.2f}"
              f"{median / t_numba:>9.1f}{diff:>12}")
    print(f"speedup of numba (medians): {results['numpy (reduceat)'][0] / t_numba:.1f}x NumPy (target >= 5), "
          f"{results['torch CPU (sparse CSR)'][0] / t_numba:.1f}x torch (target >= 2)")

    # Per-core cost: one thread each, CPU time (less sensitive than wall time to a busy machine).
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        cpu = {name: cpu_time(runs[name], repeats)
               for name in ("numba (parallel)", "torch CPU (sparse CSR)")}
    finally:
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
    n_stored = indices.size
    print(f"one thread, CPU time per stored entry: numba {cpu['numba (parallel)'] / n_stored * 1e9:.2f} ns, "
          f"torch {cpu['torch CPU (sparse CSR)'] / n_stored * 1e9:.2f} ns, "
          f"numpy {results['numpy (reduceat)'][0] / n_stored * 1e9:.2f} ns (its wall time)")
    return t_numba


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--latents", type=int, default=16384, help="global latent vocabulary")
    parser.add_argument("--nnz", type=int, default=50, help="mean stored entries per row")
    parser.add_argument("--k", type=int, default=16, help="FM rank")
    parser.add_argument("--fm-latents", default="all,512",
                        help="comma list of how many latents the FM covers, one table each ('all' = --latents)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copy-gb", type=float, default=1.0)
    parser.add_argument("--fit-sizes", default="256,1024,4096")
    parser.add_argument("--fit-latents", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fm_sizes = [args.latents if s.strip() == "all" else int(s) for s in args.fm_latents.split(",")]
    if not all(0 < n <= args.latents for n in fm_sizes):
        raise SystemExit("--fm-latents must be in [1, --latents]")

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, numba threads {threads}, "
          f"torch threads {torch.get_num_threads()}; numpy {np.__version__}, numba {numba.__version__}, "
          f"torch {torch.__version__}")

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    indptr, indices, values = make_csr(rng, args.rows, args.latents, args.nnz)
    nnz = indices.size
    csr_bytes = indptr.nbytes + indices.nbytes + values.nbytes
    print(f"data: {args.rows:,} rows, {nnz:,} stored entries ({nnz / max(args.rows, 1):.1f}/row) over "
          f"{args.latents:,} latents; CSR {csr_bytes / 1e6:.0f} MB; built in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    tiny = indptr[:2], indices[: indptr[1]], values[: indptr[1]]
    kernels.fm_score_csr(*tiny, 0.0, np.zeros(1), np.zeros((1, args.k)))
    kernels.fm_score_binary_csr(tiny[0], tiny[1], 0.0, np.zeros(1), np.zeros((1, args.k)))
    print(f"numba compile / cache load: {time.perf_counter() - t0:.2f} s (not in the timings)")

    t_numba = {n: score_scenario(indptr, indices, values, args.latents, n, args.k, rng, args.repeats)
               for n in fm_sizes}

    copy_bw, copy_best = copy_bandwidth(args.copy_gb, args.repeats)
    print(f"\nbandwidth: np.copyto {copy_bw / 1e9:.2f} GB/s read+write (median; best {copy_best / 1e9:.2f})")
    for n, t in t_numba.items():
        print(f"  numba kernel, FM over {n:,} latents: reads {csr_bytes / t / 1e9:.2f} GB/s of CSR "
              f"(median run) = {csr_bytes / t / copy_bw:.0%} of the copy bandwidth")

    print(f"\nload average {os.getloadavg()[0]:.1f}; FM fit ({args.fit_latents} latents, defaults: {FMConfig()})")
    print(f"{'experiments':>12}{'fit s':>8}{'epochs':>8}{'FM R2':>8}{'linear R2':>11}  (holdout)")
    for m in (int(s) for s in args.fit_sizes.split(",")):
        X, y = planted_experiments(np.random.default_rng(args.seed + m), m, args.fit_latents)
        t0 = time.perf_counter()
        fit = fit_fm(X, y)
        elapsed = time.perf_counter() - t0
        print(f"{m:>12}{elapsed:>8.2f}{fit.epochs:>8}{fit.holdout_r2:>8.3f}{fit.linear_holdout_r2:>11.3f}")


if __name__ == "__main__":
    main()
