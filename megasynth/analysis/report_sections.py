"""Report sections beyond the data law, rendered when the results support them.

The rows given are those at the end of a schedule (``schedule_complete``; every seed's).

* **Chinchilla L(N, D)** — when the results hold ≥ 2 model sizes (per mixture and eval set, ≥ 5
  points): :func:`~megasynth.analysis.chinchilla.fit_chinchilla` on the full 4,500-start grid, bootstrap over
  runs, with the compute-optimal allocation; ``fits/chinchilla_law.json``, ``report/chinchilla.png``; then the
  **compute-optimal frontier** N_opt(C), D_opt(C) per mixture (Hoffmann et al. 2022 eq. 4),
  ``report/compute_optimal.png``.
* **Compute efficiency vs the natural baseline** — each mixture with ≥ 3 budgets against the
  all-natural mixture of the same preset and eval set (data-law method); ``fits/efficiency.json``,
  ``report/speedup.png``.
* **Optimal ratio** — when ≥ 3 distinct synthetic ratios share a (preset, budget, eval set):
  ``fits/optimal_ratio.json``, ``report/optimal_ratio.png``; with several budgets or presets the optimum
  against D and N per synthetic source (the study's headline plot), ``report/optimal_ratio_trend_<source>.png``.
* **Seed spread** — with ≥ 2 seeds: the standard deviation of the loss over seeds at each budget point,
  summarised per (preset, eval set).
* **Generators** — when the results hold ≥ 2 generators (``results.csv``'s ``generator``): per synthetic
  style, synthetic ratio and eval set, each generator's final loss, fitted data-law floor E [CI] and speed-up vs
  the natural baseline [CI] (:func:`~megasynth.analysis.mixtures.compare_generators`); ``fits/generators.json``.
* **Decontamination** — from ``decontamination.json`` (the ``decontaminate`` stage): per training source and
  eval set, documents checked and removed, example n-grams.

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
from megasynth.utils import MegasynthError, read_json, write_json

logger = logging.getLogger("megasynth.analysis")

CHINCHILLA_PLOT = "chinchilla.png"
FRONTIER_PLOT = "compute_optimal.png"
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
    chin, series, chin_fits = [], [], {}
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
        chin_fits[(mix, es)] = (f, sub)
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
        fmd, ffiles = _frontier_section(chin_fits, layout, ci_level)
        md += fmd
        written += ffiles

    # Efficiency vs the natural baseline
    eff = None
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
        tmd, tfiles = _ratio_trend_section(ratio["groups"], df, layout, ci_level)
        md += tmd
        written += tfiles

    smd = _seed_spread_section(df)
    md += smd

    # Generators
    gmd, gfiles = generator_section(df, layout, eff, n_bootstrap=min(n_bootstrap, 100), seed=seed, ci_level=ci_level)
    md += gmd
    written += gfiles

    # Decontamination (written by the decontaminate stage)
    md += decontamination_section(layout)

    return md, written


def _frontier_section(fits: dict, layout: StudyLayout, ci_level: float) -> tuple[list[str], list[Path]]:
    """N_opt(C) and D_opt(C) per mixture from its Chinchilla fit (Hoffmann et al. 2022 eq. 4 with C = 6ND)."""
    from megasynth.analysis import plots

    rows, curves = [], []
    for (mix, es), (f, sub) in fits.items():
        p = f.params
        if not (p["alpha"] > 0 and p["beta"] > 0):
            rows.append([mix, es, "no interior optimum (α or β ≤ 0)", "", "", ""])
            continue
        C = 6.0 * sub["n_params"].to_numpy(float) * sub["tokens"].to_numpy(float)
        c_max = float(C.max())
        grid = np.geomspace(C.min(), c_max * 100, 60)
        n_opt, d_opt = f.compute_optimal(grid)
        curves.append({"label": f"{mix} ({es})", "C": grid, "N": n_opt, "D": d_opt,
                       "points": (C, sub["n_params"].to_numpy(float), sub["tokens"].to_numpy(float))})
        n_at, d_at = (float(v) for v in f.compute_optimal(c_max))
        ci = f.compute_optimal_ci(c_max)
        rows.append([mix, es, f"{c_max:.3g}", _ci(n_at, ci["N_opt"]), _ci(d_at, ci["D_opt"]),
                     _f(d_at / n_at, ".3g")])
    if not rows:
        return [], []
    md = ["## Compute-optimal frontier N_opt(C), D_opt(C)", "",
          "From each mixture's Chinchilla fit: G = (αA/(βB))^(1/(α+β)), N_opt = G·(C/6)^(β/(α+β)), "
          "D_opt = (C/6)^(α/(α+β))/G (Hoffmann et al. 2022 eq. 4, C = 6ND FLOPs), shown at the largest trained "
          f"run's C and drawn up to 100× beyond it (extrapolated). [{ci_level:.0%} CI] over the bootstrap fits.", ""]
    md += _table(["mixture", "eval set", "C (FLOPs)", "N_opt [CI]", "D_opt [CI]", "D/N"], rows)
    written = []
    if curves:
        plots.plot_frontier(layout.report_file(FRONTIER_PLOT), curves[:12], "compute-optimal allocation per mixture")
        written.append(layout.report_file(FRONTIER_PLOT))
        md += ["", f"![compute-optimal frontier]({FRONTIER_PLOT})"]
    md.append("")
    return md, written


def _ratio_trend_section(groups: list[dict], df: pd.DataFrame, layout: StudyLayout,
                         ci_level: float) -> tuple[list[str], list[Path]]:
    """The optimal ratio against D (per preset) and against N (per budget), per synthetic source: the
    study's headline plot."""
    from megasynth.analysis import plots

    n_of = df.groupby("preset")["n_params"].first().to_dict()
    md, written = [], []
    for src in sorted({g["synthetic_source"] for g in groups}):
        gs = [g for g in groups if g["synthetic_source"] == src]
        if len({g["tokens"] for g in gs}) < 2 and len({g["preset"] for g in gs}) < 2:
            continue
        by_d, by_n = [], []
        for es in sorted({g["eval_set"] for g in gs}):
            for preset in sorted({g["preset"] for g in gs}, key=lambda p: n_of.get(p, 0)):
                line = sorted((g for g in gs if g["preset"] == preset and g["eval_set"] == es), key=lambda g: g["tokens"])
                by_d.append({"label": f"{preset} ({es})", "x": [g["tokens"] for g in line],
                             "y": [g["opt_ratio"] for g in line], "lo": [g["ci"][0] for g in line],
                             "hi": [g["ci"][1] for g in line]})
            for tokens in sorted({g["tokens"] for g in gs}):
                line = sorted((g for g in gs if g["tokens"] == tokens and g["eval_set"] == es),
                              key=lambda g: n_of.get(g["preset"], 0))
                by_n.append({"label": f"D={tokens:.3g} ({es})", "x": [n_of.get(g["preset"], np.nan) for g in line],
                             "y": [g["opt_ratio"] for g in line], "lo": [g["ci"][0] for g in line],
                             "hi": [g["ci"][1] for g in line]})
        name = f"optimal_ratio_trend_{src}.png"
        plots.plot_ratio_trend(layout.report_file(name), [{"xlabel": "training tokens D", "lines": by_d},
                                                          {"xlabel": "parameters N", "lines": by_n}],
                               f"optimal {src} ratio against D and N ({ci_level:.0%} CI)")
        written.append(layout.report_file(name))
        md += [f"### Optimal {src} ratio against N and D", "",
               f"The optimum of each (preset, budget, eval set) above, against the budget (left, one line per preset) "
               f"and the model size (right, one line per budget). Whiskers: the [{ci_level:.0%} CI] (bootstrap over "
               "the group's points: every seed at every ratio).", "", f"![optimal {src} ratio trend]({name})", ""]
    return md, written


