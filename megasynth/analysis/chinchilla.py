"""Chinchilla scaling law L(N, D) = E + A·N^(−α) + B·D^(−β), fitted as Hoffmann et al. 2022 Approach 3.

Method (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", §3.3 and App. D.2;
replicated by Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"):

* Parameters θ = (a, b, e, α, β) with A = exp(a), B = exp(b), E = exp(e); unconstrained.
* Prediction in log space: ``log L̂ = LSE(a − α·log N, b − β·log D, e)`` (log-sum-exp).
* Objective: ``Σ_i w_i · Huber_δ(log L̂_i − log L_i)`` with δ = 1e-3 (sum over points; ``w_i`` = 1, or
  bootstrap multiplicities). ``Huber_δ(r) = r²/2`` for ``|r| ≤ δ``, else ``δ(|r| − δ/2)``.
* L-BFGS from every point of the grid α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1},
  a, b ∈ {0, 5, …, 25} (4,500 starts); the best converged result is kept.

Speed: the objective and its analytic gradient are evaluated for all starts at once (``[S, n]`` arrays)
and a batched L-BFGS (two-loop recursion, per-start history, Armijo backtracking, scipy's stopping
rules) runs every start in lock-step. The best distinct batched optima are then polished with
:func:`scipy.optimize.minimize` (L-BFGS-B, analytic gradient), so the reported optimum is a scipy
L-BFGS-B stationary point — the answer a naive loop of ``minimize`` over the 4,500 starts gives
(``naive_fit`` implements that loop for checking).

Compute-optimal allocation for C ≈ 6·N·D FLOPs (Hoffmann et al. 2022 eq. 4):
``G = (α·A / (β·B))^(1/(α+β))``, ``N_opt(C) = G·(C/6)^(β/(α+β))``, ``D_opt(C) = G^(−1)·(C/6)^(α/(α+β))``.

Units: N in parameters, D in training tokens, L in nats per token, C in FLOPs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize

from megasynth.utils import MegasynthError

__all__ = ["CHINCHILLA_GRID", "HOFFMANN_PARAMS", "ChinchillaFit", "fit_chinchilla", "chinchilla_grid",
           "huber_objective", "batched_lbfgs", "naive_fit", "compute_optimal"]

HOFFMANN_PARAMS = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
"""Hoffmann et al. 2022 (eq. 10) published estimates."""


def chinchilla_grid(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5),
                    e=np.arange(-1.0, 1.01, 0.5), a=np.arange(0.0, 25.1, 5.0),
                    b=np.arange(0.0, 25.1, 5.0)) -> np.ndarray:
    """Start grid as ``[S, 5]`` rows of θ = (a, b, e, α, β); the default is the 4,500-point grid of
    Hoffmann et al. 2022 / Besiroglu et al. 2024."""
    rows = [(a_, b_, e_, al, be) for al, be, e_, a_, b_ in itertools.product(alpha, beta, e, a, b)]
    return np.asarray(rows, dtype=np.float64)


CHINCHILLA_GRID = chinchilla_grid()
PARAM_ORDER = ("a", "b", "e", "alpha", "beta")


# --------------------------------------------------------------------------------------------------
# Objective (batched) with analytic gradient
# --------------------------------------------------------------------------------------------------
def huber_objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                    delta: float = 1e-3, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Huber objective and gradient for a batch of parameter vectors.

    Args:
        theta: ``[S, 5]`` rows (a, b, e, α, β).
        logN, logD, logL: ``[n]`` or ``[S, n]`` log parameters, log tokens, log loss.
        delta: Huber threshold on log-loss residuals.
        weights: ``None`` or ``[n]`` / ``[S, n]`` point multiplicities (bootstrap).

    Returns:
        ``(f [S], grad [S, 5])`` — the weighted sum of Huber losses and its gradient.
    """
    a, b, e, al, be = (theta[:, i:i + 1] for i in range(5))
    u1 = a - al * logN
    u2 = b - be * logD
    m = np.maximum(np.maximum(u1, u2), e)
    w1 = np.exp(u1 - m)
    w2 = np.exp(u2 - m)
    w3 = np.exp(e - m)
    s = w1 + w2 + w3
    r = m + np.log(s) - logL
    absr = np.abs(r)
    hub = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    psi = np.clip(r, -delta, delta) / s
    if weights is not None:
        hub = hub * weights
        psi = psi * weights
    f = hub.sum(axis=1)
    p1 = psi * w1
    p2 = psi * w2
    g = np.empty_like(theta)
    g[:, 0] = p1.sum(axis=1)
    g[:, 1] = p2.sum(axis=1)
    g[:, 2] = (psi * w3).sum(axis=1)
    g[:, 3] = -(p1 * logN).sum(axis=1)
    g[:, 4] = -(p2 * logD).sum(axis=1)
    return f, g


