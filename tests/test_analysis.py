"""Analysis: data-law fit recovers a known law, bad input errors, results.csv collection, report."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest

from megasynth.analysis import fit_data_law, read_results, run_report
from megasynth.analysis.laws import DataLawFit
from megasynth.config import StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, marker_path

TRUE = {"E": 1.8, "B": 400.0, "beta": 0.3}


def _law(D, E=TRUE["E"], B=TRUE["B"], beta=TRUE["beta"]):
    return E + B * np.asarray(D, dtype=np.float64) ** -beta


# ------------------------------------------------------------------------------------------ fit
def test_fit_recovers_known_law_and_ci_covers_truth():
    rng = np.random.default_rng(7)
    D = np.geomspace(1e6, 1e9, 12)
    L = _law(D) * np.exp(rng.normal(0.0, 0.002, D.size))  # 0.2% multiplicative noise
    fit = fit_data_law(D, L, n_bootstrap=100, seed=3)
    assert fit.E == pytest.approx(TRUE["E"], rel=0.05)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit.B == pytest.approx(TRUE["B"], rel=0.3)
    for p, truth in TRUE.items():
        lo, hi = fit.ci[p]
        assert lo <= fit.params[p] <= hi, p
        assert lo <= truth <= hi, f"{p}: {truth} not in [{lo}, {hi}]"
    assert fit.n_points == 12 and fit.n_bootstrap_ok == 100 and fit.at_bound == []
    assert fit.rmse < 0.02 and fit.rmse_log < 0.005
    np.testing.assert_allclose(fit.predict(D), _law(D), rtol=0.01)
    assert fit.predict(1e7).shape == ()
    # Deterministic given the seed; serialisable and round-trips.
    again = fit_data_law(D, L, n_bootstrap=100, seed=3)
    assert again.ci == fit.ci
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["params"] == fit.params and d["law"] == "data" and d["n_points"] == 12
    assert DataLawFit.from_dict(d).predict(1e8) == pytest.approx(float(fit.predict(1e8)))


def test_fit_least_squares_option_and_noiseless_exact():
    D = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    fit = fit_data_law(D, _law(D), loss="linear", n_bootstrap=0)
    assert fit.E == pytest.approx(TRUE["E"], rel=1e-4)
    assert fit.beta == pytest.approx(TRUE["beta"], rel=1e-4)
    assert fit.B == pytest.approx(TRUE["B"], rel=1e-3)
    assert all(math.isnan(v) for v in fit.ci["E"])


@pytest.mark.parametrize("D, L, message", [
    ([1e6, 0.0, 1e8], [3.0, 2.5, 2.2], "D must be finite and > 0"),
    ([1e6, -5.0, 1e8], [3.0, 2.5, 2.2], "D[1]"),
    ([1e6, 1e7, 1e8], [3.0, float("nan"), 2.2], "L must be finite and > 0"),
    ([1e6, 1e7], [3.0, 2.5], "need at least 3 points"),
    ([1e6, 1e7, 1e8], [3.0, 2.5], "same number of points"),
    ([1e6, 1e6, 1e8], [3.0, 2.9, 2.2], "3 distinct D values"),
])
def test_fit_bad_input_names_the_problem(D, L, message):
    with pytest.raises(MegasynthError) as ei:
        fit_data_law(D, L, n_bootstrap=0)
    assert message in str(ei.value) and "\n" not in str(ei.value)


def test_fit_bad_options():
    D, L = [1e6, 1e7, 1e8], [3.0, 2.5, 2.2]
    with pytest.raises(MegasynthError, match="n_bootstrap"):
        fit_data_law(D, L, n_bootstrap=-1)
    with pytest.raises(MegasynthError, match="ci_level"):
        fit_data_law(D, L, ci_level=1.5)
    with pytest.raises(MegasynthError, match="loss"):
        fit_data_law(D, L, loss="cauchy")


# ------------------------------------------------------------------------------------------ study dir
TOKENS_PER_STEP = 16 * 256


def _stage(name: str, cfg: StudyConfig, layout: StudyLayout) -> None:
    """Run a stage as the study runner does (skipped while its completion check holds)."""
    from megasynth.study.runner import run_stage

    run_stage(name, cfg, layout)


def _cfg(tmp_path) -> StudyConfig:
    cfg = StudyConfig.from_dict({
        "name": "unit", "study_dir": str(tmp_path / "study"),
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}],
                    "eval": [{"name": "wiki", "loader": "gensim_wiki"}, {"name": "lambada", "loader": "lambada"}]},
        "mixtures": [{"name": "natural", "sources": {"sotu": 1.0}},
                     {"name": "hq33", "sources": {"hq": 0.33, "sotu": 0.67}},
                     {"name": "qa33", "sources": {"qa": 0.33, "sotu": 0.67}}],
    })
    cfg.report.bootstrap = 30  # optional field read with getattr (keeps the test fast)
    return cfg


def _write_run(layout: StudyLayout, mixture: str, synthetic_ratio: float, losses: dict[str, list[float]],
               steps: list[int], finished: bool = True) -> None:
    run_dir = layout.run_dir(mixture)
    run_dir.mkdir(parents=True)
    lines = []
    for i, step in enumerate(steps):
        for es, ls in losses.items():
            lines.append(json.dumps({"step": step, "consumed_tokens": step * TOKENS_PER_STEP, "eval_set": es,
                                     "loss": ls[i]}))
    (run_dir / "evals.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({
            "mixture": mixture, "preset": "llama3-tiny", "n_params": 1_234_567, "n_params_non_embedding": 234_567,
            "vocab_size": 8192, "train_tokens": steps[-1] * TOKENS_PER_STEP, "final_train_loss": 4.0,
            "tokens_per_s": 1000.0, "wall_s": 60.0, "synthetic_ratio": synthetic_ratio}))


def test_run_evaluate_collects_finished_runs(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    layout = StudyLayout.of(cfg.study_dir)
    _write_run(layout, "natural", 0.0, {"wiki": [5.0, 4.5], "lambada": [6.0, 5.5]}, [10, 20])
    _write_run(layout, "hq33", 0.33, {"wiki": [4.9, 4.4]}, [10, 20])
    with open(layout.run_dir("hq33") / "evals.jsonl", "a") as f:  # re-evaluation after a resume: last wins
        f.write(json.dumps({"step": 20, "consumed_tokens": 20 * TOKENS_PER_STEP, "eval_set": "wiki",
                            "loss": 4.25}) + "\n")
    _write_run(layout, "qa33", 0.33, {"wiki": [9.9]}, [10], finished=False)

    with caplog.at_level(logging.WARNING, logger="megasynth"):
        _stage("evaluate", cfg, layout)
    assert "run qa33 is not finished" in caplog.text

    with open(layout.results, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["run", "mixture", "preset", "n_params", "n_params_non_embedding", "tokens",
                       "synthetic_ratio", "eval_set", "loss", "synthetic_sources", "seed", "schedule",
                       "schedule_complete", "generator", "metric"]
    t1, t2 = str(10 * TOKENS_PER_STEP), str(20 * TOKENS_PER_STEP)
    common = ["llama3-tiny", "1234567", "234567"]
    run = ["1234", "cosine", "false"]  # the planned runs' seed and schedule; 20 of their 100 steps: not complete
    # evals.jsonl rows written before the metric field existed are loss rows
    assert rows[1:] == [
        ["hq33", "hq33", *common, t1, "0.33", "wiki", "4.9", "hq", *run, "", "loss"],
        ["hq33", "hq33", *common, t2, "0.33", "wiki", "4.25", "hq", *run, "", "loss"],
        ["natural", "natural", *common, t1, "0.0", "lambada", "6.0", "", *run, "", "loss"],
        ["natural", "natural", *common, t1, "0.0", "wiki", "5.0", "", *run, "", "loss"],
        ["natural", "natural", *common, t2, "0.0", "lambada", "5.5", "", *run, "", "loss"],
        ["natural", "natural", *common, t2, "0.0", "wiki", "4.5", "", *run, "", "loss"],
    ]
    marker = json.loads(marker_path(layout.results).read_text())
    assert marker["runs"] == ["natural", "hq33"] and marker["skipped_unfinished"] == ["qa33"]
    assert len(read_results(layout.results)) == 6

    # Rerun with unchanged inputs: skipped (file untouched); a run that finishes since: regenerated.
    mtime = layout.results.stat().st_mtime_ns
    _stage("evaluate", cfg, layout)
    assert layout.results.stat().st_mtime_ns == mtime
    (layout.run_dir("qa33") / "summary.json").write_text(
        (layout.run_dir("natural") / "summary.json").read_text().replace('"natural"', '"qa33"'))
    _stage("evaluate", cfg, layout)
    assert [r.run for r in read_results(layout.results)].count("qa33") == 1


def test_run_evaluate_bad_summary_names_file_and_field(tmp_path):
    cfg = _cfg(tmp_path)
    layout = StudyLayout.of(cfg.study_dir)
    _write_run(layout, "natural", 0.0, {"wiki": [5.0]}, [10])
    (layout.run_dir("natural") / "evals.jsonl").write_text('{"step": 1, "consumed_tokens": "x", '
                                                            '"eval_set": "wiki", "loss": 3.0}\n')
    with pytest.raises(MegasynthError, match=r"evals.jsonl:1: consumed_tokens: expected an integer"):
        _stage("evaluate", cfg, layout)
    (layout.run_dir("natural") / "summary.json").write_text('{"mixture": "natural"}')
    with pytest.raises(MegasynthError, match=r"summary.json: missing key 'preset'"):
        _stage("evaluate", cfg, layout)


def test_run_report_writes_fits_markdown_and_pngs(tmp_path):
    cfg = _cfg(tmp_path)
    layout = StudyLayout.of(cfg.study_dir)
    steps = [0, 20, 40, 60, 80, 100, 120]
    D = np.array(steps[1:]) * TOKENS_PER_STEP
    nat = {"wiki": [10.0, *_law(D, E=3.0, B=60.0)], "lambada": [10.0, *_law(D, E=3.5, B=60.0)]}
    hq = {"wiki": [10.0, *_law(D, E=2.9, B=60.0)], "lambada": [10.0, *_law(D, E=3.6, B=60.0)]}
    _write_run(layout, "natural", 0.0, nat, steps)
    _write_run(layout, "hq33", 0.33, hq, steps)
    _write_run(layout, "qa33", 0.33, {"wiki": [10.0, 6.0, 5.5], "lambada": [10.0, 6.5, 6.0]}, steps[:3])
    layout.mixture("hq33").parent.mkdir(parents=True)
    layout.mixture("hq33").write_text(json.dumps({
        "name": "hq33", "sources": {"hq": 0.33, "sotu": 0.67}, "blend": [], "budget_tokens": 1,
        "source_tokens": {"hq": 10, "sotu": 100}, "requested_share": {"hq": 0.33, "sotu": 0.67},
        "realised_share": {"hq": 0.331, "sotu": 0.669}, "epochs": {"hq": 4.5, "sotu": 0.8},
        "warnings": ["hq: small corpus"]}))
    _stage("evaluate", cfg, layout)
    _stage("report", cfg, layout)  # by default only each run's last evaluation (schedule_complete): 1 point each
    fits = json.loads((layout.fits_dir / "data_law.json").read_text())
    assert fits["fits"] == [] and "1 budget(s) < report.fit_min_points=3" in fits["skipped"][0]["reason"]
    cfg.report.schedule_complete_only = False  # every evaluation, as a cosine study's report did before
    _stage("report", cfg, layout)

    fits = json.loads((layout.fits_dir / "data_law.json").read_text())
    assert fits["law"] == "data"
    got = {(f["mixture"], f["eval_set"]): f for f in fits["fits"]}
    assert set(got) == {("natural", "wiki"), ("natural", "lambada"), ("hq33", "wiki"), ("hq33", "lambada")}
    f = got[("natural", "wiki")]
    assert f["n_points"] == 6 and f["params"]["E"] == pytest.approx(3.0, rel=1e-3)
    assert f["params"]["beta"] == pytest.approx(0.3, rel=1e-3) and set(f["ci"]) == {"E", "B", "beta"}
    assert {(s["mixture"], s["eval_set"]) for s in fits["skipped"]} == {("qa33", "wiki"), ("qa33", "lambada")}
    assert "2 budget(s) < report.fit_min_points=3" in fits["skipped"][0]["reason"]

    md = (layout.report_dir / "report.md").read_text()
    assert "# megasynth report — unit" in md
    # qa33 stopped at D[1] tokens: the final-loss table compares every run at that largest common budget.
    assert f"D = {D[1] / 1e3:.3g}k tokens" in md
    v = {k: _law(D[1], E=e, B=60.0) for k, e in [("nw", 3.0), ("hw", 2.9), ("nl", 3.5), ("hl", 3.6)]}
    assert f"**{v['hw']:.3f}**" in md and f"{v['nw']:.3f}" in md and f"**{v['nl']:.3f}**" in md
    assert "−0.100" in md and "+0.100" in md  # Δ vs natural on wiki / lambada
    assert "natural (baseline)" in md and "hq 4.50 epochs" not in md and "hq repeated 4.50 epochs" in md
    assert "hq: small corpus" in md and "hq 33.1%" in md
    assert f"{f['params']['E']:.3f} [" in md  # fit table
    assert "`qa33` (llama3-tiny) on `wiki`: 2 budget(s)" in md
    assert "6 evaluation(s) at D = 0 (before training)" in md
    # Extra sections: efficiency vs the natural baseline (one model size: no Chinchilla, no ratio grid).
    assert "## Compute efficiency vs `natural`" in md and "](speedup.png)" in md
    assert "## Chinchilla law" not in md and "## Optimal synthetic ratio" not in md
    eff = json.loads((layout.fits_dir / "efficiency.json").read_text())
    assert {g["mixture"] for g in eff["groups"]} == {"hq33"}

    from matplotlib.image import imread

    for name in ("loss_vs_tokens.png", "final_loss.png"):
        path = layout.report_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert f"]({name})" in md

    # Rerun with the same inputs skips; changed config (report section) regenerates.
    mtime = (layout.report_dir / "report.md").stat().st_mtime_ns
    _stage("report", cfg, layout)
    assert (layout.report_dir / "report.md").stat().st_mtime_ns == mtime
    cfg.report.fit_min_points = 7
    _stage("report", cfg, layout)
    fits = json.loads((layout.fits_dir / "data_law.json").read_text())
    assert fits["fits"] == [] and len(fits["skipped"]) == 6
    assert "No group had enough budgets to fit." in (layout.report_dir / "report.md").read_text()


def test_run_report_without_results_is_an_error(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(MegasynthError, match="results.csv: file not found"):
        run_report(cfg, StudyLayout.of(cfg.study_dir))


def test_report_compares_generators_and_shows_decontamination(tmp_path):
    """Two generators at the same ratio: their final losses, data-law floors and speed-ups side by side; and the
    decontamination counts."""
    from megasynth.analysis.report_sections import extra_sections
    from megasynth.analysis.results import ResultRow

    layout = StudyLayout.of(tmp_path)
    rows = []
    for mixture, gen, src, ratio, E in (("natural", "", "", 0.0, 3.0), ("hq33-a", "a", "hq@a", 0.33, 2.8),
                                         ("hq33-b", "b", "hq@b", 0.33, 2.9)):
        for D in (1e5, 2e5, 4e5, 8e5, 1.6e6):
            rows.append(ResultRow(run=mixture, mixture=mixture, preset="llama3-tiny", n_params=10_000_000,
                                  n_params_non_embedding=2_000_000, tokens=int(D), synthetic_ratio=ratio,
                                  eval_set="wiki", loss=E + 400.0 * D ** -0.5, synthetic_sources=src, generator=gen))
    (tmp_path / "decontamination.json").write_text(json.dumps({
        "method": "word 13-grams", "documents_checked": 10, "documents_removed": 1,
        "sources": {"sotu": {"kind": "natural", "eval_sets": {"wiki": {
            "documents_checked": 10, "documents_removed": 1, "ngrams_matched": 3,
            "examples": ["the union is strong and the state of the union"]}}}}}))
    md, files = extra_sections(rows, layout, "natural", n_bootstrap=20, seed=0, ci_level=0.9)
    text = "\n".join(md)
    assert "## Generators" in text and layout.fit("generators") in files
    lines = [l for l in md if l.startswith("| hq |")]
    assert [l.split(" | ")[3] for l in lines] == ["a", "b"]  # same style, same ratio, one row per generator
    for line, E in zip(lines, (2.8, 2.9)):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == "33%" and float(cells[6]) == pytest.approx(E + 400.0 * 1.6e6 ** -0.5, abs=1e-3)
        assert cells[7].startswith(f"{E:.3f}") and "[" in cells[8]  # E with its CI; speed-up with its CI
    g = json.loads(layout.fit("generators").read_text())
    assert [x["generator"] for x in g["generators"]] == ["a", "b"]
    assert "## Decontamination" in text and "| sotu | natural | wiki | 10 | 1 | 3 |" in text


def test_final_values_mean_over_seeds_at_the_largest_budget():
    """The downstream table and the collapse checks take a (mixture, preset, eval set)'s value at its largest budget
    as the mean over its runs (seeds), one value per run, like the held-out table; smaller budgets do not count."""
    from megasynth.analysis.report_evaluation import final_values
    from megasynth.analysis.results import ResultRow

    def row(run, seed, tokens, value, metric="acc"):
        return ResultRow(run=run, mixture="hq33", preset="llama3-tiny", n_params=10, n_params_non_embedding=5,
                         tokens=tokens, synthetic_ratio=0.33, eval_set="piqa", loss=value, seed=seed, metric=metric)

    rows = [row("s1_big", 1, 400, 0.50), row("s1_small", 1, 200, 0.90), row("s2_big", 2, 400, 0.60),
            row("s2_big", 2, 400, 0.70),  # the run's last row at that budget counts, once
            row("s3_big", 3, 400, 9.0, metric="bpb")]
    assert final_values(rows, "acc") == {("hq33", "llama3-tiny", "piqa"): (400, pytest.approx(0.60))}
    assert final_values(rows, "bpb") == {("hq33", "llama3-tiny", "piqa"): (400, 9.0)}
