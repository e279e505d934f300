"""The executor interface, and the pool of subprocess slots that the ``local`` and ``torchrun`` executors share.

A task (:class:`~megasynth.study.sweep.SweepTask`) is an ordered list of run ids whose run files
(``runs/<run_id>/run.yaml``) exist. Tasks start longest first (their runs' FLOPs; Graham's LPT rule, so the
slots finish close together). A slot runs one task at a time, its runs one after another, each as a
subprocess (``python -m megasynth.study.launch <run file>``, or that under ``torchrun``) in its own session,
with its console output appended to ``logs/runs/<run_id>.log``. Complete runs are skipped without starting a
process. A run that fails is recorded (the launcher writes ``runs/<run_id>/error.json``; when it died
without one, the pool writes it with the exit status) and the pool goes on with the others; a branch whose
trunk failed in this invocation is recorded as failed without being started. On Ctrl-C the pool sends
SIGTERM to every running run (each saves a checkpoint after its current step and exits 3), waits for them,
and raises :class:`KeyboardInterrupt`.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from megasynth.config import ExecutorConfig, RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.study.attempts import first_line, write_error
from megasynth.utils import is_done

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.study.sweep import SweepTask

logger = logging.getLogger("megasynth.study")

EXIT_INTERRUPTED = 3
"""Exit status of the launcher after a signal checkpoint (``megasynth.study.launch``)."""


def launch_argv(run_file: str | os.PathLike) -> list[str]:
    """``python -m megasynth.study.launch <run file>`` with this interpreter."""
    return [sys.executable, "-m", "megasynth.study.launch", str(run_file)]


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask, as SLURM and taskset set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Executor:
    """Runs a sweep's tasks (see :mod:`megasynth.study.executors`)."""

    def __init__(self, cfg: ExecutorConfig):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: ExecutorConfig) -> None:
        """Raise :class:`~megasynth.utils.MegasynthError` (naming the field) if this executor cannot run here;
        called before anything is written."""

    def run(self, tasks: list["SweepTask"], layout: StudyLayout, cfg: StudyConfig) -> None:
        """Run ``tasks`` of study ``cfg`` in ``layout`` (blocking)."""
        raise NotImplementedError


