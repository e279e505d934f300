"""``megasynth <command> ...``: run a study or one of its stages, or analyse a results table.

Study commands, ``megasynth <stage> STUDY.yaml [key=value ...] [--study-dir DIR] [--dry-run] [-v]``: every
stage of :data:`megasynth.study.stages.STAGES`, and ``run`` (all stages in order, skipping what is
complete). ``megasynth evaluate`` also takes ``--tasks arc_easy,hellaswag`` (``evaluation.tasks``), ``--limit N``
(``evaluation.limit``) and ``--run ID`` (only that run's checkpoint). ``key=value`` arguments override study-file fields with dotted paths
(``train.train_iters=20``, ``mixtures.0.sources.sotu=1.0``) and may stand before or after the options.
``--dry-run`` prints the resolved config and which stages would run, and writes nothing.

Sweeps (a study's ``sweep:`` grid) and results tables: ``megasynth sweep plan|run|status STUDY.yaml`` and
``megasynth results merge A.csv B.csv -o merged.csv`` (:mod:`megasynth.study.sweep_cli`).

Analysis of any results table (one machine or a cluster sweep) runs outside a study:
``megasynth fit TABLE --law chinchilla ...`` and ``megasynth analyze {optimal-ratio,efficiency,unigrams,
generators} ...`` (see :mod:`megasynth.analysis.cli`).

Exit codes: 0 success, 2 bad input (one-line error naming the field or ``file:line``), 3 training stopped
by SIGTERM/SIGUSR1 after saving a checkpoint (rerun to resume), 1 other errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from megasynth.study.stages import RUN_HELP, STAGES
from megasynth.study.sweep_cli import COMMANDS as GROUP_COMMANDS

SERVE_HELP = "start vLLM servers for the study's server generators and print their endpoints"

ANALYSIS_COMMANDS = {
    "fit": "fit scaling laws (data, rectified, Chinchilla) to a results table (CSV/Parquet)",
    "analyze": "optimal ratio, compute efficiency, unigram statistics, generator comparison",
}


def study_commands() -> dict[str, str]:
    """Command name -> one-line help of every command that runs a study: the stages, ``run`` and ``serve``."""
    return {**{s.name: s.help for s in STAGES}, "run": RUN_HELP, "serve": SERVE_HELP}


def command_groups() -> list[str]:
    """First words of the two-word commands (``sweep``, ``results``; :data:`GROUP_COMMANDS`)."""
    return list(dict.fromkeys(c.split()[0] for c in GROUP_COMMANDS))


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``megasynth --help`` lists every command with its one-line help."""
    commands = {**study_commands(), **ANALYSIS_COMMANDS, **GROUP_COMMANDS}
    width = max(map(len, commands)) + 2
    listing = "\n".join(f"  {name:<{width}}{help_}" for name, help_ in commands.items())
    parser = argparse.ArgumentParser(
        prog="megasynth", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="run the synthetic-data pre-training study (corpora → generation → tokenization → "
                    "mixtures → training → results → report), or analyse a results table",
        epilog=f"commands (`megasynth COMMAND --help` for the options of one):\n{listing}")
    parser.add_argument("command", metavar="COMMAND", choices=[*study_commands(), *ANALYSIS_COMMANDS,
                                                               *command_groups()], help="one of the commands below")
    return parser


