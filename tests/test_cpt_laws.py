"""The continued-training analysis (``megasynth.analysis.cpt_laws``): on a table of points drawn from a known
rectified law L(D) = B/(D_l + D^β) + E with multiplicative noise, the rectified fit recovers the parameters, it
extrapolates to the held-out largest budget better than the plain power law, the plateau is where the predicted gain
per doubling crosses the threshold, and the report section writes ``fits/cpt_laws.json`` and its plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megasynth.analysis.cpt_laws import analyse_group, cpt_section, doubling_gain, plateau_tokens
from megasynth.analysis.results import ResultRow
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, read_json

TRUE = {"E": 0.25, "B": 1255.0, "D_l": 1930.0, "beta": 0.6}  # flat below ~3e5 tokens, like a pretrained model


def rectified(D, p=TRUE):
    return p["B"] / (p["D_l"] + np.asarray(D, float) ** p["beta"]) + p["E"]


def _table(seed=0, noise=0.002):
    rng = np.random.default_rng(seed)
    budgets = np.geomspace(2e4, 2e7, 8)
    D = np.repeat(budgets, 2)  # two seeds per budget
    return D, rectified(D) * np.exp(rng.normal(0, noise, D.size))


def test_rectified_law_recovered_and_extrapolates_better_than_power_law():
    D, L = _table()
    g = analyse_group(D, L, plateau_gain=0.01, n_bootstrap=40, seed=1)
    rect, power = g["laws"]["rectified"], g["laws"]["power"]
    p = rect["fit"]["params"]
    assert p["E"] == pytest.approx(TRUE["E"], abs=0.03)
    assert p["beta"] == pytest.approx(TRUE["beta"], rel=0.2)
    assert p["D_l"] ** (1 / p["beta"]) == pytest.approx(TRUE["D_l"] ** (1 / TRUE["beta"]), rel=0.5)  # the bend
    lo, hi = rect["best"]["ci"]
    assert lo <= p["E"] <= hi and hi - lo < 0.1
    # held out: the largest budget, predicted from the seven smaller ones
    assert rect["holdout"]["D"] == max(D) and rect["holdout"]["observed"] == pytest.approx(rectified(max(D)), rel=0.01)
    assert rect["holdout"]["rel_error"] < 0.02
    assert rect["holdout"]["abs_error"] < 0.2 * power["holdout"]["abs_error"]
    # the power law cannot bend flat at small D: it fits worse
    assert rect["fit"]["rmse"] < power["fit"]["rmse"]


def test_plateau_is_where_the_gain_per_doubling_crosses_the_threshold():
    for tau in (0.02, 0.005):
        d = plateau_tokens("rectified", TRUE, tau, (2e4, 2e7))
        assert float(doubling_gain("rectified", TRUE, d)) == pytest.approx(tau, rel=1e-6)
        grid = np.geomspace(d, 1e3 * d, 50)
        assert np.all(doubling_gain("rectified", TRUE, grid) <= tau * (1 + 1e-9))  # and stays below
    power = {"E": 0.2, "B": 5.0, "beta": 0.3}
    d = plateau_tokens("data", power, 0.01, (1e4, 1e6))
    assert float(doubling_gain("data", power, d)) == pytest.approx(0.01, rel=1e-9)
    assert plateau_tokens("rectified", TRUE, 10.0, (2e4, 2e7)) is None  # no doubling ever gains 10
    assert plateau_tokens("rectified", TRUE, 1e-12, (2e4, 2e7)) == math.inf  # beyond the search range


def test_bad_input():
    D, L = _table()
    with pytest.raises(MegasynthError, match=r"^report\.plateau_gain: must be > 0"):
        analyse_group(D, L, plateau_gain=0.0)
    with pytest.raises(MegasynthError, match="at least 3 distinct budgets"):
        analyse_group([1e5, 1e5, 2e5], [0.5, 0.5, 0.4], plateau_gain=0.01)


def test_report_section_writes_fits_and_plot(tmp_path):
    layout = StudyLayout.of(tmp_path)
    D, L = _table(seed=3)
    rows = [ResultRow(run=f"llama3-tiny_synthllm_s{i % 2}_{int(d)}", mixture="synthllm", preset="llama3-tiny",
                      n_params=1, n_params_non_embedding=1, tokens=int(d), synthetic_ratio=1.0, eval_set="gsm8k_bpb",
                      loss=float(x), metric="bpb", schedule_complete=True) for i, (d, x) in enumerate(zip(D, L))]
    rows.append(ResultRow(run="natural", mixture="natural", preset="llama3-tiny", n_params=1, n_params_non_embedding=1,
                          tokens=1000, synthetic_ratio=0.0, eval_set="gsm8k_bpb", loss=1.0, metric="bpb"))
    md, files = cpt_section(rows, layout, plateau_gain=0.01, n_bootstrap=20, ci_level=0.9, seed=0, study="t")
    rec = read_json(layout.fit("cpt_laws"))
    assert [(g["mixture"], g["eval_set"], g["metric"]) for g in rec["groups"]] == [("synthllm", "gsm8k_bpb", "bpb")]
    assert rec["skipped"] == []  # the one-budget natural run is no group
    g = rec["groups"][0]
    assert set(g["laws"]) == {"rectified", "power"} and len(g["budgets"]) == 8
    assert layout.report_file("cpt_laws.png").stat().st_size > 1000 and len(files) == 2
    text = "\n".join(md)
    assert "rectified law extrapolates better" in text and "| synthllm (llama3-tiny) | gsm8k_bpb | bpb | 8 |" in text
    assert cpt_section(rows[-1:], layout, plateau_gain=0.01, n_bootstrap=0, ci_level=0.9, seed=0, study="t") == ([], [])
