"""Does the FM explain the experiments better than additive effects? Cross-validated, with an interval.

Three models predict every experiment's refusal score out of fold (k-fold cross-validation,
the same folds for all three):

* ``mean``: the training folds' mean score (no latent matters);
* ``linear``: ridge regression on which latents were ablated (additive effects only);
* ``fm``: the second-order factorization machine (additive effects plus pairwise ones).

Each model's cross-validated R² is ``1 − Σ(y − ŷ_oof)² / Σ(y − ȳ)²`` over all rows. The
uncertainty comes from a paired bootstrap over rows: every resample re-weights the same
out-of-fold errors of all three models, so the interval of ``R²_fm − R²_linear`` reflects how
much the gain depends on which experiments happened to be run. The verdict is
``"interactions"`` only when the interval's lower end exceeds ``min_gain``; otherwise
``"additive"`` and no pair is reported (see :func:`ModelComparison.sentence`).

The bootstrap sums run in a numba kernel (``explorer.kernels.bootstrap_sums``); the folds'
FM fits dominate the cost (``bench/bench_fm_compare.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from explorer.fm import FMConfig, _ridge, fit_fm

__all__ = [
    "MODELS",
    "CompareConfig",
    "ModelComparison",
    "bootstrap_r2",
    "choose_rank",
    "compare_models",
    "fm_parameters",
]

MODELS = ("fm", "linear", "mean")

ROWS_PER_PARAMETER = 10
"""Experiments the FM needs per fitted parameter before its pairs are worth testing."""


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """How the FM is compared with the additive model."""

    folds: int = 5
    """k of the k-fold cross-validation (rows shuffled once, seeded)."""
    bootstrap: int = 2000
    """Paired bootstrap resamples of the rows for the intervals."""
    confidence: float = 0.95
    """Two-sided level of the percentile intervals."""
    min_gain: float = 0.01
    """Smallest gain in cross-validated R² (fraction of the variance) that counts as evidence of
    interactions: the interval's lower end must exceed it."""
    seed: int = 0
    """Seeds the folds and the bootstrap."""

    def __post_init__(self) -> None:
        if not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {self.folds!r}")
        if not isinstance(self.bootstrap, int) or self.bootstrap < 100:
            raise ValueError(f"bootstrap must be an integer >= 100, got {self.bootstrap!r}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence!r}")
        if not 0 <= self.min_gain < 1:
            raise ValueError(f"min_gain must be in [0, 1), got {self.min_gain!r}")


