"""Report sections beyond the data law, rendered when the results support them.

* **Chinchilla L(N, D)** — when the results hold ≥ 2 model sizes (per mixture and eval set, ≥ 5
  points): :func:`~megasynth.analysis.chinchilla.fit_chinchilla` on the full 4,500-start grid, with
  the compute-optimal allocation; ``fits/chinchilla_law.json``, ``report/chinchilla.png``.
* **Compute efficiency vs the natural baseline** — each mixture with ≥ 3 budgets against the
  all-natural mixture of the same preset and eval set (data-law method); ``fits/efficiency.json``,
  ``report/speedup.png``.
* **Optimal ratio** — when ≥ 3 distinct synthetic ratios share a (preset, budget, eval set):
  ``fits/optimal_ratio.json``, ``report/optimal_ratio.png``.

Downstream tasks, unigram statistics and model collapse: :mod:`megasynth.analysis.report_evaluation`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from megasynth.analysis.results import ResultRow
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, write_json

logger = logging.getLogger("megasynth.analysis")

CHINCHILLA_PLOT = "chinchilla.png"
SPEEDUP_PLOT = "speedup.png"
RATIO_PLOT = "optimal_ratio.png"


def _f(x, spec=".3g"):
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _ci(v, ci, spec=".3g"):
    return f"{_f(v, spec)} [{_f(ci[0], spec)}, {_f(ci[1], spec)}]"


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    return out + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]


def extra_sections(rows: list[ResultRow], layout: StudyLayout, baseline: str | None, *,
                   n_bootstrap: int, seed: int, ci_level: float) -> tuple[list[str], list[Path]]:
    """Markdown lines and written files for every analysis the results support (see module doc)."""
    from megasynth.analysis import plots
    from megasynth.analysis.chinchilla import fit_chinchilla
    from megasynth.analysis.mixtures import efficiency_table, optimal_ratio_table

    df = pd.DataFrame([r.__dict__ for r in rows])
    df = df[(df["tokens"] > 0) & np.isfinite(df["loss"]) & (df["loss"] > 0)]
    md: list[str] = []
    written: list[Path] = []
    if df.empty:
        return md, written

    # Chinchilla
    chin, series = [], []
    for (mix, es), sub in df.groupby(["mixture", "eval_set"], sort=False):
        if sub["n_params"].nunique() < 2 or len(sub) < 5 or sub["tokens"].nunique() < 2:
            continue
        try:
            f = fit_chinchilla(sub["n_params"].to_numpy(float), sub["tokens"].to_numpy(float),
                               sub["loss"].to_numpy(float), n_bootstrap=min(n_bootstrap, 100), seed=seed,
                               ci_level=ci_level, groups=sub["run"].astype(str).to_numpy())
        except MegasynthError as e:
            chin.append({"mixture": mix, "eval_set": es, "error": str(e)})
            continue
        chin.append({"mixture": mix, "eval_set": es, **f.to_dict()})
        for n in sorted(sub["n_params"].unique()):
            s = sub[sub["n_params"] == n]
            grid = np.geomspace(s["tokens"].min(), s["tokens"].max(), 60)
            series.append({"label": f"{mix}/{es} N={n:.3g}", "x": s["tokens"].to_numpy(), "y": s["loss"].to_numpy(),
                           "curve_x": grid, "curve_y": f.predict(n, grid)})
    if chin:
        write_json(layout.fit("chinchilla_law"), {"law": "chinchilla", "fits": chin})
        written.append(layout.fit("chinchilla_law"))
        md += ["## Chinchilla law L(N, D) = E + A·N^(−α) + B·D^(−β)", "",
               "Hoffmann et al. 2022 Approach 3 as replicated by Besiroglu et al. 2024: Huber (δ = 1e-3) on log L "
               "with the log-sum-exp parameterisation, L-BFGS from the 4,500-start grid, best converged. "
               f"[{ci_level:.0%} CI] = bootstrap over runs. N_opt ∝ C^(β/(α+β)) for C = 6ND (Hoffmann et al. eq. 4).", ""]
        trows = []
        for c in chin:
            if "error" in c:
                trows.append([c["mixture"], c["eval_set"], c["error"], "", "", "", "", ""])
                continue
            p, ci = c["params"], c["ci"]
            trows.append([c["mixture"], c["eval_set"], _ci(p["E"], ci["E"]), _ci(p["A"], ci["A"]), _ci(p["B"], ci["B"]),
                          _ci(p["alpha"], ci["alpha"]), _ci(p["beta"], ci["beta"]),
                          _f(c["compute_optimal"].get("N_opt_exponent", float("nan")))])
        md += _table(["mixture", "eval set", "E", "A", "B", "α", "β", "N_opt exponent"], trows)
        if series:
            plots.plot_fit_series(layout.report_file(CHINCHILLA_PLOT), series[:24], "Chinchilla fits per model size")
            written.append(layout.report_file(CHINCHILLA_PLOT))
            md += ["", f"![chinchilla]({CHINCHILLA_PLOT})"]
        md.append("")

    # Efficiency vs the natural baseline
    if baseline is not None and baseline in set(df["mixture"]) and df["mixture"].nunique() > 1:
        eff = efficiency_table(df, baseline=baseline, group_by=["preset", "eval_set"], n_col="n_params",
                               n_bootstrap=min(n_bootstrap, 50), seed=seed, ci_level=ci_level)
        if eff["groups"]:
            write_json(layout.fit("efficiency"), eff)
            written.append(layout.fit("efficiency"))
            md += [f"## Compute efficiency vs `{baseline}`", "",
                   "Tokens the mixture needs to reach the baseline's fitted loss at the baseline's largest budget, "
                   "from the data laws of both (speed-up = D_baseline / D_mixture; equal to the FLOPs ratio at "
                   f"equal N, C = 6ND). [{ci_level:.0%} CI]: bootstrap over both series' points. ∞: the mixture's "
                   "fitted floor E is above the target.", ""]
            erows, labels, vals, los, his = [], [], [], [], []
            for g in eff["groups"]:
                last = g["budgets"][-1]
                erows.append([g["mixture"], g["preset"], g["eval_set"], f"{last['D']:.3g}", _f(last["D_mix"]),
                              _ci(g["speedup_at_max"], g["speedup_ci_at_max"]), _f(g["speedup_geomean"])])
                labels.append(f"{g['mixture']} ({g['eval_set']})")
                vals.append(g["speedup_at_max"])
                los.append(g["speedup_ci_at_max"][0])
                his.append(g["speedup_ci_at_max"][1])
            md += _table(["mixture", "preset", "eval set", "baseline D", "mixture D", "speed-up [CI]",
                          "geo-mean over budgets"], erows)
            plots.plot_speedups(layout.report_file(SPEEDUP_PLOT), labels, vals, los, his, f"speed-up vs {baseline}")
            written.append(layout.report_file(SPEEDUP_PLOT))
            md += ["", f"![speed-up]({SPEEDUP_PLOT})", ""]

    # Optimal ratio
    # One synthetic source at a time: its mixtures with natural data plus the all-natural runs
    # (mixtures that combine several synthetic sources are not on any single source's ratio axis).
    parts = []
    for src in sorted(x for x in df["synthetic_sources"].unique() if x and "+" not in x):
        sub = df[df["synthetic_sources"].isin([src, ""])].assign(synthetic_source=src)
        parts.append(sub)
    ratio_df = pd.concat(parts) if parts else df.iloc[:0].assign(synthetic_source="")
    ratio = optimal_ratio_table(ratio_df, group_by=["synthetic_source", "preset", "tokens", "eval_set"],
                                n_bootstrap=min(n_bootstrap, 200), seed=seed, ci_level=ci_level)
    if ratio["groups"]:
        write_json(layout.fit("optimal_ratio"), ratio)
        written.append(layout.fit("optimal_ratio"))
        md += ["## Optimal synthetic ratio", "",
               "Quadratic fit of loss against the share of one synthetic source (its mixtures with natural data and "
               "the all-natural runs) at each (preset, budget, eval set); argmin over "
               f"the measured range; [{ci_level:.0%} CI] = bootstrap over runs.", ""]
        md += _table(["source", "preset", "tokens", "eval set", "optimal ratio [CI]", "loss at optimum", "interior"],
                     [[g["synthetic_source"], g["preset"], f"{g['tokens']:.3g}", g["eval_set"], (_ci(g["opt_ratio"], g["ci"], ".2f") if len(set(g["ratios"])) > 3
                        else f"{g['opt_ratio']:.2f} (3 ratios: exact fit, no interval)"),
                       _f(g["loss_at_opt"], ".3f"), "yes" if g["interior"] else "no (edge)"] for g in ratio["groups"]])
        plots.plot_ratio_curves(layout.report_file(RATIO_PLOT), [
            {"label": f"{g['preset']} D={g['tokens']:.3g} {g['eval_set']}", "ratio": g["ratios"], "loss": g["losses"],
             "grid": g["grid"], "fit": g["fit"], "opt": g["opt_ratio"], "opt_ci": tuple(g["ci"])}
            for g in ratio["groups"][:12]], "loss vs synthetic ratio")
        written.append(layout.report_file(RATIO_PLOT))
        md += ["", f"![optimal ratio]({RATIO_PLOT})", ""]

    return md, written
