"""PNG plots of the report, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Each function writes one PNG atomically. Series are keyed by a label (``mixture`` or
``mixture (preset)``); colours are assigned in the order of ``labels`` so a mixture has the same colour
in every plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from megasynth.utils import atomic_path

DPI = 120


def _colors(labels: list[str], palette: str | None = None) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps[palette or ("tab10" if len(labels) <= 10 else "tab20")]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")


def plot_loss_vs_tokens(path: Path, labels: list[str], eval_sets: list[str],
                        points: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                        curves: dict[tuple[str, str], Callable[[np.ndarray], np.ndarray]], title: str,
                        spread: dict[tuple[str, str], np.ndarray] | None = None) -> None:
    """One panel per eval set; one line per series: measured loss vs tokens (log x), fit dashed.

    Args:
        points: ``(label, eval_set) -> (D [n] tokens, L [n] nats)``, sorted by D.
        curves: ``(label, eval_set) -> predict(D)`` of the fitted law, drawn over the fitted D range.
        spread: ``(label, eval_set) -> [n]`` error bars (standard deviation over seeds, nats) at ``points``.
    """
    ncols = min(len(eval_sets), 3)
    nrows = math.ceil(len(eval_sets) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.0 * nrows + 0.6), layout="constrained")
    colors = _colors(labels)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, es in zip(axes, eval_sets):
        for lab in labels:
            if (lab, es) not in points:
                continue
            D, L = points[(lab, es)]
            ax.plot(D, L, "o-", color=colors[lab], lw=1.6, ms=4, label=lab)
            err = (spread or {}).get((lab, es))
            if err is not None and np.any(err > 0):
                ax.errorbar(D, L, yerr=err, fmt="none", ecolor=colors[lab], elinewidth=1.0, capsize=3)
            if (lab, es) in curves and len(D):
                grid = np.geomspace(D.min(), D.max(), 100)
                ax.plot(grid, curves[(lab, es)](grid), "--", color=colors[lab], lw=1.2, alpha=0.9)
        ax.set_xscale("log")
        ax.set_title(f"eval set: {es}")
        ax.set_xlabel("training tokens D")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(eval_sets):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="gray", ls="--"))
        names.append("fit E + B·D^(−β)")
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 6), frameon=False)
    fig.suptitle(title)
    _save(fig, path)


def plot_final_loss(path: Path, labels: list[str], eval_sets: list[str], loss: dict[tuple[str, str], float],
                    title: str) -> None:
    """Grouped bars: final held-out loss per series (x) and eval set (bar colour); values printed.

    The y axis starts just below the smallest loss (stated in the axis label) so differences of a few
    hundredths of a nat stay visible.
    """
    fig = Figure(figsize=(max(5.0, 1.1 * len(labels) * max(1, len(eval_sets)) * 0.6 + 2), 4.2),
                 layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(eval_sets))
    x = np.arange(len(labels))
    vals = [v for v in loss.values() if math.isfinite(v)]
    es_colors = _colors(eval_sets, "Set2")  # not the mixtures' palette: bars are coloured by eval set
    for j, es in enumerate(eval_sets):
        ys = np.array([loss.get((lab, es), float("nan")) for lab in labels])
        bars = ax.bar(x + (j - (len(eval_sets) - 1) / 2) * width, ys, width, label=es, color=es_colors[es])
        ax.bar_label(bars, labels=[f"{y:.3f}" if math.isfinite(y) else "" for y in ys], fontsize=7, padding=2)
    if vals:
        lo, hi = min(vals), max(vals)
        span = max(hi - lo, 0.02 * hi)
        ax.set_ylim(max(0.0, lo - 0.6 * span), hi + 0.35 * span)
    ax.set_xticks(x, labels, rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("held-out loss (nats/token; axis not from 0)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="eval set", fontsize=8)
    _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Analysis plots (fits, ratios, speed-ups, unigrams)
# --------------------------------------------------------------------------------------------------
def plot_fit_series(path: Path, series: list[dict], title: str, xlabel: str = "training tokens D",
                    ylabel: str = "loss (nats/token)") -> None:
    """Data with fitted curves (and optional bands), log x.

    Args:
        series: dicts with ``label``, ``x [n]``, ``y [n]``, optional ``held_out [n] bool`` (drawn as
            open markers), ``curve_x [m]``, ``curve_y [m]``, ``band_lo [m]``, ``band_hi [m]``.
    """
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    colors = _colors([s["label"] for s in series])
    for s in series:
        c = colors[s["label"]]
        x, y = np.asarray(s["x"]), np.asarray(s["y"])
        held = np.asarray(s.get("held_out", np.zeros(x.size, dtype=bool)), dtype=bool)
        ax.plot(x[~held], y[~held], "o", color=c, ms=4, label=s["label"])
        if held.any():
            ax.plot(x[held], y[held], "o", mfc="none", color=c, ms=6)
        if s.get("curve_x") is not None:
            ax.plot(s["curve_x"], s["curve_y"], "-", color=c, lw=1.2, alpha=0.9)
            if s.get("band_lo") is not None:
                ax.fill_between(s["curve_x"], s["band_lo"], s["band_hi"], color=c, alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_ratio_curves(path: Path, curves: list[dict], title: str) -> None:
    """Loss vs synthetic ratio per (N, D) group: points, fitted curve, optimum with its interval.

    Args:
        curves: dicts with ``label``, ``ratio [n]``, ``loss [n]``, ``grid [m]``, ``fit [m]``,
            ``opt`` (float), ``opt_ci`` ((lo, hi)).
    """
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    colors = _colors([c["label"] for c in curves])
    for c in curves:
        col = colors[c["label"]]
        ax.plot(c["ratio"], c["loss"], "o", color=col, ms=4, label=c["label"])
        ax.plot(c["grid"], c["fit"], "-", color=col, lw=1.2)
        if c.get("opt") is not None and math.isfinite(c["opt"]):
            ax.axvline(c["opt"], color=col, ls="--", lw=0.8)
            lo, hi = c.get("opt_ci", (float("nan"), float("nan")))
            if math.isfinite(lo) and math.isfinite(hi):
                ax.axvspan(lo, hi, color=col, alpha=0.1)
    ax.set_xlabel("synthetic ratio")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_speedups(path: Path, labels: list[str], values: list[float], lows: list[float], highs: list[float],
                  title: str) -> None:
    """Bars of speed-up factors (tokens of the baseline / tokens of the mixture) with interval whiskers."""
    fig = Figure(figsize=(max(4.5, 1.0 + 0.9 * len(labels)), 4.2), layout="constrained")
    ax = fig.subplots()
    v = np.asarray(values, dtype=np.float64)
    lo = np.asarray(lows, dtype=np.float64)
    hi = np.asarray(highs, dtype=np.float64)
    err = np.vstack([np.where(np.isfinite(lo), v - lo, 0), np.where(np.isfinite(hi), hi - v, 0)])
    x = np.arange(len(labels))
    ax.bar(x, np.nan_to_num(v), color="#4c72b0", yerr=np.clip(np.nan_to_num(err), 0, None), capsize=4)
    ax.axhline(1.0, color="gray", ls="--", lw=0.8)
    ax.set_xticks(x, labels, rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("speed-up (× fewer tokens to baseline loss)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_rank_frequency(path: Path, dists: dict[str, np.ndarray], title: str) -> None:
    """Rank–frequency (Zipf) plot, log–log, one line per corpus; ``dists[name]`` = counts ``[V]``."""
    fig = Figure(figsize=(6.0, 4.4), layout="constrained")
    ax = fig.subplots()
    for name, counts in dists.items():
        c = np.sort(np.asarray(counts, dtype=np.float64)[np.asarray(counts) > 0])[::-1]
        if c.size:
            ax.plot(np.arange(1, c.size + 1), c / c.sum(), lw=1.2, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("relative frequency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_frontier(path: Path, curves: list[dict], title: str) -> None:
    """Compute-optimal allocation: N_opt(C) (left) and D_opt(C) (right), log-log, one line per fit.

    Args:
        curves: dicts with ``label``, ``C [m]`` (FLOPs), ``N [m]`` (parameters), ``D [m]`` (tokens), optional
            ``points`` ``(C [n], N [n], D [n])`` of the trained runs (drawn as markers).
    """
    fig = Figure(figsize=(10.5, 4.4), layout="constrained")
    ax_n, ax_d = fig.subplots(1, 2)
    colors = _colors([c["label"] for c in curves])
    for c in curves:
        col = colors[c["label"]]
        ax_n.plot(c["C"], c["N"], "-", color=col, lw=1.4, label=c["label"])
        ax_d.plot(c["C"], c["D"], "-", color=col, lw=1.4, label=c["label"])
        if c.get("points") is not None:
            pc, pn, pd = c["points"]
            ax_n.plot(pc, pn, "o", color=col, ms=3, alpha=0.6)
            ax_d.plot(pc, pd, "o", color=col, ms=3, alpha=0.6)
    for ax, what in ((ax_n, "N_opt (parameters)"), (ax_d, "D_opt (tokens)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C = 6ND")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_n.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_ratio_trend(path: Path, panels: list[dict], title: str) -> None:
    """The optimal synthetic ratio against D (left) and against N (right), with interval whiskers.

    Args:
        panels: two dicts (``xlabel``, ``lines``), each line a dict with ``label``, ``x [n]``, ``y [n]``
            (optimal ratio), ``lo [n]``, ``hi [n]`` (interval; NaN: none).
    """
    fig = Figure(figsize=(10.5, 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        colors = _colors([ln["label"] for ln in panel["lines"]])
        for ln in panel["lines"]:
            x, y = np.asarray(ln["x"], dtype=np.float64), np.asarray(ln["y"], dtype=np.float64)
            lo, hi = np.asarray(ln["lo"], dtype=np.float64), np.asarray(ln["hi"], dtype=np.float64)
            err = np.vstack([np.where(np.isfinite(lo), y - lo, 0), np.where(np.isfinite(hi), hi - y, 0)])
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o-", color=colors[ln["label"]], ms=4, lw=1.4,
                        capsize=3, label=ln["label"])
        ax.set_xscale("log")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel("optimal synthetic ratio")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_panels(path: Path, panels: list[tuple[str, dict[str, tuple]]], labels: list[str], xlabel: str,
                ylabel: str, title: str, logx: bool = True, xticklabels: list[str] | None = None,
                styles: dict[str, str] | None = None) -> None:
    """One panel per ``(panel title, {series key: (x [n], y [n])})``; a line with markers per series.

    A series key is a label of ``labels`` (its colour) or ``(label, variant)`` with ``styles[variant]`` a line
    style (e.g. ``acc`` solid, ``acc_norm`` dashed). ``xticklabels``: categorical x (positions 0..n−1).
    """
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    colors = _colors(labels)
    for ax, (ptitle, series) in zip(axes, panels):
        for key, (x, y) in series.items():
            label, variant = key if isinstance(key, tuple) else (key, None)
            ls = (styles or {}).get(variant, "-")
            ax.plot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), ls, marker="o", ms=3.5,
                    lw=1.3, color=colors.get(label), label=f"{label} {variant}" if variant else label)
        if logx:
            ax.set_xscale("log")
        if xticklabels is not None:
            ax.set_xticks(range(len(xticklabels)), xticklabels, fontsize=8)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
