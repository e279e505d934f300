"""``sweep.executor: {type: slurm, ...}``: a sweep's tasks as one SLURM job array, one array task per sweep task.

:meth:`SlurmExecutor.run` writes an sbatch script, submits it (``sbatch``), and waits for the array
(polling ``squeue``), so ``megasynth sweep run`` blocks until every task has ended. The script is
``--array=0-(N-1)%K`` (``max_concurrent``) with the task's ``--time``, ``--nodes``, ``--gpus-per-node``
(only when ``gpus_per_task`` > 0: no GRES on CPU clusters), ``--cpus-per-task``, ``--requeue``,
``--signal=B:USR1@signal_before_s`` and ``--open-mode=append``; array task i runs its run files
(``runs/<run_id>/run.yaml``, written for every planned run before submission) in order with
``launch/train.sbatch``, the single-job launcher, so a sweep task behaves exactly like a training job:

- ``srun`` starts one ``torchrun`` per node (``--standalone`` on one node; c10d rendezvous on the first
  node of a multi-node task), one rank per GPU (``nproc_per_node`` ranks on CPU nodes);
- SIGUSR1 before the time limit: the script sends SIGTERM to the training step, every rank saves a
  checkpoint after its current step, and the script requeues *its own array task*
  (``scontrol requeue <array job>_<i>``); the requeued task skips its complete runs and resumes the
  interrupted one from that checkpoint. A SIGTERM from SLURM (``scontrol requeue``, preemption) is saved
  the same way (within the cluster's KillWait) and SLURM requeues the task;
- a run that fails does not stop the task's other runs; the launcher records it in ``runs/<run_id>/error.json``
  (and when a run ended without one, this executor writes it with the exit status, ``written_by: executor``).

Why generated sbatch scripts and not submitit (a well-kept library for submitting Python functions):
every rank must get the SIGTERM that triggers the collective checkpoint, and ``torchrun`` sits between
SLURM and the ranks: submitit sends its timeout signal (USR2) to every process of the step, which kills
``torchrun`` (it handles only TERM/INT/HUP/QUIT), while a batch-shell trap that signals the step with
SIGTERM is exactly what ``launch/train.sbatch`` already does for single jobs and is tested there; requeue
of one array task, multi-node ``srun`` + ``torchrun`` and the per-task logs are a few lines of sbatch;
users can read, edit and resubmit the script (``sbatch slurm/sweep-*.sbatch``: complete runs are
skipped), with no pickled Python state; and submitit learns job states from ``sacct``, which needs
SLURM accounting storage (many small clusters, and the test cluster of ``launch/slurm_cluster.sh``, run
without it), whereas here ``squeue`` shows what is still queued or running and the run directories'
markers say what is done. datatrove's ``SlurmPipelineExecutor`` likewise generates sbatch scripts.

Files, under the study directory:

- ``slurm/sweep-<UTC time>.sbatch``: the array script; ``slurm/sweep-<UTC time>.json``: its job id, the
  tasks by array index, and, once the array has ended, the runs done and failed per task;
- ``slurm/active.json``: the array ``sweep run`` waits for; a second ``sweep run`` while it is queued or
  running waits for it instead of submitting the same runs twice;
- ``logs/slurm/<task_id>.log``: the task's console (``launch/train.sbatch`` and its training steps),
  appended across requeues and resubmissions; ``logs/slurm/slurm-<array job>_<i>.out``: SLURM's own
  messages for array task i.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from megasynth.config.slurm import SlurmExecutorConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, Progress, atomic_path, is_done, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.study.sweep import SweepTask

logger = logging.getLogger("megasynth.study")

TRAIN_SBATCH = Path(__file__).resolve().parents[3] / "launch" / "train.sbatch"
"""The launcher every array task runs (``launch/train.sbatch`` of the megasynth checkout)."""

REQUIRED_COMMANDS = ("sbatch", "squeue", "scontrol")

ERROR_FILE = "error.json"
"""``runs/<run_id>/error.json``: why a run's last attempt failed (the launcher's record; this executor writes
it, ``written_by: executor``, for a run that ended without one)."""


def slurm_dir(layout: StudyLayout) -> Path:
    """``<study>/slurm/``: generated array scripts and their job records."""
    return layout.root / "slurm"


def task_log_dir(layout: StudyLayout) -> Path:
    """``<study>/logs/slurm/``: one log per sweep task, appended across requeues."""
    return layout.root / "logs" / "slurm"


def _utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class SlurmExecutor:
    """A sweep's tasks as one SLURM job array (see the module docstring).

    Args:
        cfg: ``sweep.executor`` (``type: slurm``): the sweep's ``ExecutorConfig`` (its ``slurm`` section
            and ``nproc_per_node``), or a :class:`~megasynth.config.slurm.SlurmExecutorConfig` itself.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.slurm: SlurmExecutorConfig = getattr(cfg, "slurm", cfg)
        self.nproc_per_node: int = getattr(cfg, "nproc_per_node", None) or 1

    @classmethod
    def check(cls, cfg: Any, where: str = "sweep.executor") -> None:
        """Fail before anything is written when the array cannot be submitted from here.

        Raises:
            MegasynthError: ``sweep.executor.type: slurm needs `sbatch` on PATH, not found ...`` (also
                ``squeue``, ``scontrol``), ``launch/train.sbatch`` missing, or an invalid field (named).
        """
        getattr(cfg, "slurm", cfg).validate(where)
        for command in REQUIRED_COMMANDS:
            if shutil.which(command) is None:
                raise MegasynthError(f"{where}.type: slurm needs `{command}` on PATH, not found (run on a SLURM "
                                     "login node, or use type: local / torchrun)")
        if not TRAIN_SBATCH.is_file():
            raise MegasynthError(f"{where}.type: slurm runs every task with {TRAIN_SBATCH}, not found (run from a "
                                 "megasynth checkout)")

    # ------------------------------------------------------------------ resources
    @property
    def ranks_per_node(self) -> int:
        """One rank per GPU; on CPU nodes ``nproc_per_node``."""
        return self.slurm.gpus_per_task or self.nproc_per_node

    @property
    def cpus_per_node(self) -> int:
        return self.slurm.cpus_per_task or self.ranks_per_node

    def sbatch_options(self, n_tasks: int, logs: Path) -> list[str]:
        """The ``#SBATCH`` options of an array of ``n_tasks`` tasks (in this order)."""
        s = self.slurm
        array = f"0-{n_tasks - 1}" + (f"%{s.max_concurrent}" if s.max_concurrent else "")
        opts = [f"--job-name={s.job_name}", f"--array={array}", f"--nodes={s.nodes_per_task}", "--ntasks-per-node=1",
                f"--cpus-per-task={self.cpus_per_node}"]
        if s.gpus_per_task:
            opts.append(f"--gpus-per-node={s.gpus_per_task}")
        opts.append(f"--time={s.time_limit}")
        if s.partition:
            opts.append(f"--partition={s.partition}")
        if s.account:
            opts.append(f"--account={s.account}")
        opts += ["--requeue", f"--signal=B:USR1@{s.signal_before_s}", "--open-mode=append",
                 f"--output={logs}/slurm-%A_%a.out", f"--chdir={os.getcwd()}", *s.extra_sbatch]
        return opts

    # ------------------------------------------------------------------ the script
    def script(self, tasks: list[tuple[str, list[Path]]], layout: StudyLayout, stamp: str) -> str:
        """The array script for ``tasks`` (``[(task_id, [run file, ...]), ...]``, array index = position)."""
        logs = task_log_dir(layout).resolve()
        s = self.slurm
        q = shlex.quote
        lines = [
            "#!/usr/bin/env bash",
            f"# megasynth sweep of {layout.root.resolve()}: {len(tasks)} task(s), one array task each. Generated by",
            f"# megasynth.study.executors.slurm at {stamp}; resubmitting it by hand (sbatch THIS_FILE) is safe:",
            "# complete runs are skipped, interrupted ones resume. Array task i trains its run files in order with",
            "# launch/train.sbatch (signals, checkpoint, requeue: see there). Its log, appended across requeues:",
            f"# {logs}/<task_id>.log",
            *[f"#SBATCH {opt}" for opt in self.sbatch_options(len(tasks), logs)],
            "set -uo pipefail",
            'case "${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch}" in',
        ]
        for i, (task_id, files) in enumerate(tasks):
            lines.append(f"  {i}) task={q(task_id)}; runs=({' '.join(q(str(f)) for f in files)}) ;;")
        lines += [
            '  *) echo "no array task $SLURM_ARRAY_TASK_ID in this script" >&2; exit 2 ;;',
            "esac",
            f'exec >>{q(str(logs))}/"$task.log" 2>&1',
            'echo "$(date -u +%FT%TZ) sweep task $task: array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}'
            ' (job $SLURM_JOB_ID), attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )), ${#runs[@]} run(s)"',
            f"export NPROC_PER_NODE={self.ranks_per_node}",
            f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={s.signal_before_s}",
            "unset OMP_NUM_THREADS  # launch/train.sbatch derives it from the CPUs of the allocation",
        ]
        if s.container_image:
            lines += [f"export MEGASYNTH_IMAGE={q(s.container_image)}", "unset MEGASYNTH_PYTHON"]
        else:
            lines += ["unset MEGASYNTH_IMAGE", f"export MEGASYNTH_PYTHON={q(sys.executable)}"]
        lines.append(f'exec bash {q(str(TRAIN_SBATCH))} "${{runs[@]}}"')
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ running
    def run(self, tasks: list["SweepTask"], layout: StudyLayout, cfg: Any = None) -> None:  # noqa: ARG002
        """Submit the tasks that are not complete as one array and wait until it has ended.

        ``tasks``: objects with ``task_id`` and ``run_ids`` (:class:`megasynth.study.sweep.SweepTask`), each
        run's ``runs/<run_id>/run.yaml`` already written. A task whose runs are all complete is not submitted;
        when none is left, nothing is. Failed runs are recorded (``runs/<run_id>/error.json``) and logged; the
        call still returns normally.

        Raises:
            MegasynthError: a missing run file, a task id that is not a file name, ``sbatch`` rejecting the
                script (its message; the script and record are removed), or as :meth:`check`.
            KeyboardInterrupt: while waiting; the array keeps running and a later call waits for it.
        """
        self.check(self.cfg)
        self.wait_active(layout)
        pending: list[tuple[str, list[Path]]] = []
        for task in tasks:
            if not task.task_id or "/" in task.task_id or task.task_id in (".", "..") or any(
                    c.isspace() for c in task.task_id):
                raise MegasynthError(f"sweep task {task.task_id!r}: task id must be a file name without spaces")
            files = [layout.run(r).config.resolve() for r in task.run_ids]
            for f in files:
                if not f.is_file():
                    raise MegasynthError(f"{f}: run file not found (the sweep writes every run file before "
                                         "submitting)")
            if not all(is_done(layout.run(r).summary) for r in task.run_ids):
                pending.append((task.task_id, files))
        if not pending:
            logger.info("slurm: all %d task(s) complete, nothing to submit", len(tasks))
            return
        record = self.submit(pending, layout)
        self.wait(record, layout)

    def submit(self, tasks: list[tuple[str, list[Path]]], layout: StudyLayout) -> dict:
        """Write the array script for ``tasks`` and ``sbatch`` it; return its record (also ``slurm/active.json``).

        Raises:
            MegasynthError: ``sbatch`` failed (its message).
        """
        now = _utc()
        stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
        sdir, logs = slurm_dir(layout), task_log_dir(layout)
        sdir.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        script = sdir / f"sweep-{stamp}.sbatch"
        with atomic_path(script) as tmp:
            tmp.write_text(self.script(tasks, layout, now.isoformat(timespec="seconds")))
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
        job = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 or not job.isdigit():
            script.unlink()
            msg = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
            raise MegasynthError(f"sweep.executor: sbatch rejected the array script: {msg}")
        record = {"job_id": job, "script": str(script), "submitted": now.isoformat(timespec="seconds"),
                  "host": socket.gethostname(), "log_dir": str(logs.resolve()),
                  "tasks": [{"index": i, "task_id": t, "run_ids": [f.parent.name for f in files],
                             "run_files": [str(f) for f in files]} for i, (t, files) in enumerate(tasks)]}
        write_json(script.with_suffix(".json"), record)
        write_json(sdir / "active.json", {**record, "record": str(script.with_suffix(".json"))})
        s = self.slurm
        logger.info("slurm: submitted array job %s: %d task(s) of %d node(s) x %d rank(s), %d min each%s; script %s; "
                    "task logs %s/<task_id>.log", job, len(tasks), s.nodes_per_task, self.ranks_per_node, s.time_limit,
                    f", {s.max_concurrent} at once" if s.max_concurrent else "", script, logs)
        return record

    def wait_active(self, layout: StudyLayout) -> None:
        """Wait for an array that an earlier ``sweep run`` submitted and that is still queued or running."""
        active = slurm_dir(layout) / "active.json"
        if not active.is_file():
            return
        record = json.loads(active.read_text())
        if queued_tasks(record["job_id"]):
            logger.info("slurm: array job %s submitted at %s is still queued or running: waiting for it",
                        record["job_id"], record.get("submitted"))
            self.wait(record, layout)
        else:
            self.finish(record, layout)

    def wait(self, record: dict, layout: StudyLayout) -> None:
        """Poll ``squeue`` every ``poll_interval_s`` until no task of the array is left; then :meth:`finish`."""
        job = record["job_id"]
        run_ids = [r for t in record["tasks"] for r in t["run_ids"]]
        progress = Progress(f"slurm array {job}", total=len(run_ids), unit="runs", every_s=60.0)
        done = sum(is_done(layout.run(r).summary) for r in run_ids)
        progress.update(done)
        last_states = None
        try:
            while True:
                states = queued_tasks(job)
                now_done = sum(is_done(layout.run(r).summary) for r in run_ids)
                progress.update(now_done - done)
                done = now_done
                if states is not None:
                    if not states:
                        break
                    summary = _count(states.values())
                    if summary != last_states:
                        logger.info("slurm: array job %s: %s; %d/%d runs done", job, summary, done, len(run_ids))
                        last_states = summary
                time.sleep(self.slurm.poll_interval_s)
        except KeyboardInterrupt:
            logger.warning("slurm: array job %s keeps running (scancel %s stops it); `megasynth sweep run` again "
                           "waits for it", job, job)
            raise
        progress.close()
        self.finish(record, layout)

    def finish(self, record: dict, layout: StudyLayout) -> dict:
        """Record the outcome of an ended array: per task the runs done and failed; ``error.json`` for a failed
        run that has none (its first error line from the task log). Removes ``slurm/active.json``.

        Returns:
            ``{task_id: {"done": [...], "failed": [...], "log": path}}``.
        """
        logs = Path(record["log_dir"])
        outcome: dict[str, dict] = {}
        for task in record["tasks"]:
            log = logs / f"{task['task_id']}.log"
            done = [r for r in task["run_ids"] if is_done(layout.run(r).summary)]
            failed = [r for r in task["run_ids"] if r not in done]
            for run_id, run_file in zip(task["run_ids"], task["run_files"]):
                if run_id not in failed:
                    continue
                error, (why, status) = layout.run(run_id).dir / ERROR_FILE, log_error(log, run_file)
                if not error.is_file():
                    _write_error(error, run_id, why, status, record["job_id"], task["index"])
                logger.error("slurm: run %s of task %s did not finish (array task %s_%d): %s; log %s", run_id,
                             task["task_id"], record["job_id"], task["index"], why, log)
            outcome[task["task_id"]] = {"done": done, "failed": failed, "log": str(log)}
        path = Path(record["script"]).with_suffix(".json")
        write_json(path, {**{k: v for k, v in record.items() if k != "record"}, "ended": _utc().isoformat(
            timespec="seconds"), "outcome": outcome})
        active = slurm_dir(layout) / "active.json"
        if active.is_file() and json.loads(active.read_text()).get("job_id") == record["job_id"]:
            active.unlink()
        n_failed = sum(len(o["failed"]) for o in outcome.values())
        logger.info("slurm: array job %s ended: %d run(s) done, %d not finished", record["job_id"],
                    sum(len(o["done"]) for o in outcome.values()), n_failed)
        return outcome


