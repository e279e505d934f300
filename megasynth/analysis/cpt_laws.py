"""SynthLLM's scaling analysis of continued training (Qin et al. 2025, §4): the error (or bits per byte) of one base
model trained further on D tokens of synthetic data, against D.

Two laws are fitted to each group of points (one preset and mixture, one eval set and metric; every seed's point):

- the **rectified law** L(D) = B / (D_l + D^β) + E (Lin et al. 2024, "Selecting Large Language Model to Fine-tune
  via Rectified Scaling Law", eq. 2; the law SynthLLM fits), whose ``D_l`` (the data the model has effectively
  learned before) bends the curve flat at small D (:class:`megasynth.analysis.laws.RectifiedLaw`);
- the **plain power law** L(D) = E + B / D^β (Hoffmann et al. 2022 eq. 2 at fixed N;
  :class:`megasynth.analysis.laws.DataLaw`).

Both with the point bootstrap of :func:`megasynth.analysis.laws.fit_law` (percentile intervals), and:

- **held-out-budget extrapolation error**: each law fitted without the largest budget D_max, its prediction at
  D_max against the mean measured value there (absolute and relative error);
- **tokens to the plateau**: the smallest D beyond the largest predicted gain per doubling,
  ``g(D) = L(D) − L(2D)``, at which ``g`` falls below ``report.plateau_gain`` (units of the metric; e.g. 0.01 =
  one percentage point of error per doubling); for the power law ``g(D) = B·D^(−β)·(1 − 2^(−β))`` gives
  ``D = (B·(1 − 2^(−β)) / τ)^(1/β)``; for the rectified law it is found numerically (a log grid, then
  :func:`scipy.optimize.brentq`). SynthLLM reads the same quantity off its fitted curves ("performance gains
  plateau near 300B tokens"); with an interval over the bootstrap refits;
- **predicted best achievable value**: E, with its interval.

Output: ``fits/cpt_laws.json`` (:func:`cpt_analysis`), the plot ``report/cpt_laws.png`` and a report section
(:func:`cpt_section`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from megasynth.utils import MegasynthError, write_json

logger = logging.getLogger("megasynth.analysis")

CPT_PLOT = "cpt_laws.png"
CPT_TARGETS = (("gsm8k_bpb", "bpb"), ("minerva_math_500_bpb", "bpb"), ("minerva_math_500", "math_error"),
               ("gsm8k", "gsm8k_error"))
"""(eval_set, metric) pairs the analysis fits: gold-answer bits per byte of GSM8K and MATH-500, generative errors."""
GRID_DECADES = 8.0
"""The plateau search runs from 1/100 of the smallest to 10^GRID_DECADES × the largest fitted budget."""


def doubling_gain(law: str, params: dict, D: np.ndarray) -> np.ndarray:
    """Predicted gain per doubling ``L(D) − L(2D)`` of a fitted law (``rectified`` or ``data``) at ``D`` tokens."""
    D = np.asarray(D, dtype=np.float64)
    B, beta = params["B"], params["beta"]
    if law == "data":
        return B * D ** (-beta) * (1.0 - 2.0 ** (-beta))
    if law == "rectified":
        Dl = params["D_l"]
        with np.errstate(over="ignore"):
            return B / (Dl + D ** beta) - B / (Dl + (2.0 * D) ** beta)
    raise MegasynthError(f"doubling_gain: unknown law {law!r}")


def plateau_tokens(law: str, params: dict, threshold: float, d_range: tuple[float, float]) -> Optional[float]:
    """The smallest D beyond the peak of the gain per doubling at which the gain falls below ``threshold``.

    Returns:
        D in tokens; ``math.inf`` when the gain is still above ``threshold`` at 10^GRID_DECADES × the largest budget;
        ``None`` when the gain never reaches ``threshold`` (the law predicts no gain that large at any D).
    """
    if params["B"] <= 0 or params["beta"] <= 0:
        return None
    if law == "data":
        g = params["B"] * (1.0 - 2.0 ** (-params["beta"]))
        return float((g / threshold) ** (1.0 / params["beta"]))
    from scipy.optimize import brentq

    lo, hi = math.log(d_range[0] / 100.0), math.log(d_range[1]) + GRID_DECADES * math.log(10.0)
    u = np.linspace(lo, hi, 4000)
    g = doubling_gain(law, params, np.exp(u))
    peak = int(np.argmax(g))
    if g[peak] < threshold:
        return None
    below = np.flatnonzero(g[peak:] < threshold)
    if not below.size:
        return math.inf
    j = peak + int(below[0])
    f = lambda x: float(doubling_gain(law, params, np.exp(x))) - threshold  # noqa: E731
    return float(math.exp(brentq(f, u[j - 1], u[j]))) if j > peak else float(math.exp(u[j]))


def _interval(values: Sequence[float], level: float) -> list[float]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) < 2:
        return [math.nan, math.nan]
    a = (1.0 - level) / 2.0
    return [float(np.quantile(v, a)), float(np.quantile(v, 1.0 - a))]


def analyse_group(D: Sequence[float], L: Sequence[float], *, plateau_gain: float, n_bootstrap: int = 200,
                  ci_level: float = 0.95, seed: int = 0, loss: str = "huber", delta: float = 1e-3) -> dict:
    """Both laws on one group's points (module docstring).

    Args:
        D: ``[n]`` training tokens of continued training per point (> 0); L: ``[n]`` error or bpb (> 0).
        plateau_gain: the gain per doubling of D below which the curve counts as flat (units of L).

    Returns:
        ``{"points", "budgets", "laws": {"rectified"|"power": {fit (LawFit.to_dict), "best": {value, ci},
        "plateau": {tokens, ci}, "holdout": {D, observed, predicted, abs_error, rel_error} | {"error"}} |
        {"error"}}}``.

    Raises:
        MegasynthError: bad ``plateau_gain``; fewer than 3 distinct budgets.
    """
    from megasynth.analysis.laws import fit_data_law, fit_rectified_law

    if not plateau_gain > 0:
        raise MegasynthError(f"report.plateau_gain: must be > 0, got {plateau_gain}")
    D = np.asarray(D, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    budgets = sorted(set(D.tolist()))
    if len(budgets) < 3:
        raise MegasynthError(f"need at least 3 distinct budgets, got {len(budgets)}")
    opts = dict(loss=loss, delta=delta, ci_level=ci_level, seed=seed)
    out: dict = {"points": [[float(d), float(x)] for d, x in zip(D, L)], "budgets": budgets, "laws": {}}
    d_max = budgets[-1]
    held = D < d_max
    observed = float(np.mean(L[D == d_max]))
    for name, law, fit in (("rectified", "rectified", fit_rectified_law), ("power", "data", fit_data_law)):
        try:
            f = fit(D, L, n_bootstrap=n_bootstrap, **opts)
        except MegasynthError as e:
            out["laws"][name] = {"error": str(e)}
            continue
        rng = (float(D.min()), float(D.max()))
        boot_plateaus = [plateau_tokens(law, b, plateau_gain, rng) for b in f.bootstrap_params]
        rec = {"fit": f.to_dict(), "best": {"value": f.params["E"], "ci": list(f.ci["E"])},
               "plateau": {"tokens": plateau_tokens(law, f.params, plateau_gain, rng),
                           "ci": _interval([p for p in boot_plateaus if p is not None and math.isfinite(p)],
                                           ci_level),
                           "bootstrap_without_plateau": sum(p is None or not math.isfinite(p) for p in boot_plateaus)}}
        try:
            h = fit(D[held], L[held], n_bootstrap=0, **opts)
            pred = float(h.predict([d_max])[0])
            rec["holdout"] = {"D": d_max, "observed": observed, "predicted": pred, "abs_error": abs(pred - observed),
                              "rel_error": abs(pred - observed) / observed, "fit": h.to_dict()}
        except MegasynthError as e:
            rec["holdout"] = {"D": d_max, "observed": observed, "error": str(e)}
        out["laws"][name] = rec
    return out


def cpt_groups(rows) -> dict[tuple[str, str, str, str], tuple[np.ndarray, np.ndarray]]:
    """``{(preset, mixture, eval_set, metric): (D [n], L [n])}`` of the :data:`CPT_TARGETS` rows (D > 0, L finite
    and > 0), every seed's point."""
    pts: dict[tuple, list] = defaultdict(list)
    targets = set(CPT_TARGETS)
    for r in rows:
        if (r.eval_set, r.metric) in targets and r.tokens > 0 and math.isfinite(r.loss) and r.loss > 0:
            pts[(r.preset, r.mixture, r.eval_set, r.metric)].append((r.tokens, r.loss))
    return {k: (np.array([d for d, _ in v], float), np.array([x for _, x in v], float)) for k, v in pts.items()}


