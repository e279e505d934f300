"""Scaling-law fits (Chinchilla, rectified), extrapolation, mixture analyses and the fit/analyze CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from megasynth.analysis.chinchilla import (CHINCHILLA_GRID, HOFFMANN_PARAMS, compute_optimal, fit_chinchilla,
                                           huber_objective, naive_fit)
from megasynth.analysis.cli import main
from megasynth.analysis.laws import fit_rectified_law
from megasynth.analysis.fit_table import extrapolation_check, fit_table
from megasynth.analysis.mixtures import efficiency, efficiency_table, optimal_ratio
from megasynth.utils import MegasynthError

H = HOFFMANN_PARAMS
SMALL_GRID = CHINCHILLA_GRID[::62]  # 73 of the 4,500 starts


def _chin(N, D, p=H):
    return p["E"] + p["A"] * np.asarray(N, float) ** -p["alpha"] + p["B"] * np.asarray(D, float) ** -p["beta"]


def _grid_points(noise=0.0, seed=0, sizes=(3e7, 1e8, 3e8, 1e9, 3e9), budgets=np.geomspace(1e9, 1e11, 6)):
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(np.asarray(sizes), budgets, indexing="ij"))
    L = _chin(N, D) * np.exp(rng.normal(0.0, noise, N.size))
    runs = np.repeat([f"n{i}" for i in range(len(sizes))], len(budgets))
    return N, D, L, runs


# ------------------------------------------------------------------------------------------ chinchilla
def test_gradient_is_analytic_and_exact():
    N, D, L, _ = _grid_points(0.01)
    th = np.array([[6.0, 6.2, 0.4, 0.3, 0.25], [1.0, 20.0, -1.0, 1.5, 0.5]])
    f, g = huber_objective(th, np.log(N), np.log(D), np.log(L))
    eps = 1e-6
    for k in range(5):
        tp, tm = th.copy(), th.copy()
        tp[:, k] += eps
        tm[:, k] -= eps
        num = (huber_objective(tp, np.log(N), np.log(D), np.log(L))[0]
               - huber_objective(tm, np.log(N), np.log(D), np.log(L))[0]) / (2 * eps)
        np.testing.assert_allclose(g[:, k], num, rtol=1e-5, atol=1e-8)


def test_chinchilla_full_grid_recovers_hoffmann_params():
    N, D, L, _ = _grid_points(0.0)
    fit = fit_chinchilla(N, D, L, n_bootstrap=0)  # the published 4,500-start grid
    assert fit.n_starts == 4500 and fit.n_converged > 4000
    for p in ("E", "A", "B", "alpha", "beta"):
        assert fit.params[p] == pytest.approx(H[p], rel=2e-3), p
    assert fit.rmse < 1e-4
    # Compute-optimal allocation (Hoffmann et al. eq. 4) is consistent: 6 N D = C, and minimises L on the iso-FLOP.
    C = 1e22
    n_opt, d_opt = fit.compute_optimal(C)
    assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-9)
    ns = n_opt * np.geomspace(0.5, 2.0, 41)
    assert np.argmin(fit.predict(ns, C / (6 * ns))) == 20
    n_h, _ = compute_optimal(H, C)
    assert float(n_opt) == pytest.approx(float(n_h), rel=0.02)
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["compute_optimal"]["N_opt_exponent"] == pytest.approx(0.28 / 0.62, rel=5e-3)


def test_batched_lbfgs_equals_naive_scipy_loop():
    N, D, L, _ = _grid_points(0.003, seed=3, sizes=(1e7, 3e7, 1e8, 3e8, 1e9, 3e9, 1e10),
                              budgets=np.geomspace(1e9, 3e11, 7))
    grid = CHINCHILLA_GRID[::150]  # 30 starts: the naive loop (numerical gradients) is slow
    fit = fit_chinchilla(N, D, L, grid=grid, n_bootstrap=0)
    theta, obj, n_conv = naive_fit(N, D, L, grid=grid)
    assert n_conv > 0
    # Same optimum: never a worse objective than the naive loop, parameters equal to its tolerance.
    assert fit.objective <= obj * (1 + 1e-6)
    np.testing.assert_allclose(fit.theta, theta, rtol=2e-3, atol=2e-3)


def test_chinchilla_ci_covers_truth_resampling_runs():
    N, D, L, runs = _grid_points(0.005, seed=11, sizes=(1e7, 3e7, 1e8, 3e8, 1e9, 3e9, 1e10),
                                 budgets=np.geomspace(1e9, 3e11, 7))
    runs = [f"run{i}" for i in range(N.size)]  # one training run per (N, D) point
    fit = fit_chinchilla(N, D, L, grid=SMALL_GRID, n_bootstrap=60, groups=runs, seed=5)
    assert fit.n_bootstrap_ok >= 50
    for p in ("E", "alpha", "beta"):
        lo, hi = fit.ci[p]
        assert lo <= H[p] <= hi, f"{p}: {H[p]} not in [{lo}, {hi}]"
        assert lo <= fit.params[p] <= hi
    again = fit_chinchilla(N, D, L, grid=SMALL_GRID, n_bootstrap=60, groups=runs, seed=5)
    assert again.ci == fit.ci
    lo, hi = fit.compute_optimal_ci(1e21)["N_opt"]
    assert lo < float(fit.compute_optimal(1e21)[0]) < hi


@pytest.mark.parametrize("N, D, L, msg", [
    ([1e8, -1, 1e9, 2e9, 3e9], [1e9] * 5, [3.0] * 5, "N must be finite and > 0"),
    ([1e8, 2e8, 1e9, 2e9, 3e9], [1e9, 0, 1e9, 2e9, 1e9], [3.0] * 5, "D must be finite and > 0"),
    ([1e8, 2e8, 1e9, 2e9, 3e9], [1e9, 2e9, 1e9, 2e9, 1e9], [3.0, np.nan, 3, 3, 3], "L must be finite"),
    ([1e8, 2e8, 1e9, 2e9], [1e9, 2e9, 1e9, 2e9], [3.0] * 4, "need at least 5 points"),
    ([1e8] * 5, [1e9, 2e9, 3e9, 4e9, 5e9], [3.0] * 5, "2 distinct N"),
])
def test_chinchilla_bad_input(N, D, L, msg):
    with pytest.raises(MegasynthError) as ei:
        fit_chinchilla(N, D, L, n_bootstrap=0, grid=SMALL_GRID)
    assert msg in str(ei.value) and "\n" not in str(ei.value)


# ------------------------------------------------------------------------------------------ rectified law
def test_rectified_law_recovers_params_and_ci_covers_truth():
    T = {"E": 1.5, "B": 2000.0, "D_l": 300.0, "beta": 0.4}
    rng = np.random.default_rng(1)
    D = np.geomspace(1e6, 1e10, 14)
    L = (T["B"] / (T["D_l"] + D ** T["beta"]) + T["E"]) * np.exp(rng.normal(0, 0.002, D.size))
    fit = fit_rectified_law(D, L, n_bootstrap=60, seed=2)
    assert fit.params["E"] == pytest.approx(T["E"], rel=0.02)
    assert fit.params["beta"] == pytest.approx(T["beta"], abs=0.02)
    assert fit.params["D_l"] == pytest.approx(T["D_l"], rel=0.25)
    for p, v in T.items():
        assert fit.ci[p][0] <= v <= fit.ci[p][1], p
    with pytest.raises(MegasynthError, match="4 distinct D"):
        fit_rectified_law([1e6, 1e7, 1e8, 1e8], [3.0, 2.5, 2.2, 2.2], n_bootstrap=0)


def test_extrapolation_check_holds_out_largest_budget():
    D = np.geomspace(1e6, 1e9, 8)
    L = 1.8 + 400 * D ** -0.3
    ex = extrapolation_check("data", D, L)
    assert ex["cut"] == pytest.approx(D[-2]) and ex["n_fit"] == 7 and ex["n_held_out"] == 1
    assert ex["max_abs_rel_err"] < 1e-4
    # A law that bends (rectified data) extrapolates worse under the data law than the rectified law.
    Lr = 2000 / (1e4 + D ** 0.6) + 1.5
    assert extrapolation_check("rectified", D, Lr, cut=D[-3])["max_abs_rel_err"] < 1e-3
    assert extrapolation_check("data", D, Lr, cut=5e6)["skipped"].startswith("2 point(s)")


# ------------------------------------------------------------------------------------------ mixtures
def test_optimal_ratio_finds_quadratic_minimum_with_interval():
    rng = np.random.default_rng(0)
    r = np.repeat([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0], 2)
    L = 3.0 + 0.4 * (r - 0.3) ** 2 + rng.normal(0, 0.002, r.size)
    res = optimal_ratio(r, L, n_bootstrap=100, seed=1)
    assert res["opt_ratio"] == pytest.approx(0.3, abs=0.03)
    assert res["ci"][0] <= 0.3 <= res["ci"][1] and res["interior"]
    edge = optimal_ratio(r, 3.0 + 0.2 * r, n_bootstrap=0)
    assert edge["opt_ratio"] == 0.0 and not edge["interior"]
    with pytest.raises(MegasynthError, match="3 distinct ratios"):
        optimal_ratio([0.0, 0.5, 0.5], [3.0, 2.9, 2.9])


def test_efficiency_recovers_known_speedup():
    D = np.geomspace(1e7, 1e9, 6)
    base = 2.0 + 300 * D ** -0.3
    mix = 2.0 + 300 * (3.0 * D) ** -0.3  # the mixture's tokens are worth 3x
    res = efficiency(D, base, D, mix, n_bootstrap=20, n_params=1e8)
    for row in res["budgets"]:
        assert row["speedup"] == pytest.approx(3.0, rel=1e-3)
        assert row["flops"] / row["flops_mix"] == pytest.approx(3.0, rel=1e-3)
    assert res["speedup_ci_at_max"][0] <= 3.0 + 1e-6 and res["speedup_geomean"] == pytest.approx(3.0, rel=1e-3)
    interp = efficiency(D, base, D, mix, method="interp")
    assert interp["budgets"][-1]["speedup"] == pytest.approx(3.0, rel=0.05)
    df = pd.DataFrame({"mixture": ["natural"] * 6 + ["hq33"] * 6, "tokens": np.r_[D, D], "loss": np.r_[base, mix],
                       "n_params": 1e8, "eval_set": "wiki"})
    tab = efficiency_table(df, n_bootstrap=0)
    assert tab["groups"][0]["mixture"] == "hq33" and tab["groups"][0]["speedup_at_max"] == pytest.approx(3.0, rel=1e-3)


# ------------------------------------------------------------------------------------------ table + CLI
def _table(tmp_path, fmt="csv"):
    N, D, L, runs = _grid_points(0.002, seed=4)
    df = pd.DataFrame({"run": runs, "n_params": N, "tokens": D, "flops": 6 * N * D, "loss": L, "mixture": "natural"})
    path = tmp_path / f"results.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    return df, path


def test_cli_fit_chinchilla_parquet_and_flops(tmp_path, capsys):
    _, path = _table(tmp_path, "parquet")
    out = tmp_path / "out" / "chin.json"
    rc = main(["fit", str(path), "--law", "chinchilla", "--n-col", "n_params", "--tokens-from-flops", "flops",
               "--run-col", "run", "--bootstrap", "20", "--grid", "reduced", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    f = res["fits"][0]
    assert f["params"]["alpha"] == pytest.approx(0.34, rel=0.05) and f["n_bootstrap_ok"] >= 15
    assert f["extrapolation"]["n_held_out"] == 5 and f["extrapolation"]["mean_abs_rel_err"] < 0.01
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "alpha=" in capsys.readouterr().out


def test_cli_fit_data_law_per_group(tmp_path):
    _, path = _table(tmp_path)
    rc = main(["fit", str(path), "--law", "data", "--group-by", "n_params", "--bootstrap", "10"])
    assert rc == 0
    res = json.loads((tmp_path / "fits" / "data_law_fit.json").read_text())
    assert len(res["fits"]) == 5 and res["settings"]["group_by"] == ["n_params"]
    assert all(f["residuals"]["max_abs_log"] < 0.01 for f in res["fits"])


def test_cli_fit_uses_the_rows_of_one_metric(tmp_path, capsys):
    """A results table with a ``metric`` column: fits take the ``loss`` rows unless ``--metric`` says otherwise."""
    df, path = _table(tmp_path)
    base = ["fit", "--law", "data", "--group-by", "n_params", "--bootstrap", "0"]
    assert main([base[0], str(path), *base[1:], "--out", str(tmp_path / "plain.json")]) == 0
    mixed = tmp_path / "mixed.csv"
    pd.concat([df.assign(metric="loss"), df.assign(metric="bpb", loss=df["loss"] * 0.6),
               df.assign(metric="acc", loss=0.3)]).to_csv(mixed, index=False)
    assert main([base[0], str(mixed), *base[1:], "--out", str(tmp_path / "loss.json")]) == 0
    assert main([base[0], str(mixed), *base[1:], "--metric", "bpb", "--out", str(tmp_path / "bpb.json")]) == 0
    plain, loss, bpb = (json.loads((tmp_path / f"{n}.json").read_text())["fits"] for n in ("plain", "loss", "bpb"))
    assert [f["params"] for f in loss] == [f["params"] for f in plain]
    for a, b in zip(bpb, plain):  # L' = 0.6 L: E and B scale, beta stays
        assert a["params"]["E"] == pytest.approx(0.6 * b["params"]["E"], rel=1e-3)
        assert a["params"]["beta"] == pytest.approx(b["params"]["beta"], rel=1e-3)
    capsys.readouterr()
    assert main([base[0], str(mixed), *base[1:], "--metric", "acc_norm"]) == 2
    assert "no rows with metric 'acc_norm' (metrics: acc, bpb, loss)" in capsys.readouterr().err
    assert main([base[0], str(path), *base[1:], "--metric", "bpb"]) == 2
    assert "has no 'metric' column" in capsys.readouterr().err


@pytest.mark.parametrize("edit, args, msg", [
    (None, ["--loss-col", "nope"], "missing column 'nope'"),
    ("neg_n", [], "row 0: n_params must be > 0"),
    ("nan_loss", [], "row 1: loss must be finite"),
    ("few", [], "need at least 5 points"),
    (None, ["--law", "cubic"], "invalid choice"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, edit, args, msg):
    df, path = _table(tmp_path)
    if edit == "neg_n":
        df.loc[0, "n_params"] = -5
    elif edit == "nan_loss":
        df.loc[1, "loss"] = np.nan
    elif edit == "few":
        df = df.iloc[:3]
    df.to_csv(path, index=False)
    base = ["fit", str(path), "--law", "chinchilla", "--n-col", "n_params", "--bootstrap", "0", "--grid", "reduced"]
    rc = main(base + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("megasynth: error: ") and msg in err and err.count("\n") == 1, err


def test_cli_analyze_ratio_efficiency_generators(tmp_path, capsys):
    rows = []
    D = np.geomspace(1e7, 1e9, 5)
    for gen, shift in (("g8b", 0.3), ("g70b", 0.35)):
        for r in (0.0, 0.1, 0.3, 0.5, 1.0):
            for d in D:
                rows.append({"generator": gen, "mixture": "natural" if r == 0 else f"syn{int(r * 100)}",
                             "synthetic_ratio": r, "tokens": d, "n_params": 1e8, "eval_set": "wiki",
                             "loss": 2.0 + 0.3 * (r - shift) ** 2 + 300 * d ** -0.3})
    path = tmp_path / "r.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert main(["analyze", "optimal-ratio", str(path), "--group-by", "generator", "tokens", "--bootstrap", "20"]) == 0
    ratio = json.loads((tmp_path / "fits" / "optimal_ratio.json").read_text())
    opt = {(g["generator"], g["tokens"]): g["opt_ratio"] for g in ratio["groups"]}
    assert opt[("g8b", D[-1])] == pytest.approx(0.3, abs=0.02) and opt[("g70b", D[0])] == pytest.approx(0.35, abs=0.02)
    assert (tmp_path / "fits" / "optimal_ratio.png").exists()
    assert main(["analyze", "efficiency", str(path), "--group-by", "generator", "n_params", "eval_set",
                 "--bootstrap", "0"]) == 0
    assert main(["analyze", "generators", str(path), "--bootstrap", "0", "--ratio-col", "synthetic_ratio"]) == 0
    gens = json.loads((tmp_path / "fits" / "generators.json").read_text())
    assert {g["generator"] for g in gens["generators"]} == {"g8b", "g70b"}
    assert gens["generators"][0]["best"]["mixture"] == "syn30"
    assert main(["analyze", "efficiency", str(path), "--baseline", "nope"]) == 2
    assert "baseline: mixture 'nope'" in capsys.readouterr().err
