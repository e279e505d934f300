"""``megasynth fit …`` and ``megasynth analyze {optimal-ratio,efficiency,unigrams,generators} …``.

Tables with a ``metric`` column (megasynth's ``results.csv``) are reduced to the rows of ``--metric`` (default
``loss``) first, so fits never mix held-out losses with bits per byte or accuracies.

Entry point: :func:`main` with ``argv`` excluding the program name, e.g.
``main(["fit", "results.csv", "--law", "chinchilla", "--n-col", "n_params", "--d-col", "tokens"])``.
Writes JSON (and a PNG) and prints a short summary. Exit codes: 0 success, 2 bad input (one line
``megasynth: error: …`` on stderr naming the column, row, file or option).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, cli_error, setup_logging, write_json

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 via MegasynthError
        raise MegasynthError(f"{self.prog}: {message}")


def _table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="results table (.csv, .tsv or .parquet)")
    p.add_argument("--loss-col", default="loss", help="loss column, nats per token (default: loss)")
    p.add_argument("--metric", default="loss", help="with a `metric` column (results.csv): use the rows of this "
                   "metric: loss (default), bpb, acc, acc_norm")
    p.add_argument("--d-col", default="tokens", help="training tokens column (default: tokens)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for intervals (default 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--ci-level", type=float, default=0.95, help="two-sided interval level (default 0.95)")
    p.add_argument("--out", help="output JSON (default: beside the table under fits/)")
    p.add_argument("--all-rows", action="store_true", help="also fit evaluations before the end of a run's "
                   "schedule (by default, a table with a schedule_complete column is fitted on its true rows)")
    p.add_argument("-v", "--verbose", action="store_true", help="progress logging")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="megasynth", description="scaling-law fits and mixture analyses of results tables")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("fit", help="fit a scaling law per group: data, rectified or chinchilla")
    _table_args(p)
    p.add_argument("--law", choices=("data", "rectified", "chinchilla"), default="data")
    p.add_argument("--n-col", help="model parameters column (required for chinchilla and --tokens-from-flops)")
    p.add_argument("--group-by", nargs="+", default=[], help="columns to fit separately")
    p.add_argument("--run-col", help="run id column: the chinchilla bootstrap resamples runs")
    p.add_argument("--tokens-from-flops", metavar="FLOPS_COL", help="derive D = C / (6 N) from this FLOPs column")
    p.add_argument("--loss", choices=("huber", "linear"), default="huber", help="objective on log L")
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log L (default 1e-3)")
    p.add_argument("--extrapolate-cut", type=float, help="fit on D <= cut, report error above (default: "
                   "hold out the largest budget)")
    p.add_argument("--min-points", type=int, help="skip groups with fewer points")
    p.add_argument("--grid", choices=("full", "reduced"), default="full",
                   help="chinchilla starts: the published 4,500-point grid or a 72-point subset")
    p.add_argument("--png", help="output PNG (default: beside the JSON)")

    a = sub.add_parser("analyze", help="mixture analyses")
    asub = a.add_subparsers(dest="analysis", required=True, parser_class=_Parser)
    r = asub.add_parser("optimal-ratio", help="argmin of loss vs synthetic ratio per (N, D) with a bootstrap interval")
    _table_args(r)
    r.add_argument("--ratio-col", default="synthetic_ratio")
    r.add_argument("--group-by", nargs="+", default=["n_params", "tokens", "eval_set"])
    r.add_argument("--curve", choices=("quadratic", "logit"), default="quadratic")
    r.add_argument("--png")
    e = asub.add_parser("efficiency", help="tokens/FLOPs a mixture needs to reach the baseline's loss; speed-up")
    _table_args(e)
    e.add_argument("--mixture-col", default="mixture")
    e.add_argument("--baseline", default="natural", help="baseline mixture (default: natural)")
    e.add_argument("--n-col", default="n_params", help="parameters column for FLOPs = 6 N D ('' for none)")
    e.add_argument("--group-by", nargs="+", default=["n_params", "eval_set"])
    e.add_argument("--method", choices=("law", "interp"), default="law")
    e.add_argument("--png")
    u = asub.add_parser("unigrams", help="unigram statistics of Megatron indexed datasets")
    u.add_argument("--train", nargs="+", required=True, metavar="NAME=PREFIX", help="training corpora")
    u.add_argument("--eval", nargs="+", required=True, metavar="NAME=PREFIX", help="eval sets")
    u.add_argument("--vocab-size", type=int)
    u.add_argument("--smoothing", type=float, default=1.0, help="additive smoothing of training counts for KL")
    u.add_argument("--top-k", type=int, default=1000, help="tail mass = mass beyond the top-k types")
    u.add_argument("--rare-count", type=int, default=10, help="rare = training count <= this")
    u.add_argument("--losses", nargs="*", default=[], metavar="EVAL=FILE.npy",
                   help="per-token losses aligned with an eval .bin (NaN = no prediction)")
    u.add_argument("--tokenizer", help="HF tokenizer.json to decode rare tokens")
    u.add_argument("--out", required=True)
    u.add_argument("--png")
    u.add_argument("-v", "--verbose", action="store_true")
    g = asub.add_parser("generators", help="final losses, fits and optimal ratios grouped by generator")
    _table_args(g)
    g.add_argument("--generator-col", default="generator")
    g.add_argument("--mixture-col", default="mixture")
    g.add_argument("--group-by", nargs="+", default=["eval_set"])
    g.add_argument("--ratio-col")
    return parser


def _default_out(table: str, name: str, ext: str = ".json") -> Path:
    """``fits/<name><ext>`` beside the table (a study's ``results.csv`` → the study's ``fits/``)."""
    return StudyLayout.of(Path(table).resolve().parent).fit(name, ext)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise MegasynthError(f"{what}: expected NAME=PATH, got {it!r}")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def _fmt_ci(v, ci) -> str:
    return f"{v:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]"


def _rows(df, args):
    """The rows to fit: those with ``schedule_complete`` true when the table has the column (a budget point
    evaluated before its run's LR decayed is not one), unless ``--all-rows``."""
    import logging

    if args.all_rows or "schedule_complete" not in df.columns or df["schedule_complete"].isna().all():
        return df  # no column, or a column with no values (a table written before it existed)
    keep = df["schedule_complete"].astype(str).str.lower() == "true"
    if not keep.any():
        raise MegasynthError(f"{args.table}: no row has schedule_complete true (use --all-rows to fit them all)")
    logging.getLogger("megasynth.analysis").info("%s: %d of %d rows are at the end of a schedule (schedule_complete); "
                                                 "fitting those (--all-rows: all)", args.table, int(keep.sum()), len(df))
    out = df[keep].copy()
    out.attrs.update(df.attrs)
    return out


def _cmd_fit(args) -> None:
    from megasynth.analysis.chinchilla import CHINCHILLA_GRID
    from megasynth.analysis.fit_table import fit_table
    from megasynth.analysis.table import load_table, select_metric

    out = Path(args.out) if args.out else _default_out(args.table, f"{args.law}_law_fit")
    png = Path(args.png) if args.png else out.with_suffix(".png")
    grid = CHINCHILLA_GRID if args.grid == "full" else CHINCHILLA_GRID[::62]
    res = fit_table(_rows(select_metric(load_table(args.table), args.metric), args), args.law, d_col=args.d_col, loss_col=args.loss_col, n_col=args.n_col,
                    group_by=args.group_by, flops_col=args.tokens_from_flops, run_col=args.run_col,
                    n_bootstrap=args.bootstrap, seed=args.seed, ci_level=args.ci_level, delta=args.delta,
                    loss=args.loss, extrapolate_cut=args.extrapolate_cut, min_points=args.min_points, grid=grid,
                    out_json=out, out_png=png)
    for f in res["fits"]:
        key = ", ".join(f"{c}={f[c]}" for c in args.group_by) or "all"
        ps = "  ".join(f"{p}={_fmt_ci(f['params'][p], f['ci'][p])}" for p in f["ci"] if p in
                       ("E", "A", "B", "alpha", "beta", "D_l"))
        ex = f["extrapolation"]
        exs = (f"; extrapolation to D > {ex['cut']:.4g}: mean |rel err| {ex['mean_abs_rel_err']:.2%}"
               if "mean_abs_rel_err" in ex else f"; extrapolation: {ex.get('skipped')}")
        print(f"{key}: {ps}; RMSE {f['rmse']:.4g} nats{exs}")
    for s in res["skipped"]:
        print(f"skipped {s}")
    print(f"wrote {out}" + (f" and {png}" if res["fits"] else ""))


def _cmd_analyze(args) -> None:
    from megasynth.analysis import mixtures
    from megasynth.analysis.table import load_table, select_metric

    if args.analysis == "unigrams":
        from megasynth.analysis.unigrams import compare_corpora

        train, evals = _pairs(args.train, "--train"), _pairs(args.eval, "--eval")
        losses = {}
        for k, v in _pairs(args.losses, "--losses").items():
            if not Path(v).is_file():
                raise MegasynthError(f"--losses: {v}: file not found")
            losses[k] = np.load(v, mmap_mode="r")
        decode = None
        if args.tokenizer:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(args.tokenizer)
            decode = lambda i: tok.decode([i])  # noqa: E731
        counts = {}
        res = compare_corpora(train, evals, vocab_size=args.vocab_size, smoothing=args.smoothing, top_k=args.top_k,
                              rare_count=args.rare_count, losses=losses, decode=decode, counts_out=counts)
        write_json(args.out, res)
        if args.png:
            from megasynth.analysis.plots import plot_rank_frequency

            plot_rank_frequency(Path(args.png), counts, "unigram rank-frequency")
        for name, s in res["corpora"].items():
            print(f"{name} ({s['role']}): {s['tokens']} tokens, {s['types']} types, H = {s['entropy_bits']:.3f} bits, "
                  f"tail mass beyond top-{s['top_k']} = {s['tail_mass_beyond_top_k']:.4f}")
        for p in res["pairs"]:
            print(f"{p['eval']} vs {p['train']}: type coverage {p['type_coverage']:.2%}, token coverage "
                  f"{p['token_coverage']:.2%}, KL = {p['kl_nats']:.4f} nats (smoothing {args.smoothing})")
        print(f"wrote {args.out}")
        return
    df = _rows(select_metric(load_table(args.table), args.metric), args)
    if args.analysis == "optimal-ratio":
        res = mixtures.optimal_ratio_table(df, ratio_col=args.ratio_col, loss_col=args.loss_col,
                                           group_by=args.group_by, curve=args.curve, n_bootstrap=args.bootstrap,
                                           seed=args.seed, ci_level=args.ci_level)
        out = Path(args.out) if args.out else _default_out(args.table, "optimal_ratio")
        write_json(out, res)
        if res["groups"]:
            from megasynth.analysis.plots import plot_ratio_curves

            png = Path(args.png) if args.png else out.with_suffix(".png")
            plot_ratio_curves(png, [{"label": ", ".join(f"{c}={g[c]}" for c in args.group_by), "ratio": g["ratios"],
                                     "loss": g["losses"], "grid": g["grid"], "fit": g["fit"], "opt": g["opt_ratio"],
                                     "opt_ci": tuple(g["ci"])} for g in res["groups"][:12]], "loss vs synthetic ratio")
        for g in res["groups"]:
            print(", ".join(f"{c}={g[c]}" for c in args.group_by) + f": optimal ratio {_fmt_ci(g['opt_ratio'], g['ci'])}")
    elif args.analysis == "efficiency":
        res = mixtures.efficiency_table(df, mixture_col=args.mixture_col, baseline=args.baseline, d_col=args.d_col,
                                        loss_col=args.loss_col, n_col=args.n_col or None, group_by=args.group_by,
                                        method=args.method, n_bootstrap=args.bootstrap, seed=args.seed,
                                        ci_level=args.ci_level)
        out = Path(args.out) if args.out else _default_out(args.table, "efficiency")
        write_json(out, res)
        if res["groups"]:
            from megasynth.analysis.plots import plot_speedups

            png = Path(args.png) if args.png else out.with_suffix(".png")
            labels = [f"{g['mixture']} ({', '.join(str(g[c]) for c in args.group_by)})" for g in res["groups"]]
            plot_speedups(png, labels, [g["speedup_at_max"] for g in res["groups"]],
                          [g["speedup_ci_at_max"][0] for g in res["groups"]],
                          [g["speedup_ci_at_max"][1] for g in res["groups"]],
                          f"speed-up vs {args.baseline} at its largest budget")
        for g in res["groups"]:
            print(f"{g['mixture']} ({', '.join(f'{c}={g[c]}' for c in args.group_by)}): speed-up at the largest budget "
                  f"{_fmt_ci(g['speedup_at_max'], g['speedup_ci_at_max'])}")
    else:
        res = mixtures.compare_generators(df, generator_col=args.generator_col, mixture_col=args.mixture_col,
                                          d_col=args.d_col, loss_col=args.loss_col, group_by=args.group_by,
                                          ratio_col=args.ratio_col, n_bootstrap=args.bootstrap, seed=args.seed)
        out = Path(args.out) if args.out else _default_out(args.table, "generators")
        write_json(out, res)
        for g in res["generators"]:
            b = g.get("best")
            print(f"{args.generator_col}={g[args.generator_col]}: best {b['mixture']} loss {b['loss']:.4f}" if b else
                  f"{args.generator_col}={g[args.generator_col]}: no rows")
    print(f"wrote {out}")


def main(argv: list[str]) -> int:
    """Run ``fit …`` or ``analyze …``; return the exit code (2 on bad input, with a one-line error)."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "verbose", False):
            setup_logging()
        if args.command == "fit":
            _cmd_fit(args)
        else:
            _cmd_analyze(args)
    except MegasynthError as e:
        return cli_error(e)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