class SubprocessExecutor(Executor):
    """``slots()`` tasks at once on this machine, each run a subprocess (``command``, ``environ``)."""

    def slots(self) -> int:
        return self.cfg.jobs

    def command(self, run_file: Path) -> list[str]:
        return launch_argv(run_file)

    def environ(self, slot: int) -> dict[str, str]:
        """Extra environment of the runs of ``slot`` (0-based)."""
        return {}

    # ------------------------------------------------------------------ the pool
    def run(self, tasks: list["SweepTask"], layout: StudyLayout, cfg: StudyConfig) -> None:
        from megasynth.study.sweep import plan_vocab_size, run_flops

        runs = {r.run_id: r for r in _runs_of(layout, tasks)}
        todo = [t for t in tasks if not all(is_done(layout.run(i).summary) for i in t.run_ids)]
        # Longest tasks first (LPT), so the slots finish together: cost = the FLOPs of the runs not done.
        vocab = plan_vocab_size(cfg, layout)[0]
        todo.sort(key=lambda t: -sum(run_flops(runs[i], vocab) for i in t.run_ids
                                     if i in runs and not is_done(layout.run(i).summary)))
        total = sum(len(t.run_ids) for t in tasks)
        self.outcome: dict[str, str] = {i: "done" for t in tasks for i in t.run_ids
                                        if is_done(layout.run(i).summary)}
        """Run id -> ``done``, ``failed`` or ``interrupted`` (complete runs: ``done``)."""
        self.walls: dict[str, float] = {}
        """Run id -> wall seconds of its launcher process in this invocation."""
        if len(self.outcome):
            logger.info("%d of %d runs complete, skipped", len(self.outcome), total)
        if not todo:
            return
        slots = max(1, min(self.slots(), len(todo)))
        logger.info("running %d task(s) (%d runs) in %d slot(s)", len(todo), total - len(self.outcome), slots)
        work: "queue.Queue[SweepTask]" = queue.Queue()
        for t in todo:
            work.put(t)
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._start, self._finished, self._to_run = time.monotonic(), 0, total - len(self.outcome)
        threads = [threading.Thread(target=self._slot, args=(k, work, layout, runs), name=f"slot-{k}", daemon=True)
                   for k in range(slots)]
        for th in threads:
            th.start()
        try:
            while any(th.is_alive() for th in threads):
                for th in threads:
                    th.join(timeout=0.5)
        except KeyboardInterrupt:
            self._stopping.set()
            with self._lock:
                children = list(self._children.values())
            logger.warning("interrupted: sending SIGTERM to %d running run(s); each saves a checkpoint and stops",
                           len(children))
            for p in children:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for th in threads:
                th.join()
            raise
        failed = [i for i, s in self.outcome.items() if s == "failed"]
        logger.info("sweep executor: %d done, %d failed, %d not run, in %.0fs", sum(
            s == "done" for s in self.outcome.values()), len(failed), total - len(self.outcome),
            time.monotonic() - self._start)

    def _slot(self, slot: int, work: "queue.Queue[SweepTask]", layout: StudyLayout, runs: dict[str, RunConfig]) -> None:
        while not self._stopping.is_set():
            try:
                task = work.get_nowait()
            except queue.Empty:
                return
            for run_id in task.run_ids:
                if self._stopping.is_set():
                    return
                files = layout.run(run_id)
                if is_done(files.summary):
                    self.outcome[run_id] = "done"
                    continue
                src = runs[run_id].train.branch_from if run_id in runs else None
                if src is not None and self.outcome.get(src.run_id) in ("failed", "interrupted"):
                    write_error(files, run_id, f"not started: the run it branches from, {src.run_id}, "
                                f"{self.outcome[src.run_id]} in this sweep (see runs/{src.run_id}/)", -1, "executor")
                    self._done(run_id, "failed", 0.0, "its trunk failed")
                    continue
                self._done(run_id, *self._launch(slot, run_id, layout))

    def _launch(self, slot: int, run_id: str, layout: StudyLayout) -> tuple[str, float, str]:
        files = layout.run(run_id)
        log_path = layout.run_log(run_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command(files.config)
        env = {**os.environ, **self.environ(slot)}
        t0 = time.monotonic()
        with open(log_path, "ab") as log:
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            log.write(f"=== {stamp} slot {slot}: {' '.join(argv)}\n".encode())
            log.flush()
            with self._lock:
                if self._stopping.is_set():
                    return "interrupted", 0.0, ""
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                self._children[proc.pid] = proc
            logger.info("%s: started (slot %d, pid %d, log %s)", run_id, slot, proc.pid, log_path)
            rc = proc.wait()
            with self._lock:
                self._children.pop(proc.pid, None)
        wall = time.monotonic() - t0
        if rc == 0:
            return "done", wall, ""
        if rc == EXIT_INTERRUPTED:
            return "interrupted", wall, "stopped by a signal after a checkpoint; rerun to resume"
        if not files.error.exists():
            write_error(files, run_id, f"exit status {rc} without an error record; last log line: "
                        f"{_last_line(log_path)}", rc, "executor")
        return "failed", wall, _error_line(files.error)

    def _done(self, run_id: str, state: str, wall: float, why: str) -> None:
        with self._lock:
            self.outcome[run_id] = state
            self.walls[run_id] = wall
            self._finished += 1
            n, total = self._finished, self._to_run
            elapsed = time.monotonic() - self._start
        eta = elapsed / n * (total - n) if n else float("nan")
        logger.info("%s: %s in %.0fs%s [%d/%d runs, elapsed %.0fs, ETA %.0fs]", run_id, state, wall,
                    f" ({why})" if why else "", n, total, elapsed, eta)


def _runs_of(layout: StudyLayout, tasks: list["SweepTask"]) -> list[RunConfig]:
    """The run configs of ``tasks``, read from their run files."""
    out = []
    for t in tasks:
        for run_id in t.run_ids:
            path = layout.run(run_id).config
            if path.is_file():
                out.append(RunConfig.from_yaml(path))
    return out


def _error_line(path: Path) -> str:
    import json

    try:
        return first_line(json.loads(path.read_text()).get("error", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _last_line(path: Path, max_bytes: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
