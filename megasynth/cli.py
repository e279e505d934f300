"""``megasynth <stage> STUDY.yaml [key=value ...]``: run a study or one of its stages.

Stages: corpora, generate, preprocess, mix, train, evaluate, report; ``run`` runs them all in order,
skipping what is complete. Trailing ``key=value`` arguments override study-file fields with dotted
paths (``train.train_iters=20``, ``mixtures.0.sources.sotu=1.0``).

Analysis of any results table (one machine or a cluster sweep) runs outside a study:
``megasynth fit TABLE --law chinchilla ...`` and ``megasynth analyze {optimal-ratio,efficiency,unigrams,
generators} ...`` (see :mod:`megasynth.analysis.cli`).

Exit codes: 0 success, 2 bad input (one-line error naming the field or ``file:line``), 1 other errors.
"""

from __future__ import annotations

import argparse
import logging
import sys

from megasynth.study.runner import STAGES

COMMANDS = {
    "corpora": "normalise natural corpora and held-out eval sets to JSONL",
    "generate": "generate synthetic corpora (HQ, QA, TXBK) with the LLM generator through vLLM",
    "preprocess": "tokenize every corpus into Megatron indexed datasets (.bin/.idx)",
    "mix": "turn mixtures (token ratios of named sources) into Megatron blend weights",
    "train": "train one Llama-3 megatron-core model per mixture",
    "evaluate": "collect held-out losses of every run into results.csv",
    "report": "fit L(D) = E + B/D^beta per mixture and eval set; write report/report.md and plots",
    "run": "run every stage in order, skipping what is complete",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megasynth", description=__doc__.split("\n\n")[0])
    parser.epilog = "also: " + "; ".join(f"megasynth {k} ... ({v})" for k, v in ANALYSIS_COMMANDS.items())
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("study", help="study file (YAML), e.g. examples/quickstart.yaml")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides of study-file fields")
        p.add_argument("--study-dir", help="output directory (overrides study_dir in the study file)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


ANALYSIS_COMMANDS = {
    "fit": "fit scaling laws (data, rectified, Chinchilla) to a results table (CSV/Parquet)",
    "analyze": "optimal ratio, compute efficiency, unigram statistics, generator comparison",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ANALYSIS_COMMANDS:
        from megasynth.analysis.cli import main as analysis_main
        from megasynth.utils import setup_logging

        setup_logging()
        return analysis_main(argv)
    args = build_parser().parse_args(argv)
    from megasynth.utils import MegasynthError, setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        from megasynth.config import StudyConfig
        from megasynth.study.runner import prepare_study_dir, run_stage, run_study

        overrides = list(args.overrides)
        if args.study_dir:
            overrides.append(f"study_dir={args.study_dir}")
        cfg = StudyConfig.from_yaml(args.study, overrides)
        if args.command == "run":
            run_study(cfg, STAGES)
        else:
            run_stage(args.command, cfg, prepare_study_dir(cfg))
    except MegasynthError as e:
        print(f"megasynth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("megasynth: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