def _single(logN, logD, logL, delta, weights=None):
    def fun(th):
        f, g = huber_objective(th[None, :], logN, logD, logL, delta, weights)
        return float(f[0]), g[0]
    return fun


# --------------------------------------------------------------------------------------------------
# Batched L-BFGS
# --------------------------------------------------------------------------------------------------
def batched_lbfgs(fun, x0: np.ndarray, *, m: int = 10, maxiter: int = 2000, ftol: float = 2.220446049250313e-09,
                  gtol: float = 1e-5, c1: float = 1e-4, max_backtrack: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise ``S`` independent problems with L-BFGS in lock-step.

    ``fun(x [S', 5], idx [S']) -> (f [S'], g [S', 5])`` evaluates the problems ``idx`` at ``x``.
    Each problem keeps its own curvature history (pairs with ``yᵀs ≤ 0`` are skipped) and does
    Armijo backtracking from the unit step. Stopping rules are scipy L-BFGS-B's: relative decrease
    ``(f_k − f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) ≤ ftol`` or ``max|g| ≤ gtol``.

    Returns:
        ``(x [S, d], f [S], converged [S] bool)``.
    """
    x = np.array(x0, dtype=np.float64)
    S, d = x.shape
    all_idx = np.arange(S)
    f, g = fun(x, all_idx)
    sh = np.zeros((m, S, d))
    yh = np.zeros((m, S, d))
    rho = np.zeros((m, S))
    nh = np.zeros(S, dtype=np.int64)  # number of stored pairs per problem
    head = np.zeros(S, dtype=np.int64)  # next slot (ring buffer)
    active = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
    converged = np.zeros(S, dtype=bool)
    conv0 = active & (np.max(np.abs(g), axis=1) <= gtol)
    converged[conv0] = True
    active &= ~conv0
    for _ in range(maxiter):
        ia = np.flatnonzero(active)
        if ia.size == 0:
            break
        # Two-loop recursion over each problem's ring buffer (newest first).
        q = g[ia].copy()
        alphas = np.zeros((m, ia.size))
        order = [(head[ia] - 1 - k) % m for k in range(m)]
        for k in range(m):
            j = order[k]
            valid = k < nh[ia]
            sj, yj, rj = sh[j, ia], yh[j, ia], rho[j, ia]
            al = np.where(valid, rj * np.einsum("ij,ij->i", sj, q), 0.0)
            alphas[k] = al
            q -= al[:, None] * yj
        has = nh[ia] > 0
        jn = order[0]
        sy = np.einsum("ij,ij->i", sh[jn, ia], yh[jn, ia])
        yy = np.einsum("ij,ij->i", yh[jn, ia], yh[jn, ia])
        gamma = np.where(has, sy / np.where(yy > 0, yy, 1.0), 1.0)
        # First step (no history): scipy-like 1/||g|| scaling.
        gn = np.linalg.norm(g[ia], axis=1)
        gamma = np.where(has, gamma, 1.0 / np.maximum(gn, 1e-12))
        r = gamma[:, None] * q
        for k in reversed(range(m)):
            j = order[k]
            valid = k < nh[ia]
            be = np.where(valid, rho[j, ia] * np.einsum("ij,ij->i", yh[j, ia], r), 0.0)
            r += (alphas[k] - be)[:, None] * sh[j, ia]
        p = -r
        dg = np.einsum("ij,ij->i", p, g[ia])
        bad = ~(dg < 0) | ~np.all(np.isfinite(p), axis=1)
        if bad.any():  # not a descent direction: reset to steepest descent
            p[bad] = -g[ia][bad] / np.maximum(gn[bad], 1e-12)[:, None]
            dg[bad] = np.einsum("ij,ij->i", p[bad], g[ia][bad])
            nh[ia[bad]] = 0
        # Armijo backtracking, vectorised over the problems still searching.
        step = np.ones(ia.size)
        f_new = np.full(ia.size, np.nan)
        g_new = np.zeros((ia.size, d))
        x_new = np.zeros((ia.size, d))
        todo = np.arange(ia.size)
        for _bt in range(max_backtrack):
            xt = x[ia[todo]] + step[todo, None] * p[todo]
            ft, gt = fun(xt, ia[todo])
            ok = np.isfinite(ft) & (ft <= f[ia[todo]] + c1 * step[todo] * dg[todo])
            done = todo[ok]
            f_new[done], g_new[done], x_new[done] = ft[ok], gt[ok], xt[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
            step[todo] *= 0.5
        # Problems whose line search failed stop here (scipy: ABNORMAL_TERMINATION_IN_LNSRCH).
        failed = ia[todo]
        active[failed] = False
        okm = np.ones(ia.size, dtype=bool)
        okm[todo] = False
        io = ia[okm]
        s_new = x_new[okm] - x[io]
        y_new = g_new[okm] - g[io]
        f_old = f[io]
        x[io], f[io], g[io] = x_new[okm], f_new[okm], g_new[okm]
        syn = np.einsum("ij,ij->i", s_new, y_new)
        upd = syn > 1e-10 * np.einsum("ij,ij->i", y_new, y_new)
        iu = io[upd]
        slot = head[iu]
        sh[slot, iu] = s_new[upd]
        yh[slot, iu] = y_new[upd]
        rho[slot, iu] = 1.0 / syn[upd]
        head[iu] = (slot + 1) % m
        nh[iu] = np.minimum(nh[iu] + 1, m)
        rel = (f_old - f[io]) / np.maximum(np.maximum(np.abs(f_old), np.abs(f[io])), 1.0)
        conv = (rel <= ftol) | (np.max(np.abs(g[io]), axis=1) <= gtol)
        converged[io[conv]] = True
        active[io[conv]] = False
    return x, f, converged


# --------------------------------------------------------------------------------------------------
# Fit result
# --------------------------------------------------------------------------------------------------
def _params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, al, be = (float(t) for t in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": al, "beta": be, "a": a, "b": b, "e": e}


def compute_optimal(params: dict[str, float], C: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal (N_opt, D_opt) for FLOP budgets ``C`` with C = 6·N·D (Hoffmann et al. 2022 eq. 4).

    ``G = (αA/(βB))^(1/(α+β))``, ``N_opt = G·(C/6)^(β/(α+β))``, ``D_opt = (C/6)^(α/(α+β)) / G``.

    Raises:
        MegasynthError: α + β ≤ 0 or α, β ≤ 0 (no interior optimum).
    """
    A, B, al, be = params["A"], params["B"], params["alpha"], params["beta"]
    if not (al > 0 and be > 0):
        raise MegasynthError(f"compute_optimal: alpha and beta must be > 0, got alpha={al}, beta={be}")
    C = np.asarray(C, dtype=np.float64)
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    n_opt = G * (C / 6.0) ** (be / (al + be))
    d_opt = (C / 6.0) ** (al / (al + be)) / G
    return n_opt, d_opt


@dataclass
class ChinchillaFit:
    """Fitted L(N, D) = E + A·N^(−α) + B·D^(−β) (N parameters, D tokens, L nats/token).

    ``params`` has E, A, B, alpha, beta and the fitted logs a, b, e; ``ci[p] = (low, high)`` are
    bootstrap percentile intervals (over resampled runs) at ``ci_level``.
    """

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ci_level: float
    objective: float
    n_points: int
    n_starts: int
    n_converged: int
    delta: float
    rmse: float
    rmse_log: float
    residuals: list[float]
    """log L̂ − log L per input point, in input order."""
    n_bootstrap: int = 0
    n_bootstrap_ok: int = 0
    seed: int = 0
    n_range: tuple[float, float] = (float("nan"), float("nan"))
    d_range: tuple[float, float] = (float("nan"), float("nan"))
    boot_params: list[dict[str, float]] = field(default_factory=list, repr=False)

    law = "chinchilla"
    formula = "L(N, D) = E + A * N^(-alpha) + B * D^(-beta)"

    @property
    def theta(self) -> np.ndarray:
        return np.array([self.params[k] for k in PARAM_ORDER])

    def predict(self, N: Sequence[float] | np.ndarray, D: Sequence[float] | np.ndarray) -> np.ndarray:
        """Predicted loss (nats) at ``N`` parameters and ``D`` tokens (broadcast)."""
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        p = self.params
        return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]

    def compute_optimal(self, C: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) at FLOPs ``C``; see :func:`compute_optimal`."""
        return compute_optimal(self.params, C)

    def compute_optimal_ci(self, C: float) -> dict[str, tuple[float, float]]:
        """Bootstrap percentile intervals of N_opt(C) and D_opt(C)."""
        if len(self.boot_params) < 2:
            return {"N_opt": (float("nan"),) * 2, "D_opt": (float("nan"),) * 2}
        vals = np.array([compute_optimal(bp, C) for bp in self.boot_params
                         if bp["alpha"] > 0 and bp["beta"] > 0], dtype=np.float64)
        if len(vals) < 2:  # too few resamples with an interior optimum
            return {"N_opt": (float("nan"),) * 2, "D_opt": (float("nan"),) * 2}
        q = (1 - self.ci_level) / 2
        return {"N_opt": (float(np.quantile(vals[:, 0], q)), float(np.quantile(vals[:, 0], 1 - q))),
                "D_opt": (float(np.quantile(vals[:, 1], q)), float(np.quantile(vals[:, 1], 1 - q)))}

    def to_dict(self) -> dict[str, Any]:
        p = self.params
        alloc = {}
        if p["alpha"] > 0 and p["beta"] > 0:
            al, be = p["alpha"], p["beta"]
            alloc = {"N_opt_exponent": be / (al + be), "D_opt_exponent": al / (al + be),
                     "G": (al * p["A"] / (be * p["B"])) ** (1 / (al + be)),
                     "source": "Hoffmann et al. 2022 eq. 4 with C = 6ND"}
        return {"law": self.law, "formula": self.formula, "params": dict(p),
                "ci": {k: [v[0], v[1]] for k, v in self.ci.items()}, "ci_level": self.ci_level,
                "objective": self.objective, "n_points": self.n_points, "n_starts": self.n_starts,
                "n_converged": self.n_converged, "delta": self.delta, "rmse": self.rmse,
                "rmse_log": self.rmse_log,
                "residuals": {"max_abs_log": float(np.max(np.abs(self.residuals))),
                              "mean_log": float(np.mean(self.residuals)), "values": list(self.residuals)},
                "n_bootstrap": self.n_bootstrap, "n_bootstrap_ok": self.n_bootstrap_ok, "seed": self.seed,
                "n_range": list(self.n_range), "d_range": list(self.d_range), "compute_optimal": alloc,
                "method": {"objective": f"sum of Huber(delta={self.delta:g}) on log L; LSE parameterisation",
                           "optimizer": "batched L-BFGS over the start grid, best optima polished with "
                                        "scipy L-BFGS-B (analytic gradient)",
                           "source": "Hoffmann et al. 2022 Approach 3; Besiroglu et al. 2024"}}


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
def _validate(N: np.ndarray, D: np.ndarray, L: np.ndarray, min_points: int = 5) -> None:
    if not (N.ndim == D.ndim == L.ndim == 1 and N.shape == D.shape == L.shape):
        raise MegasynthError(f"N, D and L must be 1-D with the same length, got {N.shape}, {D.shape}, {L.shape}")
    for name, arr, unit in (("N", N, "parameters"), ("D", D, "tokens")):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
        if bad.size:
            raise MegasynthError(f"{name} must be finite and > 0 ({unit}); {name}[{bad[0]}] = {arr[bad[0]]!r}")
    bad = np.flatnonzero(~np.isfinite(L) | (L <= 0))
    if bad.size:
        raise MegasynthError(f"L must be finite and > 0 (loss in nats); L[{bad[0]}] = {L[bad[0]]!r}")
    if L.size < min_points:
        raise MegasynthError(f"need at least {min_points} points to fit the chinchilla law "
                             f"(E, A, B, alpha, beta); got {L.size}")
    if np.unique(N).size < 2:
        raise MegasynthError(f"need at least 2 distinct N (model sizes) to fit the chinchilla law; got {np.unique(N).size}")
    if np.unique(D).size < 2:
        raise MegasynthError(f"need at least 2 distinct D (token budgets) to fit the chinchilla law; got {np.unique(D).size}")


def _polish(theta0: np.ndarray, logN, logD, logL, delta, weights=None):
    res = minimize(_single(logN, logD, logL, delta, weights), theta0, jac=True, method="L-BFGS-B")
    return res


def fit_chinchilla(N: Sequence[float] | np.ndarray, D: Sequence[float] | np.ndarray,
                   L: Sequence[float] | np.ndarray, *, delta: float = 1e-3, grid: np.ndarray | None = None,
                   n_polish: int = 16, n_bootstrap: int = 200, groups: Sequence[Any] | None = None,
                   ci_level: float = 0.95, seed: int = 0, boot_starts: int = 4, ftol: float = 1e-12,
                   gtol: float = 1e-9) -> ChinchillaFit:
    """Fit L(N, D) = E + A·N^(−α) + B·D^(−β) (Hoffmann et al. 2022 Approach 3; Besiroglu et al. 2024).

    Args:
        N: ``[n]`` model parameters (> 0). D: ``[n]`` training tokens (> 0). L: ``[n]`` loss (nats).
        delta: Huber δ on log-loss residuals (1e-3 as published).
        grid: ``[S, 5]`` starts θ = (a, b, e, α, β); default the 4,500-point published grid.
        n_polish: distinct best batched optima polished with scipy L-BFGS-B (analytic gradient).
        n_bootstrap: resamples for the CIs (0 = none). Resampling is over ``groups`` (run ids; one
            point per group if None), seeded by ``seed``; each resample is refitted by batched L-BFGS
            from the full-data optimum and the ``boot_starts − 1`` next-best distinct optima.
        ci_level: two-sided level of the percentile intervals.

    Returns:
        :class:`ChinchillaFit` (params, CIs, residuals, ``predict``, ``compute_optimal``).

    Raises:
        MegasynthError: fewer than 5 points or < 2 distinct N or D, non-positive/non-finite N, D or L,
            bad options, or no start converged.
    """
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    _validate(N, D, L)
    if not delta > 0:
        raise MegasynthError(f"delta: must be > 0, got {delta}")
    if n_bootstrap < 0:
        raise MegasynthError(f"n_bootstrap: must be >= 0, got {n_bootstrap}")
    if not 0 < ci_level < 1:
        raise MegasynthError(f"ci_level: must be in (0, 1), got {ci_level}")
    grid = CHINCHILLA_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[1] != 5:
        raise MegasynthError(f"grid: expected [S, 5] rows (a, b, e, alpha, beta), got shape {grid.shape}")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)

    def fun(x, idx):
        return huber_objective(x, logN, logD, logL, delta)

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        xb, fb, cb = batched_lbfgs(fun, grid, ftol=ftol, gtol=gtol)
    ok = cb & np.isfinite(fb)
    n_conv = int(ok.sum())
    if n_conv == 0:
        raise MegasynthError(f"chinchilla fit: no start of {len(grid)} converged ({L.size} points)")
    # Distinct optima (rounded), best first; polish with scipy.
    order = np.argsort(np.where(ok, fb, np.inf))
    cands, seen = [], set()
    for i in order:
        if not ok[i]:
            break
        key = tuple(np.round(xb[i], 3))
        if key in seen:
            continue
        seen.add(key)
        cands.append(xb[i])
        if len(cands) >= max(n_polish, boot_starts):
            break
    best_theta, best_f = None, np.inf
    for th in cands[:max(1, n_polish)]:
        res = _polish(th, logN, logD, logL, delta)
        if res.success and np.isfinite(res.fun) and res.fun < best_f:
            best_theta, best_f = res.x, float(res.fun)
    if best_theta is None:  # scipy reported no success anywhere: keep the best batched optimum
        best_theta, best_f = cands[0], float(fb[order[0]])
    f_b, _ = huber_objective(cands[0][None], logN, logD, logL, delta)
    if f_b[0] < best_f:
        best_theta, best_f = cands[0], float(f_b[0])

    params = _params(best_theta)
    resid = (np.log(_predict_theta(best_theta, N, D)) - logL)
    pred = np.exp(resid + logL)

    # Bootstrap over runs (groups).
    rng = np.random.default_rng(seed)
    boots: list[dict[str, float]] = []
    if n_bootstrap > 0:
        gid = np.arange(L.size) if groups is None else np.unique(np.asarray(groups, dtype=object).astype(str),
                                                                  return_inverse=True)[1]
        n_groups = int(gid.max()) + 1
        draws = rng.integers(0, n_groups, size=(n_bootstrap, n_groups))
        counts = np.stack([np.bincount(dr, minlength=n_groups) for dr in draws])  # [R, G]
        W = counts[:, gid].astype(np.float64)  # [R, n] point multiplicities
        starts = [best_theta] + [c for c in cands[1:boot_starts]]
        k = len(starts)
        x0 = np.concatenate([np.asarray(starts)] * n_bootstrap)  # replicate r uses rows r*k..r*k+k-1
        Wrep = np.repeat(W, k, axis=0)

        def bfun(x, idx):
            return huber_objective(x, logN, logD, logL, delta, Wrep[idx])

        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            xr, fr, cr = batched_lbfgs(bfun, x0, ftol=ftol, gtol=gtol)
        fr = np.where(cr & np.isfinite(fr), fr, np.inf).reshape(n_bootstrap, k)
        xr = xr.reshape(n_bootstrap, k, 5)
        for r in range(n_bootstrap):
            # Resamples that do not span >= 2 model sizes and 2 budgets are not identifiable.
            sel = W[r] > 0
            if np.unique(N[sel]).size < 2 or np.unique(D[sel]).size < 2 or not np.isfinite(fr[r].min()):
                continue
            boots.append(_params(xr[r, int(np.argmin(fr[r]))]))
    q = (1 - ci_level) / 2
    ci = {}
    for p in ("E", "A", "B", "alpha", "beta", "a", "b", "e"):
        vals = np.array([bp[p] for bp in boots])
        ci[p] = ((float(np.quantile(vals, q)), float(np.quantile(vals, 1 - q))) if vals.size >= 2
                 else (float("nan"), float("nan")))
    return ChinchillaFit(params=params, ci=ci, ci_level=ci_level, objective=best_f, n_points=int(L.size),
                         n_starts=int(len(grid)), n_converged=n_conv, delta=delta,
                         rmse=float(np.sqrt(np.mean((pred - L) ** 2))), rmse_log=float(np.sqrt(np.mean(resid ** 2))),
                         residuals=[float(r) for r in resid], n_bootstrap=n_bootstrap, n_bootstrap_ok=len(boots),
                         seed=seed, n_range=(float(N.min()), float(N.max())), d_range=(float(D.min()), float(D.max())),
                         boot_params=boots)


def _predict_theta(theta: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    a, b, e, al, be = theta
    return np.exp(np.logaddexp(np.logaddexp(a - al * np.log(N), b - be * np.log(D)), e))


def naive_fit(N, D, L, *, delta: float = 1e-3, grid: np.ndarray | None = None,
              analytic: bool = False) -> tuple[np.ndarray, float, int]:
    """Reference: a plain loop of ``scipy.optimize.minimize(method="L-BFGS-B")`` over every start
    (numerical gradients unless ``analytic``), keeping the best converged result (Besiroglu et al.
    2024's procedure). Returns ``(θ = (a, b, e, α, β), objective, n_converged)``. Slow; for checking."""
    N, D, L = (np.asarray(v, dtype=np.float64) for v in (N, D, L))
    grid = CHINCHILLA_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    fg = _single(logN, logD, logL, delta)
    best, best_f, n_conv = None, np.inf, 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for x0 in grid:
            if analytic:
                res = minimize(fg, x0, jac=True, method="L-BFGS-B")
            else:
                res = minimize(lambda th: fg(th)[0], x0, method="L-BFGS-B")
            if res.success:
                n_conv += 1
                if res.fun < best_f:
                    best, best_f = res.x, float(res.fun)
    return best, best_f, n_conv
