"""Mixture questions: optimal synthetic ratio, compute efficiency vs a baseline, generator comparison.

* **Optimal ratio** (per (N, D) group of a ratio grid): fit loss against ratio with a smooth curve —
  ``quadratic`` (L = c0 + c1·r + c2·r², least squares) or ``logit`` (quadratic in logit(r), r clipped
  to [ε, 1 − ε] with ε = 0.01) — and take the argmin over the measured ratio range (on a 2,001-point
  grid, so a non-convex fit gives the better end point). Interval: percentile bootstrap over the
  group's runs (resampled with replacement, seeded; resamples with < 3 distinct ratios dropped).
* **Compute efficiency** (per group, e.g. (model size, eval set)): for each budget D of the baseline
  (100% natural by default), the tokens D_m the mixture needs to reach the baseline's loss L_b(D):
  ``law`` — from fitted data laws L(D) = E + B·D^(−β) of both series, D_m = (B_m/(L_b(D) − E_m))^(1/β_m)
  (∞ when L_b(D) ≤ E_m); ``interp`` — linear interpolation of the mixture's measured (log D, L)
  curve. Speed-up = D / D_m (= FLOPs ratio at equal N, FLOPs ≈ 6·N·D). Interval: bootstrap over
  both series' points (``law``).
* **Generator comparison**: the same tables grouped by a generator column.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from megasynth.analysis.laws import DataLaw, _least_squares, fit_data_law
from megasynth.analysis.table import group_items, numeric_column, require_columns
from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.analysis")

__all__ = ["optimal_ratio", "optimal_ratio_table", "tokens_to_reach", "efficiency", "efficiency_table",
           "compare_generators"]

LOGIT_EPS = 0.01


def _features(r: np.ndarray, curve: str) -> np.ndarray:
    if curve == "quadratic":
        return r
    if curve == "logit":
        rc = np.clip(r, LOGIT_EPS, 1 - LOGIT_EPS)
        return np.log(rc / (1 - rc))
    raise MegasynthError(f"curve: must be 'quadratic' or 'logit', got {curve!r}")


def _fit_curve(r, L, curve, grid):
    coef = np.polyfit(_features(r, curve), L, 2)
    fitted = np.polyval(coef, _features(grid, curve))
    i = int(np.argmin(fitted))
    return coef, fitted, float(grid[i]), float(fitted[i])


def optimal_ratio(ratio: Sequence[float], loss: Sequence[float], *, curve: str = "quadratic", n_bootstrap: int = 200,
                  seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """Argmin of a smooth fit of loss (nats) against synthetic ratio (share of tokens in [0, 1]).

    Returns:
        ``{"opt_ratio", "ci": [lo, hi], "loss_at_opt", "coef" (highest power first, in the curve's
        feature), "curve", "grid", "fit", "n_points", "n_bootstrap_ok", "interior"}`` — ``interior``
        is False when the optimum sits on the edge of the measured range.

    Raises:
        MegasynthError: ratios outside [0, 1], non-finite loss, fewer than 3 distinct ratios.
    """
    r = np.asarray(ratio, dtype=np.float64)
    L = np.asarray(loss, dtype=np.float64)
    if r.shape != L.shape or r.ndim != 1:
        raise MegasynthError(f"ratio and loss must be 1-D of the same length, got {r.shape} and {L.shape}")
    if np.any(~np.isfinite(r) | (r < 0) | (r > 1)):
        raise MegasynthError(f"ratio must be in [0, 1] (share of synthetic tokens); got {r[~((r >= 0) & (r <= 1))][0]!r}")
    if np.any(~np.isfinite(L)):
        raise MegasynthError("loss must be finite (NaN loss in a ratio group)")
    if np.unique(r).size < 3:
        raise MegasynthError(f"need at least 3 distinct ratios to fit a curve; got {np.unique(r).size}")
    grid = np.linspace(r.min(), r.max(), 2001)
    coef, fitted, opt, lopt = _fit_curve(r, L, curve, grid)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, r.size, r.size)
        if np.unique(r[idx]).size < 3:
            continue
        boots.append(_fit_curve(r[idx], L[idx], curve, grid)[2])
    q = (1 - ci_level) / 2
    ci = [float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q))] if len(boots) >= 2 else [float("nan")] * 2
    return {"opt_ratio": opt, "ci": ci, "ci_level": ci_level, "loss_at_opt": lopt, "coef": [float(c) for c in coef],
            "curve": curve, "grid": grid[::20].tolist(), "fit": fitted[::20].tolist(), "n_points": int(r.size),
            "n_bootstrap": n_bootstrap, "n_bootstrap_ok": len(boots),
            "interior": bool(r.min() < opt < r.max())}


def optimal_ratio_table(df: pd.DataFrame, *, ratio_col: str = "synthetic_ratio", loss_col: str = "loss",
                        group_by: Sequence[str] = ("n_params", "tokens", "eval_set"), curve: str = "quadratic",
                        n_bootstrap: int = 200, seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """:func:`optimal_ratio` per group (typically (N, D, eval set[, synthetic style])).

    Groups with fewer than 3 distinct ratios are listed in ``skipped``. ``trend`` lists the optima
    sorted by the group columns, to read how the optimum moves with N and D.
    """
    require_columns(df, [ratio_col, loss_col, *group_by])
    numeric_column(df, loss_col, positive=True, unit="loss in nats")
    numeric_column(df, ratio_col, unit="share of synthetic tokens")
    rows, skipped = [], []
    for key, sub in group_items(df, list(group_by)):
        r = sub[ratio_col].to_numpy(dtype=np.float64)
        if np.unique(r).size < 3:
            skipped.append({**key, "reason": f"{np.unique(r).size} distinct ratio(s) < 3"})
            continue
        res = optimal_ratio(r, sub[loss_col].to_numpy(dtype=np.float64), curve=curve, n_bootstrap=n_bootstrap,
                            seed=seed, ci_level=ci_level)
        rows.append({**key, **res, "ratios": r.tolist(), "losses": sub[loss_col].astype(float).tolist()})
    return {"analysis": "optimal_ratio", "curve": curve, "ratio_col": ratio_col, "group_by": list(group_by),
            "groups": rows, "skipped": skipped,
            "trend": [{**{c: g[c] for c in group_by}, "opt_ratio": g["opt_ratio"], "ci": g["ci"]}
                      for g in sorted(rows, key=lambda g: tuple(str(g[c]) for c in group_by))]}


# --------------------------------------------------------------------------------------------------
# Compute efficiency
# --------------------------------------------------------------------------------------------------
def tokens_to_reach(params: dict[str, float], target: np.ndarray) -> np.ndarray:
    """Inverse of the data law: D with E + B·D^(−β) = target (tokens; ∞ where target ≤ E)."""
    target = np.asarray(target, dtype=np.float64)
    E, B, beta = params["E"], params["B"], params["beta"]
    with np.errstate(divide="ignore", invalid="ignore"):
        D = (B / (target - E)) ** (1.0 / beta) if beta > 0 else np.full_like(target, np.inf)
    return np.where(target > E, D, np.inf)


def _interp_tokens(D: np.ndarray, L: np.ndarray, target: np.ndarray) -> np.ndarray:
    """First D at which the measured (log D, L) curve (sorted by D) reaches ``target`` (NaN if never)."""
    o = np.argsort(D)
    D, L = D[o], L[o]
    out = np.full(np.shape(target), np.nan)
    for j, t in enumerate(np.atleast_1d(target)):
        if L[0] <= t:
            out[j] = D[0] if L[0] == t else np.nan  # already below at the first budget: not resolvable
            continue
        for i in range(1, len(D)):
            if L[i] <= t:
                f = (L[i - 1] - t) / (L[i - 1] - L[i])
                out[j] = math.exp(math.log(D[i - 1]) + f * (math.log(D[i]) - math.log(D[i - 1])))
                break
    return out


def _refit(D: np.ndarray, L: np.ndarray, start: dict[str, float]) -> dict[str, float]:
    """Data-law params of a bootstrap resample: Huber fit from the full-data optimum, else all starts."""
    if np.unique(D).size < 3:
        raise MegasynthError("resample has fewer than 3 distinct budgets")
    spec = DataLaw.for_data(D)
    lo, hi = spec.bounds
    with np.errstate(all="ignore"):
        sol = _least_squares(spec, D, np.log(L), np.clip(spec.theta(start), lo, hi), "huber", 1e-3)
    return spec.params(sol[0]) if sol is not None else fit_data_law(D, L, n_bootstrap=0).params


def efficiency(D_base: np.ndarray, L_base: np.ndarray, D_mix: np.ndarray, L_mix: np.ndarray, *,
               method: str = "law", n_bootstrap: int = 100, seed: int = 0, ci_level: float = 0.95,
               n_params: float | None = None) -> dict[str, Any]:
    """Tokens (and FLOPs if ``n_params``) a mixture needs to reach the baseline's loss at each baseline budget.

    Returns:
        ``{"method", "budgets": [{D, target_loss, D_mix, speedup, speedup_ci, flops, flops_mix}],
        "speedup_at_max", "speedup_ci_at_max", "speedup_geomean"}``.
    """
    D_base, L_base, D_mix, L_mix = (np.asarray(v, dtype=np.float64) for v in (D_base, L_base, D_mix, L_mix))
    budgets = np.unique(D_base)
    q = (1 - ci_level) / 2
    if method == "law":
        fb = fit_data_law(D_base, L_base, n_bootstrap=0)
        fm = fit_data_law(D_mix, L_mix, n_bootstrap=0)
        target = fb.predict(budgets)
        need = tokens_to_reach(fm.params, target)
        rng = np.random.default_rng(seed)
        boot = []
        for _ in range(n_bootstrap):
            ib = rng.integers(0, D_base.size, D_base.size)
            im = rng.integers(0, D_mix.size, D_mix.size)
            try:
                b = _refit(D_base[ib], L_base[ib], fb.params)
                m = _refit(D_mix[im], L_mix[im], fm.params)
            except MegasynthError:
                continue
            tb = b["E"] + b["B"] * budgets ** -b["beta"]
            boot.append(budgets / tokens_to_reach(m, tb))
        boot = np.array(boot) if boot else np.zeros((0, budgets.size))
        fits = {"baseline": fb.params, "mixture": fm.params}
    elif method == "interp":
        target = np.array([L_base[D_base == d].mean() for d in budgets])
        need = _interp_tokens(D_mix, L_mix, target)
        boot = np.zeros((0, budgets.size))
        fits = {}
    else:
        raise MegasynthError(f"method: must be 'law' or 'interp', got {method!r}")
    speed = budgets / need
    rows = []
    for j, d in enumerate(budgets):
        ci = ([float(np.quantile(boot[:, j], q)), float(np.quantile(boot[:, j], 1 - q))] if len(boot) >= 2
              else [float("nan")] * 2)
        rows.append({"D": float(d), "target_loss": float(target[j]), "D_mix": float(need[j]),
                     "speedup": float(speed[j]), "speedup_ci": ci,
                     "flops": 6.0 * n_params * float(d) if n_params else None,
                     "flops_mix": 6.0 * n_params * float(need[j]) if n_params else None})
    fin = speed[np.isfinite(speed) & (speed > 0)]
    return {"method": method, "fits": fits, "budgets": rows, "speedup_at_max": rows[-1]["speedup"],
            "speedup_ci_at_max": rows[-1]["speedup_ci"],
            "speedup_geomean": float(np.exp(np.mean(np.log(fin)))) if fin.size else float("nan"),
            "n_bootstrap": n_bootstrap if method == "law" else 0, "n_bootstrap_ok": int(len(boot))}


def efficiency_table(df: pd.DataFrame, *, mixture_col: str = "mixture", baseline: str = "natural",
                     d_col: str = "tokens", loss_col: str = "loss", n_col: str | None = "n_params",
                     group_by: Sequence[str] = ("n_params", "eval_set"), method: str = "law",
                     n_bootstrap: int = 100, seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """:func:`efficiency` of every mixture against ``baseline`` within each group."""
    require_columns(df, [mixture_col, d_col, loss_col, n_col, *group_by])
    numeric_column(df, loss_col, positive=True, unit="loss in nats")
    numeric_column(df, d_col, positive=True, unit="tokens")
    if baseline not in set(df[mixture_col].astype(str)):
        raise MegasynthError(f"baseline: mixture {baseline!r} not in column {mixture_col!r}")
    rows, skipped = [], []
    for key, sub in group_items(df, list(group_by)):
        mix = sub[mixture_col].astype(str)
        base = sub[mix == baseline]
        if base[d_col].nunique() < 3:
            skipped.append({**key, "reason": f"baseline has {base[d_col].nunique()} budget(s) < 3"})
            continue
        for m in dict.fromkeys(mix):
            if m == baseline:
                continue
            ms = sub[mix == m]
            if ms[d_col].nunique() < 3:
                skipped.append({**key, "mixture": m, "reason": f"{ms[d_col].nunique()} budget(s) < 3"})
                continue
            n = float(ms[n_col].iloc[0]) if n_col else None
            try:
                res = efficiency(base[d_col].to_numpy(float), base[loss_col].to_numpy(float), ms[d_col].to_numpy(float),
                                 ms[loss_col].to_numpy(float), method=method, n_bootstrap=n_bootstrap, seed=seed,
                                 ci_level=ci_level, n_params=n)
            except MegasynthError as e:
                skipped.append({**key, "mixture": m, "reason": str(e)})
                continue
            rows.append({**key, "mixture": m, "baseline": baseline, **res})
    return {"analysis": "efficiency", "baseline": baseline, "method": method, "group_by": list(group_by),
            "definition": "speedup = D_baseline / D_mixture at equal loss (= FLOPs ratio at equal N, C = 6ND)",
            "groups": rows, "skipped": skipped}


def compare_generators(df: pd.DataFrame, *, generator_col: str = "generator", mixture_col: str = "mixture",
                       d_col: str = "tokens", loss_col: str = "loss", group_by: Sequence[str] = ("eval_set",),
                       ratio_col: str | None = None, n_bootstrap: int = 100, seed: int = 0) -> dict[str, Any]:
    """Per generator: final loss (largest budget) per mixture and group, the best mixture, data-law fits,
    and (with ``ratio_col`` and ≥ 3 ratios) the optimal ratio."""
    require_columns(df, [generator_col, mixture_col, d_col, loss_col, ratio_col, *group_by])
    numeric_column(df, loss_col, positive=True, unit="loss in nats")
    numeric_column(df, d_col, positive=True, unit="tokens")
    gens = []
    for gkey, gsub in group_items(df, [generator_col]):
        entry: dict[str, Any] = {**gkey, "final": [], "fits": []}
        for key, sub in group_items(gsub, list(group_by)):
            for m, ms in sub.groupby(mixture_col, sort=False):
                dmax = ms[d_col].max()
                final = float(ms[ms[d_col] == dmax][loss_col].mean())
                entry["final"].append({**key, "mixture": m, "D": float(dmax), "loss": final})
                if ms[d_col].nunique() >= 3:
                    try:
                        f = fit_data_law(ms[d_col].to_numpy(float), ms[loss_col].to_numpy(float),
                                         n_bootstrap=n_bootstrap, seed=seed)
                        entry["fits"].append({**key, "mixture": m, "params": f.params,
                                              "ci": {k: list(v) for k, v in f.ci.items()}})
                    except MegasynthError as e:
                        entry["fits"].append({**key, "mixture": m, "error": str(e)})
        if entry["final"]:
            best = min(entry["final"], key=lambda r: r["loss"])
            entry["best"] = best
        if ratio_col:
            entry["optimal_ratio"] = optimal_ratio_table(gsub, ratio_col=ratio_col, loss_col=loss_col,
                                                         group_by=[d_col, *group_by], n_bootstrap=n_bootstrap,
                                                         seed=seed)["groups"]
        gens.append(entry)
    return {"analysis": "generators", "generator_col": generator_col, "generators": gens}
