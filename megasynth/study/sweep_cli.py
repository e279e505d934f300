"""``megasynth sweep plan|run|status STUDY.yaml`` and ``megasynth results merge A.csv B.csv ... -o OUT.csv``.

- ``sweep plan``: the runs of the study's grid with parameters, tokens, steps and FLOPs, totals and device-hours,
  and the epochs of each synthetic source its largest run implies (:func:`megasynth.study.sweep.plan_table`);
  reads no data and trains nothing.
- ``sweep run``: the data stages once for the whole study (the stages before ``train`` in the stage
  registry: corpora, generate, decontaminate, preprocess, mix; skipping complete ones; in a child process, so the generator's memory is freed before training),
  the run files of every planned run, every task through the executor
  (complete runs skipped, failed runs recorded in ``runs/<run_id>/error.json`` without stopping the others),
  then ``evaluate`` and ``report`` over the finished runs. Running it again retries only what is not done.
  Exit status 1 when some run failed (the table of ``sweep status`` names them).
- ``sweep status``: one line per planned run: state (pending, running, done, failed), step/total, last training
  loss, wall time, the first line of its error; read from the run directories only.
- ``results merge``: the union of results tables, one row per (run, tokens, eval set); identical duplicates
  dropped, conflicting ones an error naming the run and key.

Exit codes: 0 success, 1 some run failed, 2 bad input (one line naming the field), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from megasynth.utils import MegasynthError, cli_error

COMMANDS = {
    "sweep plan": "print a study's sweep: runs, tokens, FLOPs, device-hours, synthetic epochs (no data, no training)",
    "sweep run": "run a study's sweep: data stages once, every run through its executor, then evaluate and report",
    "sweep status": "table of a sweep's runs: pending/running/done/failed, step/total, loss, wall time, error",
    "results merge": "merge results tables (CSV) into one, deduplicated by run and row key",
}
"""Commands of two words, ``megasynth <group> <name>``, and their one-line help (``megasynth --help``)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 via MegasynthError
        raise MegasynthError(f"{self.prog}: {message}")


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one two-word command (``"sweep plan"``, ``"results merge"``, ...)."""
    p = _Parser(prog=f"megasynth {command}", description=COMMANDS[command])
    if command == "results merge":
        p.add_argument("tables", nargs="+", help="results.csv files")
        p.add_argument("-o", "--out", required=True, help="merged table to write")
        return p
    p.add_argument("study", help="study file (YAML) with a sweep: section")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of study-file fields")
    p.add_argument("--study-dir", help="output directory (overrides study_dir in the study file)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if command == "sweep plan":
        p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
        p.add_argument("--tflops-per-device", type=float, help="achieved TFLOP/s per device for device-hours "
                       "(default: 40%% of the H100/H200 dense BF16 peak, 989 TFLOP/s)")
    return p


def main(argv: list[str]) -> int:
    """``argv`` without the program name, e.g. ``["sweep", "plan", "study.yaml"]``."""
    from megasynth.utils import setup_logging

    try:
        command = " ".join(argv[:2])
        if command not in COMMANDS:
            group = argv[0] if argv else ""
            known = [c.split()[1] for c in COMMANDS if c.split()[0] == group]
            if len(argv) > 1 and argv[1] in ("-h", "--help"):
                print(f"usage: megasynth {group} {{{','.join(known)}}} ...\n\n"
                      + "\n".join(f"  {c:<14} {h}" for c, h in COMMANDS.items() if c.startswith(group + " ")))
                return 0
            raise MegasynthError(f"megasynth {group}: expected one of {', '.join(known)}, got "
                                 f"{argv[1] if len(argv) > 1 else 'nothing'!r}")
        args = command_parser(command).parse_intermixed_args(argv[2:])
        setup_logging(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
        handler = {"sweep plan": _plan, "sweep run": _run, "sweep status": _status, "results merge": _merge}[command]
        return handler(args, argv)
    except MegasynthError as e:
        return cli_error(e)
    except _ChildFailed as e:
        return e.code
    except KeyboardInterrupt:
        print("megasynth: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


def _study(args):
    from megasynth.config import StudyConfig
    from megasynth.layout import StudyLayout

    overrides = list(args.overrides)
    if args.study_dir:
        overrides.append(f"study_dir={args.study_dir}")
    cfg = StudyConfig.from_yaml(args.study, overrides)
    return cfg, StudyLayout.of(cfg.study_dir), overrides


def _plan(args, argv) -> int:
    from megasynth.study.sweep import format_plan, plan_table

    cfg, layout, _ = _study(args)
    plan = plan_table(cfg, layout if layout.root.exists() else None, args.tflops_per_device)
    sys.stdout.write(format_plan(plan, args.format))
    for note in plan["notes"]:
        logging.getLogger("megasynth.study").warning("%s", note)
    return 0


def _run(args, argv) -> int:
    from megasynth.study.attempts import run_state
    from megasynth.study.executors import make_executor
    from megasynth.study.runner import prepare_study_dir, record_invocation, run_stage
    from megasynth.study.runs import plan_runs
    from megasynth.study.sweep import plan_tasks, write_run_files

    log = logging.getLogger("megasynth.study")
    cfg, layout, overrides = _study(args)
    if cfg.sweep is None:
        raise MegasynthError(f"{args.study}: sweep: no sweep section (add one, or use `megasynth run`)")
    runs = plan_runs(cfg)  # bad input stops here, before anything is written
    tasks = plan_tasks(cfg, runs)
    executor = make_executor(cfg.sweep.executor)
    if layout.root.exists():  # a run directory holding another run is refused before anything runs
        from megasynth.train.record import check_run_dir

        for run in runs:
            check_run_dir(run, layout.run(run.run_id))
    layout = prepare_study_dir(cfg, args.study)
    record_invocation(layout, cfg, "sweep-run", ["sweep", "run", *argv[2:]], overrides, args.study)
    _data_stages(args.study, overrides)
    complete = write_run_files(runs, layout)
    from megasynth.study.runs import ensure_base

    ensure_base(cfg, layout)  # the base model every run continues from (base:), trained or imported once, here
    log.info("sweep: %d runs in %d tasks (%d complete), executor %s", len(runs), len(tasks), len(complete),
             cfg.sweep.executor.type)
    executor.run(tasks, layout, cfg)
    states = {r.run_id: run_state(layout.run(r.run_id), r.train.train_iters)["state"] for r in runs}
    done = sum(s == "done" for s in states.values())
    if done:
        run_stage("evaluate", cfg, layout, alone=False)
        run_stage("report", cfg, layout, alone=False)
    failed = [i for i, s in states.items() if s == "failed"]
    log.info("sweep: %d of %d runs done, %d failed, %d not done", done, len(runs), len(failed),
             len(runs) - done - len(failed))
    if failed:
        log.error("failed runs (see `megasynth sweep status`): %s", ", ".join(failed))
        return 1
    return 0


def data_stages() -> tuple[str, ...]:
    """The stages before ``train`` in the registry's order (corpora, generate, decontaminate, preprocess, mix)."""
    from megasynth.study.stages import STAGES

    names = [s.name for s in STAGES]
    return tuple(names[:names.index("train")])


