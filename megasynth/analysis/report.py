"""The report stage: data-law fits per (mixture, preset, eval set), a markdown report and PNG plots.

Fits use the rows at the end of a run's schedule (``schedule_complete``,
:func:`megasynth.analysis.results.complete_rows`) and every seed's point; plots show the mean over seeds with
the standard deviation as error bars.

Reads ``results.csv`` (and ``mixtures/<mix>.json`` when present, for realised shares, epochs and
warnings); writes

* ``fits/data_law.json`` — ``{"law", "formula", "method", "fits": [...], "skipped": [...]}``; each
  fit has its group keys (``mixture``, ``preset``, ``eval_set``) and :meth:`LawFit.to_dict` fields
  (params E, B, beta; bootstrap CIs; RMSE in nats and in log-loss);
* ``report/report.md`` — mixtures, final-loss table (best per eval set in bold, difference to the
  all-natural mixture, bits per byte beside each loss), fit table, the sections of
  :mod:`~megasynth.analysis.report_sections` (frontier, ratio trends, seed spread, generators, decontamination)
  and :mod:`~megasynth.analysis.report_evaluation` (downstream tasks, unigram statistics → ``fits/unigrams.json``,
  model collapse → ``fits/collapse.json``), notes;
* ``report/loss_vs_tokens.png`` and ``report/final_loss.png`` (+ the sections' plots).

The fits, tables and plots of held-out loss use the ``loss`` rows of ``results.csv`` (its ``metric`` column).

Rerun policy: the marker ``report/report.md.done`` stores a SHA-256 of every input (results.csv,
the mixture files, ``decontamination.json``, the tokenized stats and run summaries the unigram section reads, the
report/mixture/name/collapse sections of the config and :data:`REPORT_VERSION`);
:func:`report_up_to_date` compares it (the study runner skips the stage when it matches and all outputs
exist), and :func:`run_report` regenerates everything.

Fit options come from :class:`~megasynth.config.ReportConfig` (``report.bootstrap``, ``report.ci_level``,
``report.fit_loss``, ``report.huber_delta``); ``report.fit_min_points`` below 3 is raised to 3 (three
parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from megasynth.analysis.laws import DataLaw, DataLawFit, fit_data_law
from megasynth.analysis.results import ResultRow, complete_rows, metric_rows, read_results
from megasynth.config import StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import (MegasynthError, Progress, atomic_path, is_done, mark_done, marker_path, read_json,
                             write_json)

logger = logging.getLogger("megasynth.analysis")

REPORT_VERSION = 5
"""Bumped when the report's content or format changes, so reruns regenerate old reports."""

LOSS_PLOT = "loss_vs_tokens.png"
BAR_PLOT = "final_loss.png"


@dataclass(frozen=True)
class Series:
    """Results of a mixture at a preset: one run per budget point and seed (all seeds are pooled in fits)."""

    mixture: str
    preset: str
    label: str


