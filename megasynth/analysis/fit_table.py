"""``megasynth fit``: scaling-law fits of a results table, per group, with extrapolation checks.

Laws (see :mod:`megasynth.analysis.laws` and :mod:`megasynth.analysis.chinchilla`):

* ``data`` — L(D) = E + B·D^(−β) (Hoffmann et al. 2022 eq. 2 at fixed N);
* ``rectified`` — L(D) = B/(D_l + D^β) + E (Lin et al. 2024);
* ``chinchilla`` — L(N, D) = E + A·N^(−α) + B·D^(−β) (Hoffmann et al. 2022 Approach 3 /
  Besiroglu et al. 2024), with the compute-optimal N_opt(C), D_opt(C) for C = 6·N·D.

**Extrapolation check**: refit on the points with D ≤ ``cut`` (default: every budget below the
largest) and report the error of the prediction at each held-out larger budget (absolute in nats,
relative, and in log L).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from megasynth.analysis.chinchilla import ChinchillaFit, fit_chinchilla
from megasynth.analysis.laws import LAWS, fit_law
from megasynth.analysis.table import group_items, numeric_column, require_columns, tokens_from_flops
from megasynth.utils import MegasynthError, Progress, write_json

logger = logging.getLogger("megasynth.analysis")

__all__ = ["fit_points", "extrapolation_check", "fit_table", "LAW_NAMES"]

LAW_NAMES = ("data", "rectified", "chinchilla")
MIN_POINTS = {"data": 3, "rectified": 4, "chinchilla": 5}


def fit_points(law: str, D: np.ndarray, L: np.ndarray, N: np.ndarray | None = None, *, n_bootstrap: int = 200,
               seed: int = 0, ci_level: float = 0.95, delta: float = 1e-3, loss: str = "huber",
               groups: Sequence | None = None, grid: np.ndarray | None = None):
    """Fit ``law`` to points; returns a :class:`~megasynth.analysis.laws.LawFit` or :class:`ChinchillaFit`.

    ``D`` tokens ``[n]``, ``L`` nats ``[n]``, ``N`` parameters ``[n]`` (chinchilla only); ``groups``
    = run ids for the chinchilla bootstrap (resampling runs).

    Raises:
        MegasynthError: unknown law, missing N for chinchilla, bad points (see the law's fitter).
    """
    if law == "chinchilla":
        if N is None:
            raise MegasynthError("law chinchilla needs N (parameters): pass --n-col")
        if loss != "huber":
            raise MegasynthError("law chinchilla is fitted with the Huber loss only (--loss huber)")
        return fit_chinchilla(N, D, L, delta=delta, n_bootstrap=n_bootstrap, seed=seed, ci_level=ci_level,
                              groups=groups, grid=grid)
    if law not in LAWS:
        raise MegasynthError(f"law: must be one of {', '.join(LAW_NAMES)}, got {law!r}")
    spec, cls = LAWS[law]
    return fit_law(spec, D, L, loss=loss, delta=delta, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed,
                   fit_cls=cls)


def _predict(fit, N, D):
    return fit.predict(N, D) if isinstance(fit, ChinchillaFit) else fit.predict(D)


def extrapolation_check(law: str, D: np.ndarray, L: np.ndarray, N: np.ndarray | None = None, *,
                        cut: float | None = None, **fit_kwargs) -> dict[str, Any]:
    """Fit on budgets D ≤ ``cut``; report prediction errors at the held-out budgets D > ``cut``.

    ``cut`` defaults to the second-largest distinct D (hold out the largest budget).

    Returns:
        ``{"cut", "n_fit", "n_held_out", "params", "points": [{N, D, loss, pred, abs_err, rel_err,
        log_err}], "mean_abs_rel_err", "max_abs_rel_err", "mean_abs_err"}``; or ``{"cut", "skipped":
        reason}`` when too few points remain on either side.
    """
    D = np.asarray(D, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    uniq = np.unique(D)
    if cut is None:
        if uniq.size < 2:
            return {"cut": None, "skipped": "a single budget: nothing to hold out"}
        cut = float(uniq[-2])
    fit_mask = D <= cut
    held = ~fit_mask
    if not held.any():
        return {"cut": cut, "skipped": f"no budget above the cut D = {cut:g}"}
    if fit_mask.sum() < MIN_POINTS.get(law, 3):
        return {"cut": cut, "skipped": f"{int(fit_mask.sum())} point(s) with D <= cut: too few for the {law} law"}
    fit_kwargs = {**fit_kwargs, "n_bootstrap": 0}
    groups = fit_kwargs.pop("groups", None)
    try:
        fit = fit_points(law, D[fit_mask], L[fit_mask], None if N is None else np.asarray(N)[fit_mask],
                         groups=None if groups is None else np.asarray(groups)[fit_mask], **fit_kwargs)
    except MegasynthError as e:
        return {"cut": cut, "skipped": f"fit below the cut failed: {e}"}
    Nh = None if N is None else np.asarray(N, dtype=np.float64)[held]
    pred = np.asarray(_predict(fit, Nh, D[held]), dtype=np.float64)
    pts = []
    for i in range(int(held.sum())):
        pts.append({"N": None if Nh is None else float(Nh[i]), "D": float(D[held][i]), "loss": float(L[held][i]),
                    "pred": float(pred[i]), "abs_err": float(pred[i] - L[held][i]),
                    "rel_err": float(pred[i] / L[held][i] - 1.0), "log_err": float(math.log(pred[i] / L[held][i]))})
    rel = np.abs([p["rel_err"] for p in pts])
    return {"cut": cut, "n_fit": int(fit_mask.sum()), "n_held_out": int(held.sum()), "params": dict(fit.params),
            "points": pts, "mean_abs_rel_err": float(rel.mean()), "max_abs_rel_err": float(rel.max()),
            "mean_abs_err": float(np.mean(np.abs([p["abs_err"] for p in pts])))}


def _key_str(key: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items()) or "all"


def fit_table(df: pd.DataFrame, law: str = "data", *, d_col: str = "tokens", loss_col: str = "loss",
              n_col: str | None = None, group_by: Sequence[str] | None = None, flops_col: str | None = None,
              run_col: str | None = None, n_bootstrap: int = 200, seed: int = 0, ci_level: float = 0.95,
              delta: float = 1e-3, loss: str = "huber", extrapolate_cut: float | None = None,
              min_points: int | None = None, grid: np.ndarray | None = None,
              out_json: str | Path | None = None, out_png: str | Path | None = None) -> dict[str, Any]:
    """Fit ``law`` per group of a results table; optionally write JSON and a PNG of data and fits.

    Args:
        df: results table (see :func:`megasynth.analysis.table.load_table`).
        law: ``data``, ``rectified`` or ``chinchilla``.
        d_col: tokens column (ignored with ``flops_col``: D = C / (6·N) from FLOPs and ``n_col``).
        loss_col: loss column (nats per token). n_col: parameters column (chinchilla; with flops).
        group_by: columns to fit separately (e.g. ``mixture eval_set``; for the data law add ``n_params``).
        run_col: run id column; the chinchilla bootstrap resamples runs (points if None).
        extrapolate_cut: hold out D > cut for the extrapolation check (default: the largest budget).
        min_points: groups with fewer points are skipped (default: the law's parameter count).

    Returns:
        ``{"law", "formula", "settings", "fits": [{group..., fit dict, extrapolation}], "skipped": [...]}``.

    Raises:
        MegasynthError: missing column, non-positive N or D, NaN loss (naming column and row), bad law.
    """
    if law not in LAW_NAMES:
        raise MegasynthError(f"law: must be one of {', '.join(LAW_NAMES)}, got {law!r}")
    if law == "chinchilla" and n_col is None:
        raise MegasynthError("law chinchilla needs the parameters column: pass --n-col")
    if flops_col is not None and n_col is None:
        raise MegasynthError("--tokens-from-flops needs --n-col (D = C / (6 N))")
    require_columns(df, [loss_col, n_col, run_col, flops_col] + ([] if flops_col else [d_col]))
    require_columns(df, list(group_by or []), "group-by column")
    # Validate whole columns first so the error names the table row.
    L_all = numeric_column(df, loss_col, positive=True, unit="loss in nats")
    N_all = numeric_column(df, n_col, positive=True, unit="parameters") if n_col else None
    D_all = (tokens_from_flops(df, flops_col, n_col) if flops_col
             else numeric_column(df, d_col, positive=True, unit="tokens"))
    df = df.assign(_L=L_all, _D=D_all, _N=N_all if N_all is not None else np.nan)
    min_points = max(min_points or 0, MIN_POINTS[law])
    fits, skipped, series = [], [], []
    items = group_items(df, group_by)
    prog = Progress(f"{law} fits", total=len(items), unit="fits")
    formula = None
    for key, sub in items:
        D, L = sub["_D"].to_numpy(), sub["_L"].to_numpy()
        N = sub["_N"].to_numpy() if n_col else None
        groups = sub[run_col].astype(str).to_numpy() if run_col else None
        if len(L) < min_points:
            if len(items) == 1:
                raise MegasynthError(f"need at least {min_points} points to fit the {law} law; got {len(L)}")
            skipped.append({**key, "reason": f"{len(L)} point(s) < {min_points} needed for the {law} law"})
            prog.update(1)
            continue
        try:
            fit = fit_points(law, D, L, N, n_bootstrap=n_bootstrap, seed=seed, ci_level=ci_level, delta=delta,
                             loss=loss, groups=groups, grid=grid)
        except MegasynthError as e:
            if len(items) == 1:
                raise
            skipped.append({**key, "reason": f"fit failed: {e}"})
            prog.update(1)
            continue
        formula = fit.formula
        rec = {**key, **fit.to_dict()}
        if not isinstance(fit, ChinchillaFit):
            pred = fit.predict(D)
            rec["residuals"] = {"max_abs_log": float(np.max(np.abs(np.log(pred / L)))),
                                "mean_log": float(np.mean(np.log(pred / L))),
                                "values": [float(v) for v in np.log(pred / L)]}
        rec["extrapolation"] = extrapolation_check(law, D, L, N, cut=extrapolate_cut, seed=seed, delta=delta,
                                                   loss=loss, groups=groups, grid=grid)
        fits.append(rec)
        series.append((key, fit, D, L, N, rec["extrapolation"].get("cut")))
        prog.update(1)
    prog.close()
    out = {"law": law, "formula": formula or law,
           "settings": {"d_col": d_col if not flops_col else f"{flops_col} / (6 * {n_col})", "loss_col": loss_col,
                        "n_col": n_col, "group_by": list(group_by or []), "run_col": run_col,
                        "n_bootstrap": n_bootstrap, "seed": seed, "ci_level": ci_level, "delta": delta,
                        "loss": loss, "extrapolate_cut": extrapolate_cut, "min_points": min_points,
                        "source": df.attrs.get("source")},
           "fits": fits, "skipped": skipped}
    if out_json is not None:
        write_json(out_json, out)
    if out_png is not None and series:
        _plot(Path(out_png), law, series)
    return out


def _plot(path: Path, law: str, series: list) -> None:
    from megasynth.analysis.plots import plot_fit_series

    items = []
    for key, fit, D, L, N, cut in series:
        label = _key_str(key)
        if law == "chinchilla":
            for n in np.unique(N):
                m = N == n
                grid = np.geomspace(D[m].min(), D[m].max() * 1.5, 80)
                items.append({"label": f"{label} N={n:.3g}" if key else f"N={n:.3g}", "x": D[m], "y": L[m],
                              "held_out": D[m] > cut if cut is not None else None,
                              "curve_x": grid, "curve_y": fit.predict(np.full_like(grid, n), grid)})
        else:
            grid = np.geomspace(D.min(), D.max() * 1.5, 80)
            items.append({"label": label, "x": D, "y": L, "held_out": D > cut if cut is not None else None,
                          "curve_x": grid, "curve_y": fit.predict(grid)})
    plot_fit_series(path, items[:40], f"{law} law fit (open markers: above the extrapolation cut)")