def study_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one study command (``megasynth run --help``)."""
    p = argparse.ArgumentParser(prog=f"megasynth {command}", description=study_commands()[command])
    p.add_argument("study", help="study file (YAML), e.g. examples/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of study-file fields")
    p.add_argument("--study-dir", help="output directory (overrides study_dir in the study file)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the stages that would "
                   "run; write nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if command == "generate":
        p.add_argument("--rank", type=int, help="this process's rank: it takes the shards k with k %% world-size == "
                       "rank (default: SLURM_ARRAY_TASK_ID, torchrun's RANK, else 0)")
        p.add_argument("--world-size", type=int, help="number of generate processes (default: "
                       "SLURM_ARRAY_TASK_COUNT, torchrun's WORLD_SIZE, else 1)")
    if command == "serve":
        p.add_argument("--generator", action="append", help="only this generator (repeatable; default: every "
                       "server generator)")
    if command == "evaluate":
        p.add_argument("--tasks", help="comma-separated downstream tasks to evaluate on each finished run's final "
                       "checkpoint (arc_easy,hellaswag,piqa,gsm8k_bpb,...; overrides evaluation.tasks)")
        p.add_argument("--limit", type=int, help="instances per task (overrides evaluation.limit)")
        p.add_argument("--math-tasks", help="comma-separated generative math tasks (minerva_math_500,gsm8k; "
                       "overrides evaluation.math_tasks): exported to HF, sampled with vLLM")
        p.add_argument("--math-limit", type=int, help="problems per math task (overrides evaluation.math_limit)")
        p.add_argument("--run", action="append", help="evaluate the checkpoint of this run id only (repeatable); "
                       "results.csv still covers every finished run")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ANALYSIS_COMMANDS:
        from megasynth.analysis.cli import main as analysis_main
        from megasynth.utils import setup_logging

        setup_logging()
        return analysis_main(argv)
    if argv and argv[0] in command_groups():
        from megasynth.study.sweep_cli import main as group_main

        return group_main(argv)
    if not argv or argv[0] not in study_commands():
        build_parser().parse_args(argv[:1])  # help, or a usage error naming the commands (exit 2)
        return 2
    command = argv[0]
    args = study_parser(command).parse_intermixed_args(argv[1:])
    from megasynth.utils import MegasynthError, cli_error, setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        from megasynth.config import StudyConfig
        from megasynth.study.runner import prepare_study_dir, record_invocation, run_stage, run_study

        overrides = list(args.overrides)
        if args.study_dir:
            overrides.append(f"study_dir={args.study_dir}")
        options = {}
        if command == "evaluate":
            if args.tasks is not None:
                overrides.append(f"evaluation.tasks=[{','.join(t.strip() for t in args.tasks.split(',') if t.strip())}]")
            if args.limit is not None:
                overrides.append(f"evaluation.limit={args.limit}")
            if args.math_tasks is not None:
                overrides.append("evaluation.math_tasks=["
                                 f"{','.join(t.strip() for t in args.math_tasks.split(',') if t.strip())}]")
            if args.math_limit is not None:
                overrides.append(f"evaluation.math_limit={args.math_limit}")
            options = {"run_ids": args.run} if args.run else {}
        cfg = StudyConfig.from_yaml(args.study, overrides)
        if command == "serve":
            from megasynth.generate.serve import serve

            return serve(cfg, generators=args.generator, dry_run=args.dry_run)
        names = [s.name for s in STAGES] if command == "run" else [command]
        kwargs = {}
        if command == "generate":
            from megasynth.generate.plan import resolve_rank

            kwargs["rank"], kwargs["world_size"] = resolve_rank(args.rank, args.world_size)
        if args.dry_run:
            return _dry_run(cfg, names)
        layout = prepare_study_dir(cfg, args.study)
        record_invocation(layout, cfg, command, argv, overrides, args.study)
        if command == "run":
            run_study(cfg, layout)
        else:
            run_stage(command, cfg, layout, **kwargs, **options)
    except MegasynthError as e:
        from megasynth.train.signals import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):  # a checkpoint was saved: not bad input (launch/study.sbatch)
            print(f"megasynth: {e}", file=sys.stderr)
            return 3
        return cli_error(e)
    except KeyboardInterrupt as e:
        print("megasynth: interrupted; rerun the same command to continue", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    return 0


def _dry_run(cfg, names: list[str]) -> int:
    """Print the resolved config and, per stage, whether it would run; read only."""
    from megasynth.layout import StudyLayout
    from megasynth.study.stages import STAGE

    layout = StudyLayout.of(cfg.study_dir)
    print("# resolved config")
    print(cfg.to_yaml(), end="")
    print(f"# stages ({layout.root})")
    for name in names:
        stage = STAGE[name]
        reason = stage.skip_if(cfg) if stage.skip_if else None
        if reason is None and layout.root.exists() and stage.is_done(cfg, layout):
            reason = "complete"
        print(f"{name}: {'skip (' + reason + ')' if reason else 'run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