def _fmt(x: float, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _fmt_tokens(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _signed(x: float) -> str:
    return "n/a" if not math.isfinite(x) else ("±0.000" if abs(x) < 5e-4 else f"{x:+.3f}".replace("-", "−"))


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
def _mixture_info(cfg: StudyConfig, layout: StudyLayout, names: list[str]) -> dict[str, dict]:
    """Requested sources (config) and, if the mix stage ran, realised shares, epochs and warnings."""
    requested = {m.name: dict(m.sources) for m in cfg.all_mixtures}
    info = {}
    for name in names:
        path = layout.mixture(name)
        mix = read_json(path) if path.exists() else {}
        if not isinstance(mix, dict):
            raise MegasynthError(f"{path}: expected a JSON object")
        info[name] = {"sources": requested.get(name, mix.get("sources", {})), "in_config": name in requested,
                      "realised_share": mix.get("realised_share"), "epochs": mix.get("epochs") or {},
                      "warnings": list(mix.get("warnings") or []), "has_file": path.exists()}
    return info


def natural_baseline(cfg: StudyConfig, mixtures: list[str]) -> str | None:
    """The all-natural mixture to compare against: every source with a positive share is a natural
    corpus. Prefers one named ``natural``; else the first such mixture in study order; None if none."""
    natural = set(cfg.natural_sources)
    sources = {m.name: m.sources for m in cfg.all_mixtures}
    cands = [m for m in mixtures if m in sources and all(s in natural for s, r in sources[m].items() if r > 0)]
    if "natural" in cands:
        return "natural"
    return cands[0] if cands else None


def _series(cfg: StudyConfig, rows: list[ResultRow]) -> list[Series]:
    order = {m.name: i for i, m in enumerate(cfg.all_mixtures)}
    keys = sorted({(r.mixture, r.preset) for r in rows}, key=lambda k: (order.get(k[0], len(order)), k))
    multi = len({p for _, p in keys}) > 1
    return [Series(m, p, f"{m} ({p})" if multi else m) for m, p in keys]


def _inputs_hash(cfg: StudyConfig, layout: StudyLayout, mixtures: list[str], options: dict, all_rows: list) -> str:
    """SHA-256 of everything the report reads: results.csv (``all_rows``: its rows, already read), the
    mixtures' files, unigram inputs, the decontamination report and the report's settings."""
    h = hashlib.sha256()
    h.update(layout.results.read_bytes())
    for name in mixtures:
        p = layout.mixture(name)
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.exists() else b"<missing>"))
    from megasynth.analysis.report_evaluation import unigram_inputs

    for p in unigram_inputs(cfg, layout, all_rows):  # tokenized stats, run summaries
        h.update(str(p).encode() + b"\0" + (p.read_bytes() if p.exists() else b"<missing>"))
    decon = layout.decontamination_report
    h.update(decon.read_bytes() if decon.exists() else b"<no decontamination>")
    d = cfg.to_dict()
    h.update(json.dumps({"v": REPORT_VERSION, "name": d["name"], "seed": d["seed"], "report": d["report"],
                         "mixtures": d["mixtures"], "natural": cfg.natural_sources, "options": options,
                         "collapse": d["collapse"], "eval_sets": cfg.eval_sets}, sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------
def _options(cfg: StudyConfig) -> tuple[int, dict]:
    """(fit_min_points, keyword arguments of :func:`fit_data_law`) from ``cfg.report``."""
    rep = cfg.report
    return max(rep.fit_min_points, 3), dict(loss=rep.fit_loss, delta=rep.huber_delta, n_bootstrap=rep.bootstrap,
                                            ci_level=rep.ci_level, seed=cfg.seed)


def _outputs(layout: StudyLayout) -> list:
    return [layout.fit("data_law"), layout.report, layout.report_file(LOSS_PLOT), layout.report_file(BAR_PLOT)]


def _digest(cfg: StudyConfig, layout: StudyLayout, series: list[Series], all_rows: list) -> str:
    min_points, fit_opts = _options(cfg)
    mixtures = list(dict.fromkeys(s.mixture for s in series))
    return _inputs_hash(cfg, layout, mixtures, {"min_points": min_points, **fit_opts}, all_rows)


def report_up_to_date(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether the report's outputs exist and were made from the current inputs (the stage's completion)."""
    if not (layout.results.exists() and all(p.exists() for p in _outputs(layout))
            and is_done(layout.report) and is_done(layout.fit("data_law"))):
        return False
    all_rows = read_results(layout.results)
    series = _series(cfg, metric_rows(all_rows, "loss"))
    return read_json(marker_path(layout.report)).get("inputs_sha256") == _digest(cfg, layout, series, all_rows)


def run_report(cfg: StudyConfig, layout: StudyLayout) -> None:
    """Fit L(D) = E + B·D^(−β) per (mixture, preset, eval set) and write the report.

    A group is fitted when it has at least ``cfg.report.fit_min_points`` distinct budgets with a
    finite loss and D > 0; other groups (and fits that fail) are listed as skipped with the reason.
    The study runner skips the stage while :func:`report_up_to_date`.

    Raises:
        MegasynthError: ``results.csv`` missing, malformed or empty.
    """
    all_rows = read_results(layout.results)
    rows = metric_rows(all_rows, "loss")  # held-out loss (nats/token): the fits, tables and plots below
    if not rows:
        raise MegasynthError(f"{layout.results}: no held-out loss rows (no finished runs); train and evaluate first")
    series = _series(cfg, rows)
    mixtures = list(dict.fromkeys(s.mixture for s in series))
    fits_path, md_path = layout.fit("data_law"), layout.report
    outputs = _outputs(layout)
    min_points, fit_opts = _options(cfg)
    digest = _digest(cfg, layout, series, all_rows)

    eval_sets = sorted({r.eval_set for r in rows},
                       key=lambda e: (cfg.eval_sets.index(e) if e in cfg.eval_sets else len(cfg.eval_sets), e))

    # Fits use the rows at the end of a schedule (schedule_complete) when the table says which those are.
    fit_rows, complete_note = (complete_rows(rows) if cfg.report.schedule_complete_only else
                               (rows, "report.schedule_complete_only: false, every evaluation is used"))
    # (label, eval_set) -> budgets and losses of every seed (finite loss, D > 0; per run and budget the last row)
    by_series = {(s.mixture, s.preset): s for s in series}
    points: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    dropped: dict[tuple[str, str], int] = defaultdict(int)  # non-finite losses at D > 0
    n_zero = 0  # evaluations before training (D = 0): shown nowhere on a log axis, not fitted
    raw: dict[tuple[str, str], dict[tuple[str, int], float]] = defaultdict(dict)
    for r in fit_rows:
        key = (by_series[(r.mixture, r.preset)].label, r.eval_set)
        if r.tokens == 0:
            n_zero += 1
        elif math.isfinite(r.loss) and r.loss > 0:
            raw[key][(r.run, r.tokens)] = r.loss
        else:
            dropped[key] += 1
    for key, d in raw.items():
        pts = sorted((tok, loss) for (_, tok), loss in d.items())
        points[key] = (np.array([p[0] for p in pts], dtype=np.float64), np.array([p[1] for p in pts]))
    # Mean and standard deviation over seeds (runs) at each budget: what the plots and the final table show.
    means: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for key, (D, L) in points.items():
        ud = np.unique(D)
        means[key] = (ud, np.array([L[D == d].mean() for d in ud]),
                      np.array([L[D == d].std(ddof=1) if (D == d).sum() > 1 else 0.0 for d in ud]))

    # Fits
    fits: dict[tuple[str, str], DataLawFit] = {}
    fit_records, skipped = [], []
    groups = [(s, es) for s in series for es in eval_sets]
    prog = Progress("data-law fits", total=len(groups), unit="fits")
    for s, es in groups:
        key = (s.label, es)
        D, L = points.get(key, (np.zeros(0), np.zeros(0)))
        group = {"mixture": s.mixture, "preset": s.preset, "eval_set": es}
        if np.unique(D).size < min_points:
            skipped.append({**group, "reason": f"{np.unique(D).size} budget(s) < report.fit_min_points={min_points}"})
        else:
            try:
                f = fit_data_law(D, L, **fit_opts)
            except MegasynthError as e:
                skipped.append({**group, "reason": f"fit failed: {e}"})
            else:
                fits[key] = f
                fit_records.append({**group, **f.to_dict()})
        prog.update(1)
    elapsed = prog.close() if groups else 0.0
    logger.info("fitted %d data laws (%d skipped) in %.1fs", len(fits), len(skipped), elapsed)
    write_json(fits_path, {"law": DataLaw.name, "formula": DataLaw.formula,
                           "method": {**fit_opts, "space": "log L", "parameterisation":
                                      "E=exp(e), B=exp(b)*D_ref^beta, D_ref=geomean(D)",
                                      "optimizer": "scipy.optimize.least_squares (trf), multi-start",
                                      "ci": "percentile bootstrap over points",
                                      "source": "Hoffmann et al. 2022 eq. 2 at fixed N; Muennighoff et al. 2023"},
                           "fits": fit_records, "skipped": skipped})
    mark_done(fits_path, {"inputs_sha256": digest, "fits": len(fit_records), "skipped": len(skipped)})

    # Final losses at the largest budget every series reached (per eval set)
    labels = [s.label for s in series]
    final: dict[tuple[str, str], float] = {}
    final_tokens: dict[str, int | None] = {}
    for es in eval_sets:
        sets = [set(means[(lab, es)][0].astype(np.int64).tolist()) for lab in labels if (lab, es) in means]
        common = set.intersection(*sets) if sets else set()
        final_tokens[es] = max(common) if common else None
        for lab in labels:
            if (lab, es) not in means:
                continue
            D, L, _ = means[(lab, es)]
            idx = int(np.flatnonzero(D == final_tokens[es])[0]) if common else len(D) - 1
            final[(lab, es)] = float(L[idx])

    baseline = natural_baseline(cfg, mixtures)
    base_labels = {s.preset: s.label for s in series if s.mixture == baseline}
    title = f"{cfg.name}: held-out loss vs training tokens"
    from megasynth.analysis.plots import plot_final_loss, plot_loss_vs_tokens  # matplotlib only here

    plot_loss_vs_tokens(layout.report_file(LOSS_PLOT), labels, eval_sets, {k: v[:2] for k, v in means.items()},
                        {k: f.predict for k, f in fits.items()}, title, spread={k: v[2] for k, v in means.items()})
    common = {final_tokens[es] for es in eval_sets}
    at = (f" at D = {_fmt_tokens(common.pop())} tokens" if len(common) == 1 and None not in common else "")
    plot_final_loss(layout.report_file(BAR_PLOT), labels, eval_sets, final, f"{cfg.name}: final held-out loss{at}")

    # Markdown
    md: list[str] = [f"# megasynth report — {cfg.name}", ""]
    presets = sorted({r.preset for r in rows})
    md += [f"Study `{cfg.name}` (`{cfg.study_dir}`): {len(series)} trained model(s), preset(s) "
           f"{', '.join(f'`{p}`' for p in presets)}, eval sets {', '.join(f'`{e}`' for e in eval_sets)}. "
           "Losses are held-out cross-entropy in nats per token; D is consumed training tokens.", ""]

    md += ["## Mixtures", ""]
    info = _mixture_info(cfg, layout, mixtures)
    natural = set(cfg.natural_sources)
    mrows = []
    synth_ratio = {r.mixture: r.synthetic_ratio for r in rows}
    for name in mixtures:
        m = info[name]
        req = ", ".join(f"{src} {'(natural)' if src in natural else '(synthetic)'} {r:.0%}"
                        for src, r in m["sources"].items() if r > 0)
        real = ", ".join(f"{src} {r:.1%}" for src, r in (m["realised_share"] or {}).items()) or "n/a"
        notes = [f"{src} repeated {e:.2f} epochs" for src, e in m["epochs"].items() if e > 1.0]
        notes += m["warnings"]
        if not m["in_config"]:
            notes.append("not in the study file")
        if not m["has_file"]:
            notes.append("no mixtures file")
        ep = ", ".join(f"{src} {e:.2f}" for src, e in m["epochs"].items()) or "n/a"
        mrows.append([name + (" (baseline)" if name == baseline else ""), req or "n/a", real,
                      f"{synth_ratio.get(name, float('nan')):.0%}", ep, "; ".join(notes)])
    md += _table(["mixture", "requested sources", "realised share", "synthetic", "epochs", "notes"], mrows,
                 ["l", "l", "l", "r", "l", "l"])
    md.append("")

    md += ["## Final held-out loss", ""]
    budget_desc = "; ".join(f"`{es}`: D = {_fmt_tokens(final_tokens[es])} tokens" if final_tokens[es] is not None
                            else f"`{es}`: no common budget, each run's last evaluation" for es in eval_sets)
    n_seeds = len({r.seed for r in rows})
    md += [f"At the largest budget all runs reached ({budget_desc})"
           + (f", mean over {n_seeds} seeds" if n_seeds > 1 else "") + ". Best per eval set in **bold**. "
           + (f"Δ = loss − loss of the all-natural mixture `{baseline}` (negative = better than natural)."
              if baseline else "No all-natural mixture in the results: no Δ column.")
           + (" Loss in nats per token; bpb = bits per UTF-8 byte of the same evaluation (Σ nats / (ln 2 · bytes), "
              "independent of the tokenizer)." if any(r.metric == "bpb" for r in all_rows) else ""), ""]
    # Bits per byte of the same evaluations (tokenizer-independent), beside each loss column.
    bpb: dict[tuple[str, str], float] = {}
    for r in metric_rows(all_rows, "bpb"):
        lab = by_series.get((r.mixture, r.preset))
        if lab is not None and r.eval_set in final_tokens and r.tokens == final_tokens[r.eval_set]:
            bpb[(lab.label, r.eval_set)] = r.loss
        elif lab is not None and final_tokens.get(r.eval_set) is None:
            bpb[(lab.label, r.eval_set)] = r.loss  # no common budget: the run's last evaluation (rows are sorted)
    has_bpb = bool(bpb)
    header = ["mixture"]
    for es in eval_sets:
        header += [es] + ([f"Δ {es}"] if baseline else []) + ([f"{es} bpb"] if has_bpb else [])
    if len(eval_sets) > 1:
        header += ["mean"] + (["Δ mean"] if baseline else [])
    best = {es: min((final[(lab, es)] for lab in labels if (lab, es) in final), default=float("nan"))
            for es in eval_sets}
    frows = []
    for s in series:
        base = base_labels.get(s.preset)
        row, vals, base_vals = [s.label], [], []
        for es in eval_sets:
            v = final.get((s.label, es), float("nan"))
            b = final.get((base, es), float("nan")) if base else float("nan")
            vals.append(v)
            base_vals.append(b)
            cell = _fmt(v)
            row.append(f"**{cell}**" if math.isfinite(v) and v == best[es] else cell)
            if baseline:
                row.append("baseline" if s.label == base else _signed(v - b))
            if has_bpb:
                row.append(_fmt(bpb.get((s.label, es), float("nan"))))
        if len(eval_sets) > 1:
            mean, bmean = float(np.mean(vals)), float(np.mean(base_vals))
            row.append(_fmt(mean))
            if baseline:
                row.append("baseline" if s.label == base else _signed(mean - bmean))
        frows.append(row)
    md += _table(header, frows)
    md += ["", f"![final loss]({BAR_PLOT})", ""]

    md += ["## Data law L(D) = E + B·D^(−β)", ""]
    level = f"{fit_opts['ci_level']:.0%}"
    objective = f"Huber (δ = {fit_opts['delta']:g})" if fit_opts["loss"] == "huber" else "least squares"
    md += [f"Fitted per mixture, preset and eval set on the budgets with D > 0, every seed's point ({complete_note}; "
           f"Hoffmann et al. 2022 eq. 2 at fixed N; "
           f"Muennighoff et al. 2023): {objective} "
           f"on log L with E ≥ 0 and 0 ≤ β ≤ 3, multi-start trust-region least squares; [{level} CI] = "
           f"percentile bootstrap over points ({fit_opts['n_bootstrap']} resamples, seed {fit_opts['seed']}; "
           "resamples with fewer than 3 distinct budgets are dropped). "
           "RMSE in nats. With few budgets over a narrow range, E and β are weakly identified: read the CIs.", ""]
    if fits:
        trows = []
        for s in series:
            for es in eval_sets:
                f = fits.get((s.label, es))
                if f is None:
                    continue
                note = ", ".join(f"{p} at bound" for p in f.at_bound)
                if f.n_bootstrap_ok < 0.9 * f.n_bootstrap:
                    note = "; ".join(x for x in (note, f"{f.n_bootstrap_ok}/{f.n_bootstrap} resamples usable") if x)
                trows.append([s.label, es, str(f.n_points),
                              f"{_fmt_tokens(f.x_range[0])}–{_fmt_tokens(f.x_range[1])}",
                              f"{_fmt(f.E)} [{_fmt(f.ci['E'][0])}, {_fmt(f.ci['E'][1])}]",
                              f"{_fmt(f.B, '.3g')} [{_fmt(f.ci['B'][0], '.3g')}, {_fmt(f.ci['B'][1], '.3g')}]",
                              f"{_fmt(f.beta)} [{_fmt(f.ci['beta'][0])}, {_fmt(f.ci['beta'][1])}]",
                              _fmt(f.rmse, ".4f"), note])
        md += _table(["mixture", "eval set", "points", "D range", f"E [{level} CI]", f"B [{level} CI]",
                      f"β [{level} CI]", "RMSE", "notes"], trows,
                     ["l", "l", "r", "r", "r", "r", "r", "r", "l"])
    else:
        md.append("No group had enough budgets to fit.")
    if skipped:
        md += ["", "Not fitted:", ""]
        md += [f"- `{x['mixture']}` ({x['preset']}) on `{x['eval_set']}`: {x['reason']}" for x in skipped]
    md += ["", f"![loss vs tokens]({LOSS_PLOT})", "",
           "Solid: measured held-out loss at each fitted budget (mean over seeds, error bars: standard deviation over "
           "seeds); dashed: fitted data law over the fitted range.", ""]

    from megasynth.analysis.report_sections import extra_sections

    extra_md, extra_files = extra_sections(fit_rows, layout, baseline,
                                           n_bootstrap=fit_opts["n_bootstrap"], seed=cfg.seed,
                                           ci_level=fit_opts["ci_level"])
    md += extra_md

    from megasynth.analysis.report_evaluation import collapse_section, downstream_section, unigram_section

    triples = [(x.mixture, x.preset, x.label) for x in series]
    down_md, down_files = downstream_section(all_rows, triples, layout, cfg.name)
    uni_md, uni_files, uni = unigram_section(cfg, layout, rows, triples)
    col_md, col_files = collapse_section(
        cfg, layout, rows, {(x.mixture, x.preset, es): fits[(x.label, es)] for x in series for es in eval_sets
                            if (x.label, es) in fits},
        baseline, uni, ci_level=fit_opts["ci_level"], seed=cfg.seed)
    md += down_md + uni_md + col_md
    extra_files = extra_files + down_files + uni_files + col_files

    from megasynth.analysis.cpt_laws import cpt_section

    cpt_rows = (complete_rows(all_rows)[0] if cfg.report.schedule_complete_only else all_rows)
    if cfg.base is not None or cfg.train.init_from is not None:  # continued training (SynthLLM's experiment)
        cpt_md, cpt_files = cpt_section(cpt_rows, layout, plateau_gain=cfg.report.plateau_gain,
                                        n_bootstrap=fit_opts["n_bootstrap"], ci_level=fit_opts["ci_level"],
                                        seed=cfg.seed, study=cfg.name, loss=fit_opts["loss"], delta=fit_opts["delta"])
        md += cpt_md
        extra_files = extra_files + cpt_files
    from megasynth.analysis.synthllm_levels import level_section

    lvl_md, lvl_files = level_section(cpt_rows, layout, cfg.eval_sets)

    from megasynth.generate.synthllm.quality import report_section as synthllm_section

    md += synthllm_section(cfg, layout)  # SynthLLM diversity per level (empty unless the source is generated)
    md += lvl_md  # runs trained on one level alone, beside that level's diversity
    extra_files = extra_files + lvl_files

    notes = [f"- `{lab}` on `{es}`: {n} evaluation(s) with a non-finite loss (diverged?) left out"
             for (lab, es), n in sorted(dropped.items())]
    if n_zero:
        notes.append(f"- {n_zero} evaluation(s) at D = 0 (before training) are not plotted or fitted.")
    if notes:
        md += ["## Notes", "", *notes, ""]
    md += [f"Inputs: `{layout.results.name}`, `mixtures/*.json`. Fits: `fits/{fits_path.name}`.", ""]

    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    mark_done(md_path, {"inputs_sha256": digest, "fits": len(fit_records), "skipped": len(skipped),
                        "outputs": [str(p.relative_to(layout.root)) for p in outputs + extra_files]})
    logger.info("wrote %s (+ %s, %s) and %s", md_path, LOSS_PLOT, BAR_PLOT, fits_path)