@dataclass(frozen=True, kw_only=True, eq=False)
class ModelComparison:
    """Cross-validated R² of the three models, their intervals and the verdict."""

    r2: dict[str, float]
    """Cross-validated R² per model (``fm``, ``linear``, ``mean``)."""
    r2_low: dict[str, float]
    r2_high: dict[str, float]
    """Bootstrap percentile interval of each R²."""
    gain: float
    """R²_fm − R²_linear (cross-validated): variance the pairs explain beyond additive effects."""
    gain_low: float
    gain_high: float
    """Paired-bootstrap interval of ``gain``."""
    verdict: str
    """``"interactions"`` when ``gain_low > min_gain``, else ``"additive"``."""
    folds: int
    confidence: float
    min_gain: float
    n_rows: int
    oof: dict[str, np.ndarray] = field(repr=False)
    """Out-of-fold predictions per model, float64 [n_rows]."""

    def sentence(self) -> str:
        """The verdict in words, with its interval."""
        level = f"{self.confidence:.0%}"
        if self.verdict == "interactions":
            return (f"interactions explain {100 * self.gain:.1f}% more variance than additive effects "
                    f"({level} CI {100 * self.gain_low:.1f}–{100 * self.gain_high:.1f}%)")
        if math.isnan(self.gain):
            return "no evidence of interactions beyond additive effects on these experiments (the scores do not vary)"
        if self.gain_low > 0:  # reliably above zero, but too small to name pairs: say that, with its size
            return (f"no evidence of interactions beyond additive effects on these experiments that reaches the "
                    f"{100 * self.min_gain:.1f}% needed to report pairs (FM − linear {100 * self.gain:+.1f}% of the variance, "
                    f"{level} CI {100 * self.gain_low:+.1f} to {100 * self.gain_high:+.1f}%)")
        return (f"no evidence of interactions beyond additive effects on these experiments (FM − linear "
                f"{100 * self.gain:+.1f}% of the variance, {level} CI {100 * self.gain_low:+.1f} to {100 * self.gain_high:+.1f}%)")

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: verdict, sentence, and per model ``{"r2", "low", "high"}``."""
        r2 = {name: {"r2": _num(self.r2[name]), "low": _num(self.r2_low[name]), "high": _num(self.r2_high[name])} for name in MODELS}
        r2["fm_minus_linear"] = {"r2": _num(self.gain), "low": _num(self.gain_low), "high": _num(self.gain_high)}
        return {
            "verdict": self.verdict, "sentence": self.sentence(), "r2": r2, "folds": self.folds,
            "confidence": self.confidence, "min_gain": self.min_gain, "n_experiments": self.n_rows,
        }


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def fm_parameters(n_latents: int, rank: int) -> int:
    """Parameters of an FM over ``n_latents`` columns: bias, linear weights and factors."""
    return 1 + n_latents + n_latents * rank


def choose_rank(n_rows: int, n_latents: int, *, max_rank: int = 8, rows_per_parameter: float = ROWS_PER_PARAMETER) -> int:
    """The largest rank ≤ ``max_rank`` whose FM has at most ``n_rows / rows_per_parameter``
    parameters; 0 when not even rank 1 fits."""
    budget = n_rows / rows_per_parameter
    rank = int((budget - 1 - n_latents) // max(n_latents, 1))
    return max(0, min(max_rank, rank))


def _folds(m: int, k: int, seed: int) -> np.ndarray:
    """Fold id per row, int [m]: a seeded permutation cut into k near-equal parts."""
    fold = np.empty(m, np.int64)
    fold[np.random.default_rng(seed).permutation(m)] = np.arange(m) % k
    return fold


def out_of_fold(
    X: np.ndarray, y: np.ndarray, fm_config: FMConfig, folds: int, seed: int, *, progress: bool = False,
) -> dict[str, np.ndarray]:
    """Out-of-fold predictions [m] of the three models (the same folds for each)."""
    from tqdm.auto import tqdm

    m = X.shape[0]
    fold = _folds(m, folds, seed)
    oof = {name: np.zeros(m) for name in MODELS}
    inner = replace(fm_config, holdout_fraction=0.0)
    for f in tqdm(range(folds), desc="fm cross-validation", unit="fold", disable=not progress):
        test, train = fold == f, fold != f
        oof["mean"][test] = y[train].mean()
        b, w = _ridge(X[train], y[train], fm_config.l2_w)
        oof["linear"][test] = b + X[test] @ w
        oof["fm"][test] = fit_fm(X[train], y[train], inner).predict(X[test])
    return oof


def bootstrap_r2(
    y: np.ndarray, predictions: np.ndarray, n_resamples: int, seed: int, *, chunk: int = 256,
) -> np.ndarray:
    """R² of each prediction row (``predictions [models, m]``) on ``n_resamples`` paired
    bootstrap resamples of the m rows, float64 [n_resamples, models] (nan where a resample's
    scores do not vary).

    A resample draws m row indices with replacement; the numba kernel
    :func:`explorer.kernels.bootstrap_sums` sums ``y``, ``y²`` and every model's squared
    error over them, so ``SST = Σy² − (Σy)²/m`` and ``SSE`` need no resampled copies.
    """
    from explorer.kernels import bootstrap_sums

    y = np.asarray(y, np.float64)
    predictions = np.atleast_2d(np.asarray(predictions, np.float64))
    m = y.size
    rng = np.random.default_rng(seed)
    sq_err = (y[None, :] - predictions) ** 2  # [models, m]
    out = np.empty((n_resamples, predictions.shape[0]))
    scale = 1e-12 * max(1.0, float(np.abs(y).max()) ** 2 * m)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        sy, syy, sse = bootstrap_sums(rng.integers(0, m, (b, m)), y, sq_err)
        sst = syy - sy * sy / m
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = 1.0 - sse / sst[:, None]
        r2[sst <= scale] = np.nan
        out[start : start + b] = r2
    return out


def _r2(y: np.ndarray, y_hat: np.ndarray) -> float:
    sst = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if sst == 0 else 1.0 - float(np.sum((y - y_hat) ** 2)) / sst


def compare_models(
    X: np.ndarray, y: np.ndarray, fm_config: FMConfig = FMConfig(), config: CompareConfig = CompareConfig(),
    *, progress: bool = False,
) -> ModelComparison:
    """Cross-validate the FM, the linear model and the mean on experiments ``X [m, n]``, ``y [m]``."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    m = X.shape[0]
    if m < 2 * config.folds:
        raise ValueError(f"{m} experiments are too few for {config.folds}-fold cross-validation")
    oof = out_of_fold(X, y, fm_config, config.folds, config.seed, progress=progress)
    r2 = {name: _r2(y, oof[name]) for name in MODELS}
    boot = bootstrap_r2(y, np.stack([oof[name] for name in MODELS]), config.bootstrap, config.seed)
    alpha = (1 - config.confidence) / 2
    finite = boot[np.isfinite(boot).all(1)]

    def interval(values: np.ndarray) -> tuple[float, float]:
        if values.size == 0:
            return float("nan"), float("nan")
        low, high = np.quantile(values, [alpha, 1 - alpha])
        return float(low), float(high)

    bounds = {name: interval(finite[:, i]) for i, name in enumerate(MODELS)}
    gain = r2["fm"] - r2["linear"]
    gain_low, gain_high = interval(finite[:, 0] - finite[:, 1])
    verdict = "interactions" if np.isfinite(gain_low) and gain_low > config.min_gain else "additive"
    return ModelComparison(
        r2=r2, r2_low={k: v[0] for k, v in bounds.items()}, r2_high={k: v[1] for k, v in bounds.items()},
        gain=gain, gain_low=gain_low, gain_high=gain_high, verdict=verdict, folds=config.folds,
        confidence=config.confidence, min_gain=config.min_gain, n_rows=m, oof=oof,
    )
