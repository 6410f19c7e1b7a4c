"""Second-order factorization machine over ablation experiments (stage 3).

An experiment is a row ``x`` over ``n`` latents (usually 0/1: which latents were ablated, or
real-valued) with a measured score ``y`` (the refusal score). The FM explains it as::

    y ≈ w0 + Σ_i w_i x_i + Σ_{i<j} <v_i, v_j> x_i x_j          (v_i = V[i], rank k)

It is fitted with torch (Adam on minibatches, CPU, deterministic given the seed) on a
standardised target; the returned parameters are in the units of ``y``. The rows are split
once into fit / validation / holdout: the optimiser sees the fit rows, early stopping watches
the validation rows, and the holdout rows are used for nothing but the reported holdout R²
(of the FM and of a ridge-regression baseline fitted on the same rows).

Scoring a fitted FM over cached CSR codes is :func:`explorer.kernels.fm_score_csr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FMConfig",
    "FMFit",
    "fit_fm",
    "interaction_matrix",
    "interaction_share",
    "r2_score",
    "top_pairs",
]


@dataclass(frozen=True, kw_only=True)
class FMConfig:
    """How to fit the factorization machine."""

    rank: int = 8
    """Latent dimension k of the pairwise factors ``V [n, k]``."""

    l2_w: float = 1e-4
    """L2 penalty on the linear weights ``w`` (per-sample scale: loss = MSE + l2_w·||w||²,
    on the standardised target). The ridge baseline uses the same penalty."""

    l2_v: float = 1e-3
    """L2 penalty on the factors ``V`` (loss term l2_v·||V||², standardised target)."""

    lr: float = 0.05
    """Adam learning rate."""

    max_epochs: int = 400
    """Upper bound on passes over the fit rows."""

    batch_size: int = 256
    """Rows per Adam step (the last batch of an epoch may be smaller)."""

    patience: int = 25
    """Stop after this many epochs without a better monitored loss; the best epoch's
    parameters are returned."""

    holdout_fraction: float = 0.2
    """Fraction of rows held out for the reported holdout R² only; 0 disables (R² = nan)."""

    validation_fraction: float = 0.1
    """Fraction of the non-holdout rows that early stopping watches; 0 (or too few rows to
    give one) makes early stopping watch the training loss instead."""

    init_std: float = 0.05
    """Standard deviation of the random initial factors (zero would be a saddle point)."""

    seed: int = 0
    """Seeds the split, the initial factors and the batch order."""

    def __post_init__(self) -> None:
        for name in ("rank", "max_epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("l2_w", "l2_v"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("holdout_fraction", "validation_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True, kw_only=True, eq=False)
class FMFit:
    """A fitted FM (parameters in the units of ``y``) and how well it fits."""

    w0: float
    """Bias."""
    w: np.ndarray = field(repr=False)
    """Linear weights, float64 ``[n]``."""
    V: np.ndarray = field(repr=False)
    """Pairwise factors, float64 ``[n, k]``; the interaction of i and j is <V[i], V[j]>."""
    train_r2: float
    """FM R² on the training rows (fit + validation)."""
    holdout_r2: float
    """FM R² on the holdout rows (nan without holdout rows)."""
    linear_train_r2: float
    """Ridge baseline (no interactions, same l2_w) R² on the training rows."""
    linear_holdout_r2: float
    """Ridge baseline R² on the holdout rows."""
    epochs: int
    """Epochs run (including the ``patience`` ones after the best)."""
    best_epoch: int
    """Epoch (1-based) whose parameters were kept."""
    train_index: np.ndarray = field(repr=False)
    """Rows the optimiser fitted on (int64)."""
    validation_index: np.ndarray = field(repr=False)
    """Rows early stopping watched (int64, may be empty)."""
    holdout_index: np.ndarray = field(repr=False)
    """Rows used only for the holdout R² (int64, may be empty)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """FM scores of dense rows ``X [m, n]``, float64 ``[m]``."""
        return _fm_predict(np.asarray(X, dtype=np.float64), self.w0, self.w, self.V)