def cpt_analysis(rows, *, plateau_gain: float, n_bootstrap: int, ci_level: float, seed: int, loss: str = "huber",
                 delta: float = 1e-3) -> dict:
    """:func:`analyse_group` for every group of :func:`cpt_groups` with at least 3 distinct budgets (others are left
    out silently: a study without a budget sweep has nothing to fit).

    Returns:
        ``{"plateau_gain", "groups": [{preset, mixture, eval_set, metric, **analyse_group}], "skipped": [...]}``
        (the content of ``fits/cpt_laws.json``).
    """
    out = {"plateau_gain": plateau_gain, "ci_level": ci_level, "n_bootstrap": n_bootstrap,
           "laws": {"rectified": "L(D) = B / (D_l + D^beta) + E (Lin et al. 2024)",
                    "power": "L(D) = E + B / D^beta (Hoffmann et al. 2022)"},
           "groups": [], "skipped": []}
    for (preset, mixture, es, metric), (D, L) in cpt_groups(rows).items():
        if np.unique(D).size < 3:
            continue  # one run per mixture (no budget sweep): nothing to fit, and no note either
        key = {"preset": preset, "mixture": mixture, "eval_set": es, "metric": metric}
        try:
            out["groups"].append({**key, **analyse_group(D, L, plateau_gain=plateau_gain, n_bootstrap=n_bootstrap,
                                                          ci_level=ci_level, seed=seed, loss=loss, delta=delta)})
        except MegasynthError as e:
            out["skipped"].append({**key, "reason": str(e)})
    return out