def _seed_spread_section(df: pd.DataFrame) -> list[str]:
    """Standard deviation of the loss over seeds at each budget point, summarised per (preset, eval set)."""
    if "seed" not in df or df["seed"].nunique() < 2:
        return []
    rows = []
    for (preset, es), sub in df.groupby(["preset", "eval_set"], sort=True):
        per = sub.groupby(["mixture", "tokens"])["loss"].agg(["count", "std", "mean"])
        per = per[per["count"] > 1]
        if per.empty:
            continue
        worst = per["std"].idxmax()
        rows.append([preset, es, str(len(per)), str(int(per["count"].max())), _f(float(per["std"].mean()), ".4f"),
                     f"{_f(float(per['std'].max()), '.4f')} ({worst[0]}, D={worst[1]:.3g})",
                     _f(float((per["std"] / per["mean"]).mean() * 100), ".2f") + "%"])
    if not rows:
        return []
    md = ["## Seed spread", "",
          "Standard deviation of the held-out loss over seeds (initial weights and data order) at each budget point "
          "of each mixture; the loss plots draw it as error bars, and every fit above uses every seed's point.", ""]
    return md + _table(["preset", "eval set", "points", "seeds", "mean std (nats)", "largest std (nats)",
                        "mean std / loss"], rows) + [""]