def r2_score(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Coefficient of determination; nan for fewer than two rows or a constant ``y``."""
    y = np.asarray(y, dtype=np.float64)
    if y.size < 2:
        return float("nan")
    sst = float(np.sum((y - y.mean()) ** 2))
    if sst == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - np.asarray(y_hat, dtype=np.float64)) ** 2)) / sst


def _fm_predict(X: np.ndarray, w0: float, w: np.ndarray, V: np.ndarray) -> np.ndarray:
    xv = X @ V
    return w0 + X @ w + 0.5 * (np.einsum("mk,mk->m", xv, xv) - (X * X) @ np.einsum("ik,ik->i", V, V))


def _split(m: int, config: FMConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, validation, holdout) row indices, each sorted; raises if too few fit rows."""
    order = np.random.default_rng(config.seed).permutation(m)
    n_hold = int(round(m * config.holdout_fraction))
    n_val = int(round((m - n_hold) * config.validation_fraction))
    n_fit = m - n_hold - n_val
    if n_fit < 2:
        raise ValueError(f"{m} experiments leave {n_fit} rows to fit on; need at least 2")
    return (np.sort(order[:n_fit]), np.sort(order[n_fit:n_fit + n_val]), np.sort(order[n_fit + n_val:]))


def _ridge(X: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Closed-form ridge with an unpenalised intercept: min mean((y - b - Xw)²) + l2·||w||²."""
    x_mean, y_mean = X.mean(0), y.mean()
    Xc = X - x_mean
    gram = Xc.T @ Xc + (l2 * X.shape[0]) * np.eye(X.shape[1])
    w = np.linalg.lstsq(gram, Xc.T @ (y - y_mean), rcond=None)[0]
    return float(y_mean - x_mean @ w), w


def _fm_module(n: int, k: int, init_std: float, generator: "torch.Generator") -> "torch.nn.Module":
    import torch  # imported here: viewers use this module's NumPy helpers without loading torch

    class FM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w0 = torch.nn.Parameter(torch.zeros(()))
            self.w = torch.nn.Parameter(torch.zeros(n))
            self.V = torch.nn.Parameter(torch.randn(n, k, generator=generator) * init_std)

        def forward(self, X: torch.Tensor) -> torch.Tensor:
            xv = X @ self.V
            pair = 0.5 * ((xv * xv).sum(1) - (X * X) @ (self.V * self.V).sum(1))
            return self.w0 + X @ self.w + pair

    return FM()


def fit_fm(X: np.ndarray, y: np.ndarray, config: FMConfig = FMConfig()) -> FMFit:
    """Fit an FM to experiments ``X [m, n]`` (0/1 or real) with scores ``y [m]``.

    Runs torch on one CPU thread (restored afterwards): the problems are small, and
    intra-op threads only add synchronisation, or worse on a busy machine.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_fm(X, y, config)
    finally:
        torch.set_num_threads(threads)


def _fit_fm(X: np.ndarray, y: np.ndarray, config: FMConfig) -> FMFit:
    import torch

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"need X [m, n] and y [m], got {X.shape} and {y.shape}")
    if X.shape[1] == 0:
        raise ValueError("X has no latent columns")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite")
    fit_idx, val_idx, hold_idx = _split(X.shape[0], config)
    train_idx = np.sort(np.concatenate([fit_idx, val_idx]))

    # Standardise the target on the fit rows so lr, l2 and init_std are scale-free.
    mu = float(y[fit_idx].mean())
    sd = float(y[fit_idx].std()) or 1.0
    ys = (y - mu) / sd

    generator = torch.Generator().manual_seed(config.seed)
    model = _fm_module(X.shape[1], config.rank, config.init_std, generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    Xt = torch.from_numpy(X).float()
    yt = torch.from_numpy(ys).float()
    X_fit, y_fit = Xt[fit_idx], yt[fit_idx]
    X_mon, y_mon = (Xt[val_idx], yt[val_idx]) if val_idx.size else (X_fit, y_fit)

    best_loss, best_epoch, best_state = float("inf"), 0, None
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        order = torch.randperm(fit_idx.size, generator=generator)
        for start in range(0, fit_idx.size, config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = torch.mean((model(X_fit[batch]) - y_fit[batch]) ** 2)
            loss = loss + config.l2_w * model.w.square().sum() + config.l2_v * model.V.square().sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            monitored = float(torch.mean((model(X_mon) - y_mon) ** 2))
        if monitored < best_loss * (1 - 1e-6):
            best_loss, best_epoch = monitored, epoch
            best_state = {name: p.detach().clone() for name, p in model.named_parameters()}
        elif epoch - best_epoch >= config.patience:
            break

    if best_state is None:
        raise RuntimeError("the FM fit diverged (non-finite loss); lower lr or raise the l2 penalties")
    w0 = mu + sd * float(best_state["w0"])
    w = sd * best_state["w"].double().numpy()
    V = np.sqrt(sd) * best_state["V"].double().numpy()

    b_lin, w_lin = _ridge(X[fit_idx], ys[fit_idx], config.l2_w)
    y_lin = mu + sd * (b_lin + X @ w_lin)
    y_fm = _fm_predict(X, w0, w, V)
    return FMFit(
        w0=w0, w=w, V=V,
        train_r2=r2_score(y[train_idx], y_fm[train_idx]),
        holdout_r2=r2_score(y[hold_idx], y_fm[hold_idx]),
        linear_train_r2=r2_score(y[train_idx], y_lin[train_idx]),
        linear_holdout_r2=r2_score(y[hold_idx], y_lin[hold_idx]),
        epochs=epoch, best_epoch=best_epoch,
        train_index=fit_idx, validation_index=val_idx, holdout_index=hold_idx,
    )


def interaction_matrix(V: np.ndarray) -> np.ndarray:
    """Pairwise interactions ``<v_i, v_j>``, float64 ``[n, n]``, with a zero diagonal."""
    V = np.asarray(V, dtype=np.float64)
    M = V @ V.T
    np.fill_diagonal(M, 0.0)
    return M


def top_pairs(V: np.ndarray, n: int, sign: str = "positive") -> list[tuple[int, int, float]]:
    """The ``n`` strongest pairs ``(i, j, <v_i, v_j>)`` with ``i < j``, strongest first.

    ``sign="positive"``: largest positive interactions; ``"negative"``: most negative;
    ``"abs"``: largest magnitude of either sign. Fewer than ``n`` come back when fewer
    pairs of that sign exist (zero interactions are never reported).
    """
    if sign not in ("positive", "negative", "abs"):
        raise ValueError(f"sign must be 'positive', 'negative' or 'abs', got {sign!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    M = interaction_matrix(V)
    rows, cols = np.triu_indices(M.shape[0], 1)
    values = M[rows, cols]
    strength = {"positive": values, "negative": -values, "abs": np.abs(values)}[sign]
    candidates = np.flatnonzero(strength > 0)
    if candidates.size > n:
        candidates = candidates[np.argpartition(-strength[candidates], n - 1)[:n]] if n else candidates[:0]
    candidates = candidates[np.argsort(-strength[candidates], kind="stable")]
    return [(int(rows[c]), int(cols[c]), float(values[c])) for c in candidates]


def interaction_share(fit: FMFit, X: np.ndarray) -> np.ndarray:
    """Per latent, the share of its effect that comes from interactions, float64 ``[n]``.

    In experiment ``x``, latent ``i``'s effect is what the FM loses when ``x_i`` is set to 0:
    ``e_i = M_i + I_i`` with main part ``M_i = w_i x_i`` and interaction part
    ``I_i = x_i Σ_{j≠i} <v_i, v_j> x_j``. Over the experiments where ``x_i ≠ 0``::

        share_i = mean|I_i| / (mean|M_i| + mean|I_i|)        in [0, 1]

    0 means purely additive, 1 purely through partners. nan where ``x_i`` is never non-zero
    or both parts are zero.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != fit.w.shape[0]:
        raise ValueError(f"X must be [m, {fit.w.shape[0]}], got {X.shape}")
    V = fit.V
    partners = (X @ V) @ V.T - X * np.einsum("ik,ik->i", V, V)  # Σ_{j≠i} <v_i, v_j> x_j
    active = X != 0
    count = active.sum(0)
    main = np.abs(X * fit.w).sum(0)  # zero where x_i == 0, so sums run over active rows
    inter = np.abs(X * partners).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = inter / (main + inter)
    share[(count == 0) | (main + inter == 0)] = np.nan
    return share