def queued_tasks(job_id: str) -> Optional[dict[str, str]]:
    """``{array task id: state}`` of the array's tasks that SLURM still lists (pending, running, completing,
    requeued), ``{}`` when none is left, None when ``squeue`` could not be asked (try again later)."""
    proc = subprocess.run(["squeue", "-h", "-r", "-j", str(job_id), "-o", "%i %T"], capture_output=True, text=True)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return {}
        logger.warning("slurm: squeue failed (%s); retrying", " ".join(proc.stderr.split())[:200])
        return None
    return dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())


def _count(states) -> str:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


_ERROR = re.compile(r"(megasynth: error: .*|\w*(Error|Exception)\b.*|.*\bfailed\b.*|.*CANCELLED.*|.*TIME LIMIT.*)")
_STATUS = re.compile(r": failed \(status (\d+)\)")


def log_error(log: Path, run_file: str) -> tuple[str, Optional[int]]:
    """Why ``run_file`` did not finish, from its task log: ``(line, exit status or None)``. The line comes from
    the run's last attempt (after its last ``<run file>: training`` line): the last ``megasynth: error: ...``,
    else the last exception, ``failed`` or SLURM ``CANCELLED`` line, else a note that the log has none; the
    status from ``launch/train.sbatch``'s ``<run file>: failed (status N)``."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"no task log {log}", None
    start = max((i for i, line in enumerate(text) if f"{run_file}: training" in line), default=None)
    if start is None:
        return "never started (its array task ended before this run)", None
    own, other, status = "", "", None  # megasynth's own one-line error first, else the last other error line
    for line in text[start + 1:]:
        if "train.sbatch: " in line and ": training" in line and run_file not in line:
            break
        m = _ERROR.search(line)
        if m and "train.sbatch: " not in line:
            if m.group(0).startswith("megasynth: error: "):
                own = m.group(0).strip()
            else:
                other = m.group(0).strip()
        m = _STATUS.search(line)
        if m and run_file in line:
            status = int(m.group(1))
    return (own or other)[:300] or "ended without finishing and without an error line (see the task log)", status


def _write_error(path: Path, run_id: str, error: str, status: Optional[int], job_id: str, index: int) -> None:
    """``runs/<run_id>/error.json`` for a run that ended without one (the format of the launcher's records)."""
    write_json(path, {"run_id": run_id, "error": error, "type": "ExitStatus", "exit_code": status, "traceback": [],
                      "host": socket.gethostname(), "pid": os.getpid(), "utc": _utc().isoformat(timespec="seconds"),
                      "written_by": "executor", "slurm": {"array_job_id": job_id, "array_task_id": index}})
