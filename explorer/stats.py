"""Small statistics the second paper's stages share, in NumPy (no scikit-learn dependency).

* ``wilson``: Wilson score interval of a rate k/n.
* ``auroc``: area under the ROC curve (Mann–Whitney U with ties counted half).
* ``spearman``: rank correlation with average ranks for ties.
* ``bootstrap_interval``: percentile interval of a metric over resampled test rows.
* ``LogisticProbe``: L2-regularised logistic regression fitted by Newton's method on
  standardised features (exact for the small, well-conditioned problems the probe stage
  poses; the penalty keeps it finite when the classes separate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials ((nan, nan) when n == 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (nan with fewer than 3 pairs or a constant side)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if len(a) < 3:
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (nan if a class is missing)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(((np.asarray(probabilities) >= 0.5) == np.asarray(labels).astype(bool)).mean())


def bootstrap_interval(
    metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, scores: np.ndarray, *,
    n_boot: int = 1000, seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``metric(labels, scores)`` over rows resampled with replacement
    (resamples where the metric is undefined, e.g. one class only for AUROC, are skipped)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if n_boot < 1 or len(labels) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(labels), len(labels))
        value = metric(labels[rows], scores[rows])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


@dataclass
class LogisticProbe:
    """Logistic regression with an L2 penalty ``l2 / 2 · |w|²`` (the intercept unpenalised),
    on features standardised with the training set's mean and standard deviation."""

    l2: float = 1.0
    max_iter: int = 50
    tol: float = 1e-8

    def fit(self, features: np.ndarray, labels: np.ndarray) -> LogisticProbe:
        x = np.asarray(features, np.float64)
        y = np.asarray(labels, np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise ValueError("features must be [n, d] with one label per row")
        self.mean = x.mean(0)
        self.scale = x.std(0)
        self.scale[self.scale < 1e-12] = 1.0  # a constant feature carries nothing; keep it at 0
        z = np.hstack([np.ones((len(x), 1)), (x - self.mean) / self.scale])
        penalty = np.full(z.shape[1], self.l2)
        penalty[0] = 0.0
        w = np.zeros(z.shape[1])
        # Newton on the penalised log-loss (d ≤ a few thousand: the Hessian solve is cheap)
        for _ in range(self.max_iter):
            p = _sigmoid(z @ w)
            gradient = z.T @ (p - y) + penalty * w
            weights = np.maximum(p * (1 - p), 1e-10)
            hessian = (z.T * weights) @ z + np.diag(penalty + 1e-9)
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if float(np.abs(step).max()) < self.tol:
                break
        self.coef = w
        return self

    def decision(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return z @ self.coef[1:] + self.coef[0]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(self.decision(features))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))