def _tok(n: Optional[float]) -> str:
    if n is None:
        return "—"
    if not math.isfinite(n):
        return "∞"
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _plot(path: Path, groups: list[dict], title: str) -> None:
    from matplotlib.figure import Figure

    from megasynth.analysis.laws import DataLawFit, RectifiedLawFit
    from megasynth.analysis.plots import _save

    ncols = min(len(groups), 2)
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(6.0 * ncols, 4.2 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, g in zip(axes, groups):
        pts = np.array(g["points"])
        ax.plot(pts[:, 0], pts[:, 1], "ko", ms=4, label="measured")
        d_max = max(g["budgets"])
        grid = np.geomspace(min(g["budgets"]), 4 * d_max, 100)
        for name, cls, color in (("rectified", RectifiedLawFit, "C0"), ("power", DataLawFit, "C1")):
            rec = g["laws"].get(name, {})
            if "fit" not in rec:
                continue
            f = cls.from_dict(rec["fit"])
            ax.plot(grid, f.predict(grid), "-", color=color, lw=1.5, label=f"{name} (all budgets)")
            h = rec.get("holdout", {})
            if "fit" in h:
                hf = cls.from_dict(h["fit"])
                ax.plot(grid, hf.predict(grid), ":", color=color, lw=1.2, label=f"{name} (without D_max)")
                ax.plot([d_max], [h["predicted"]], "x", color=color, ms=8)
        ax.set_xscale("log")
        ax.set_xlabel("continued-training tokens D")
        ax.set_ylabel(g["metric"])
        ax.set_title(f"{g['mixture']} ({g['preset']}): {g['eval_set']}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(title)
    _save(fig, path)


def cpt_section(rows, layout, *, plateau_gain: float, n_bootstrap: int, ci_level: float, seed: int,
                study: str, loss: str = "huber", delta: float = 1e-3) -> tuple[list[str], list[Path]]:
    """The report's continued-training section: ``fits/cpt_laws.json``, ``report/cpt_laws.png`` and markdown
    (empty, nothing written, without :data:`CPT_TARGETS` rows at 3 or more budgets).

    ``rows``: the fitted ``results.csv`` rows (:class:`megasynth.analysis.results.ResultRow`, end of schedule).
    """
    rec = cpt_analysis(rows, plateau_gain=plateau_gain, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed,
                       loss=loss, delta=delta)
    if not rec["groups"] and not rec["skipped"]:
        return [], []
    path = layout.fit("cpt_laws")
    write_json(path, rec)
    files = [path]
    lv = f"{round(100 * ci_level)}%"
    md = ["## Continued training: rectified law vs power law", "",
          "Per base model (preset) and mixture, the math metric after D tokens of continued training, fitted with "
          "the rectified law L(D) = B/(D_l + D^β) + E (Lin et al. 2024; SynthLLM, Qin et al. 2025) and the power law "
          f"L(D) = E + B/D^β, with {lv} bootstrap intervals ({n_bootstrap} resamples of the points). *Holdout*: "
          "each law fitted without the largest budget, predicting it. *Plateau*: the D beyond which the predicted "
          f"gain per doubling of D is below {plateau_gain:g} (`report.plateau_gain`). *Best*: E, the predicted "
          f"best achievable value. `fits/{path.name}`.", ""]
    header = ["mixture (preset)", "eval set", "metric", "budgets", "law", f"E (best) [{lv}]", "B", "D_l", "β",
              "holdout err (abs / rel)", f"plateau D [{lv}]"]
    trows = []
    for g in rec["groups"]:
        for name in ("rectified", "power"):
            r = g["laws"].get(name, {})
            lead = [f"{g['mixture']} ({g['preset']})", g["eval_set"], g["metric"], str(len(g["budgets"])), name]
            if "fit" not in r:
                trows.append(lead + [f"not fitted: {r.get('error', '')}"] + [""] * 5)
                continue
            p = r["fit"]["params"]
            ci = r["best"]["ci"]
            h = r["holdout"]
            hold = (f"{h['abs_error']:.4f} / {100 * h['rel_error']:.1f}%" if "abs_error" in h
                    else f"— ({h.get('error', '')})")
            pl = r["plateau"]
            trows.append(lead + [f"{p['E']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]", f"{p['B']:.3g}",
                                 f"{p['D_l']:.3g}" if "D_l" in p else "—", f"{p['beta']:.3f}", hold,
                                 f"{_tok(pl['tokens'])} [{_tok(pl['ci'][0]) if math.isfinite(pl['ci'][0]) else '—'}, "
                                 f"{_tok(pl['ci'][1]) if math.isfinite(pl['ci'][1]) else '—'}]"])
    if trows:
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in trows]
        better = []
        for g in rec["groups"]:
            hs = {n: g["laws"].get(n, {}).get("holdout", {}).get("abs_error") for n in ("rectified", "power")}
            if None not in hs.values():
                which = (f"the {min(hs, key=hs.get)} law extrapolates better"
                         if not math.isclose(hs["rectified"], hs["power"], rel_tol=1e-6, abs_tol=1e-12)
                         else "both laws extrapolate alike")
                better.append(f"- {g['mixture']} ({g['preset']}) on `{g['eval_set']}` ({g['metric']}): {which} to "
                              f"D = {_tok(max(g['budgets']))} (absolute error: rectified {hs['rectified']:.4f}, "
                              f"power {hs['power']:.4f}).")
        md += ["", *better]
        _plot(layout.report_file(CPT_PLOT), rec["groups"], f"{study}: continued training, rectified vs power law")
        files.append(layout.report_file(CPT_PLOT))
        md += ["", f"![continued training laws]({CPT_PLOT})", "",
               "Points: measured; solid: fit on all budgets; dotted: fit without the largest budget, × its "
               "prediction there.", ""]
    if rec["skipped"]:
        md += ["Not fitted:", ""] + [f"- {s['mixture']} ({s['preset']}) `{s['eval_set']}` {s['metric']}: {s['reason']}"
                                     for s in rec["skipped"]] + [""]
    return md, files