def _run_data_stages(study: str, overrides: list[str]) -> None:  # in the child process
    from megasynth.config import StudyConfig
    from megasynth.layout import StudyLayout
    from megasynth.study.runner import run_stage
    from megasynth.utils import setup_logging

    setup_logging()
    try:
        cfg = StudyConfig.from_yaml(study, overrides)
        for stage in data_stages():
            run_stage(stage, cfg, StudyLayout.of(cfg.study_dir), alone=False)
    except MegasynthError as e:
        sys.exit(cli_error(e))


def _data_stages(study: str, overrides: list[str]) -> None:
    """Run the data stages (:func:`data_stages`, skipping complete ones) once for the whole study, in a child
    process, so the memory of the generator (vLLM) is returned before the runs start.

    Raises:
        MegasynthError: a stage failed (its one-line error was printed by the child).
    """
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_run_data_stages, args=(study, overrides),
                                                        name="megasynth-data-stages")
    proc.start()
    try:
        proc.join()
    except KeyboardInterrupt:
        proc.join()
        raise
    if proc.exitcode != 0:
        raise _ChildFailed(2 if proc.exitcode == 2 else 1)


class _ChildFailed(Exception):
    """The data stages' child process failed; it printed why (exit status :attr:`code`)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def status_rows(cfg, layout) -> list[dict]:
    """One dict per planned run: ``run_id`` and :func:`megasynth.study.attempts.run_state`."""
    from megasynth.study.attempts import run_state
    from megasynth.study.runs import plan_runs

    return [{"run_id": r.run_id, **run_state(layout.run(r.run_id), r.train.train_iters)} for r in plan_runs(cfg)]


def _fmt_wall(s) -> str:
    if s is None:
        return ""
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def _status(args, argv) -> int:
    cfg, layout, _ = _study(args)
    rows = status_rows(cfg, layout)
    header = ["run", "state", "step", "last loss", "wall", "error"]
    body = [[r["run_id"], r["state"], f"{r['step'] if r['step'] is not None else 0}/{r['total']}",
             f"{r['last_loss']:.4f}" if isinstance(r["last_loss"], (int, float)) else "",
             _fmt_wall(r["wall_s"]), r["error"]] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out += ["  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip() for b in body]
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "failed", "pending")}
    out += ["", ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)} runs"]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _merge(args, argv) -> int:
    from megasynth.analysis.results import merge_results

    info = merge_results([Path(t) for t in args.tables], Path(args.out))
    print(f"{args.out}: {info['rows_out']} rows from {len(info['inputs'])} tables "
          f"({info['rows_in']} rows in, {info['duplicates']} identical duplicates dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
