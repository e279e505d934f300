"""The ``torchrun`` entry point of ``launch/train.sh`` / ``launch/train.sbatch``: train a study's runs, or one run.

    torchrun --nproc-per-node 8 -m megasynth.study.launch STUDY.yaml [--run ID ...] [--mixture NAME ...] [key=value ...]
    torchrun --nproc-per-node 8 -m megasynth.study.launch STUDY_DIR/runs/<run_id>/run.yaml [key=value ...]
    python -m megasynth.study.launch STUDY.yaml --dry-run --nproc 16 train.parallel.tensor_model_parallel_size=2

A study file's runs are planned by :func:`megasynth.study.runs.plan_runs` (``--run``/``--mixture`` select
some); a run file (``runs/<run_id>/run.yaml``, a resolved :class:`~megasynth.config.RunConfig`) is exactly
that run, in the study directory that holds it (or ``--study-dir``). Overrides apply to the file given: a
changed identity setting of an existing run is refused, naming the field. Every rank runs
:func:`megasynth.train.train_one` for each run; completed runs are skipped and interrupted ones resume from
their checkpoint. ``--dry-run`` prints the resolved config and the parallel layout
(:func:`megasynth.train.parallel.parallel_plan`) for ``--nproc`` processes (default ``$WORLD_SIZE`` or 1)
without importing torch or megatron.

Each run that is not complete records its attempt in ``runs/<run_id>/attempt.json`` (host, pid, SLURM ids,
start; end, exit code and state when it ends) and, when it fails, ``runs/<run_id>/error.json`` (the error's
first line, type, exit code, traceback tail): :mod:`megasynth.study.attempts`, read by ``megasynth sweep status``.

Exit status: 0 done, 2 bad input (:class:`~megasynth.utils.MegasynthError`), 3 stopped by
SIGTERM/SIGUSR1 after saving a checkpoint (rerun to resume). The stop handlers are installed as soon as the
runs are known (before torch loads), so a signal during start-up also ends in exit 3
(:mod:`megasynth.train.signals`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from megasynth.config import RunConfig, StudyConfig, apply_override, read_yaml
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, cli_error


def _study_root(run_file: Path, run: RunConfig, study_dir: str | None) -> Path:
    """The study directory of a run file: ``--study-dir``, else the one that holds ``runs/<run_id>/run.yaml``."""
    if study_dir:
        return Path(study_dir)
    d = run_file.resolve().parent
    if d.name != run.run_id or d.parent.name != "runs":
        raise MegasynthError(f"--study-dir: required, {run_file} is not at <study_dir>/runs/{run.run_id}/run.yaml")
    return d.parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megasynth.study.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="study file, or a run file runs/<run_id>/run.yaml")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ap.add_argument("--run", action="append", help="train only this run id (repeatable)")
    ap.add_argument("--mixture", action="append", help="train only the runs of this mixture (repeatable)")
    ap.add_argument("--study-dir", help="output directory (overrides study_dir; for a run file: its study)")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and parallel layout")
    ap.add_argument("--nproc", type=int, help="world size for --dry-run (default $WORLD_SIZE or 1)")
    args = ap.parse_intermixed_args(argv)

    from megasynth.study.runs import plan_runs, select_runs
    from megasynth.train.parallel import parallel_plan
    from megasynth.utils import setup_logging

    setup_logging()
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        overrides = list(args.overrides)
        data = read_yaml(args.config, "study file", overrides)
        cfg: StudyConfig | RunConfig
        if "run_id" in data:  # a run file
            cfg = RunConfig.from_dict(data)
            runs = select_runs([cfg], args.run, args.mixture)
            root = _study_root(Path(args.config), cfg, args.study_dir)
        else:
            if args.study_dir:
                overrides.append(f"study_dir={args.study_dir}")
                apply_override(data, overrides[-1])
            cfg = StudyConfig.from_dict(data)
            runs = select_runs(plan_runs(cfg), args.run, args.mixture)
            root = Path(cfg.study_dir)
        if args.dry_run:
            world = args.nproc or int(os.environ.get("WORLD_SIZE", "1"))
            plans = [parallel_plan(r, world) for r in runs]
            print("# resolved config")
            print(cfg.to_yaml(), end="")
            print("# parallel layout")
            ids = [r.run_id for r in runs]
            out = ({"runs": ids, **plans[0]} if plans and all(p == plans[0] for p in plans)
                   else {"runs": [{"run_id": i, **p} for i, p in zip(ids, plans)]})
            print(yaml.safe_dump(out, sort_keys=False), end="")
            return 0
        if all(r.train.checkpoint.exit_signal_handler for r in runs):
            # Before torch and megatron load: a SIGTERM/SIGUSR1 while the job starts stops it cleanly (exit 3).
            from megasynth.train.signals import install_stop_handlers

            install_stop_handlers()
        from megasynth.study.runner import prepare_study_dir, record_invocation
        from megasynth.train import TrainingInterrupted, train_one

        layout = StudyLayout.of(root)
        if rank0:
            if isinstance(cfg, StudyConfig):
                prepare_study_dir(cfg, args.config)
            record_invocation(layout, cfg, "launch", sys.argv[1:] if argv is None else argv, overrides, args.config)
        from megasynth.study.attempts import recorded_attempt

        try:
            for run in runs:  # attempt.json when it starts and ends; error.json when it fails (rank 0)
                with recorded_attempt(layout.run(run.run_id), run.run_id, enabled=rank0):
                    train_one(run, layout)
        except TrainingInterrupted as e:
            print(f"megasynth: {e}", file=sys.stderr)
            return 3
    except MegasynthError as e:
        return cli_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