def generator_section(df: pd.DataFrame, layout: StudyLayout, eff: dict | None, *, n_bootstrap: int, seed: int,
                      ci_level: float) -> tuple[list[str], list[Path]]:
    """The generator comparison (module docstring); empty unless ``df`` has ≥ 2 single generators."""
    from megasynth.analysis.mixtures import compare_generators
    from megasynth.config import source_style

    if "generator" not in df.columns:
        return [], []
    sub = df[(df["generator"].astype(str) != "") & ~df["generator"].astype(str).str.contains("+", regex=False)]
    if sub["generator"].nunique() < 2:
        return [], []
    res = compare_generators(sub, group_by=("eval_set",), n_bootstrap=n_bootstrap, seed=seed)
    speed = {(g["mixture"], g["eval_set"]): (g["speedup_at_max"], g["speedup_ci_at_max"])
             for g in (eff or {}).get("groups", [])}
    info = {m: (str(r["synthetic_sources"]), float(r["synthetic_ratio"]))
            for m, r in sub.drop_duplicates("mixture").set_index("mixture").iterrows()}
    rows = []
    for g in res["generators"]:
        fits = {(f["eval_set"], f["mixture"]): f for f in g["fits"]}
        for fin in g["final"]:
            srcs, ratio = info[fin["mixture"]]
            styles = "+".join(dict.fromkeys(source_style(x) or x for x in srcs.split("+") if x))
            f = fits.get((fin["eval_set"], fin["mixture"]), {})
            e = _ci(f["params"]["E"], f["ci"]["E"], ".3f") if "params" in f else "n/a"
            sp = speed.get((fin["mixture"], fin["eval_set"]))
            rows.append((styles, ratio, fin["eval_set"], g["generator"], fin["mixture"], fin["D"], fin["loss"], e,
                         _ci(*sp) if sp else "n/a"))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    write_json(layout.fit("generators"), {**res, "speedup": {f"{m}|{e}": v for (m, e), v in speed.items()}})
    md = ["## Generators", "",
          "Mixtures that differ in the generator of their synthetic source, side by side at the same synthetic "
          "ratio: final held-out loss at each mixture's largest budget, the data-law floor E "
          f"[{ci_level:.0%} CI, bootstrap over points] and the speed-up vs the natural baseline [{ci_level:.0%} CI] "
          "(the compute-efficiency section's method).", ""]
    md += _table(["style", "synthetic ratio", "eval set", "generator", "mixture", "D", "final loss", "E [CI]",
                  "speed-up [CI]"],
                 [[s, f"{r:.0%}", es, gen, m, f"{d:.3g}", _f(loss, ".3f"), e, sp]
                  for s, r, es, gen, m, d, loss, e, sp in rows])
    md.append("")
    return md, [layout.fit("generators")]


def decontamination_section(layout: StudyLayout) -> list[str]:
    """Markdown of ``decontamination.json`` (empty when the study did not decontaminate)."""
    path = layout.decontamination_report
    if not path.exists():
        return []
    d = read_json(path)
    md = ["## Decontamination", "",
          f"Training documents removed before tokenization because they share an n-gram with an eval set: "
          f"{d.get('method', '')}. {d.get('documents_removed', 0)} of {d.get('documents_checked', 0)} training "
          "documents removed.", ""]
    rows = []
    for src, r in d.get("sources", {}).items():
        for es, v in r.get("eval_sets", {}).items():
            ex = "; ".join(f"“{x}”" for x in v.get("examples", [])[:2]) or "—"
            rows.append([src, r.get("kind", ""), es, v["documents_checked"], v["documents_removed"],
                         v.get("ngrams_matched", 0), ex])
    md += _table(["source", "kind", "eval set", "documents checked", "removed", "n-grams matched", "examples"], rows)
    md.append("")
    return md
