"""What a run directory says about the run's attempts: ``attempt.json``, ``error.json``, and the state a status
table shows (pending / running / done / failed). Torch-free.

``runs/<run_id>/attempt.json`` (written by the launcher, rank 0, when a run that is not complete starts, and
rewritten when it ends): ``run_id``, ``host``, ``pid``, ``start`` (UTC ISO time), ``slurm`` (``job_id``,
``array_job_id``, ``array_task_id``, ``restart_count`` from the environment; absent keys are null),
``world_size``, ``previous_error`` (the first line of the ``error.json`` it replaced, or null); at the end also
``end``, ``exit_code`` (0 done, 2 bad input, 3 stopped by a signal after a checkpoint, 1 other errors) and
``state`` (``done``, ``interrupted``, ``failed``).

``runs/<run_id>/error.json`` (written when an attempt fails; removed when the next attempt starts):
``run_id``, ``error`` (one line), ``type`` (exception class), ``exit_code``, ``traceback`` (the last lines),
``host``, ``pid``, ``utc``, and ``written_by`` (``launcher``, or ``executor`` when the launcher died without
writing one).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Optional

import psutil

from megasynth.layout import RunLayout
from megasynth.utils import MegasynthError, is_done, write_json

SLURM_ENV = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
             "restart_count": "SLURM_RESTART_COUNT"}


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def write_error(files: RunLayout, run_id: str, error: BaseException | str, exit_code: int,
                written_by: str = "launcher") -> None:
    """Write ``error.json`` of run ``run_id`` (atomically)."""
    if isinstance(error, BaseException):
        message = first_line(error) or type(error).__name__
        kind = type(error).__name__
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__)).splitlines()[-30:]
    else:
        message, kind, tb = first_line(error), "ExitStatus", []
    write_json(files.error, {"run_id": run_id, "error": message, "type": kind, "exit_code": exit_code,
                             "traceback": tb, "host": socket.gethostname(), "pid": os.getpid(), "utc": _utc(),
                             "written_by": written_by})


@contextlib.contextmanager
def recorded_attempt(files: RunLayout, run_id: str, enabled: bool = True) -> Iterator[None]:
    """Record one attempt of run ``run_id`` around the block that trains it (``attempt.json``, ``error.json``).

    Nothing is recorded when ``enabled`` is False (ranks other than 0) or the run is already complete (the
    block then only skips it). On :class:`megasynth.train.TrainingInterrupted` the attempt ends
    ``interrupted`` (exit 3) without an error record; on any other exception ``error.json`` is written and
    the exception propagates.
    """
    if not enabled or is_done(files.summary):
        yield
        return
    previous = _read(files.error)
    files.dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "start": _utc(),
        "slurm": {k: os.environ.get(v) for k, v in SLURM_ENV.items()},
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "previous_error": previous.get("error") if previous else None}
    write_json(files.attempt, record)
    if files.error.exists():
        files.error.unlink()
    try:
        yield
    except BaseException as e:
        from megasynth.train.signals import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):
            state, code = "interrupted", 3
        else:
            state, code = "failed", 2 if isinstance(e, MegasynthError) else 130 if isinstance(e, KeyboardInterrupt) else 1
            write_error(files, run_id, e, code)
        write_json(files.attempt, {**record, "end": _utc(), "exit_code": code, "state": state})
        raise
    write_json(files.attempt, {**record, "end": _utc(), "exit_code": 0, "state": "done"})


def _last_jsonl(path: Path) -> Optional[dict]:
    """The last complete JSON line of ``path`` (read from the end), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            return rec
    return None


def run_state(files: RunLayout, train_iters: Optional[int] = None) -> dict[str, Any]:
    """The state of the run in ``files`` from its directory alone.

    Returns:
        ``{"state", "step", "total", "last_loss", "wall_s", "error"}``: ``state`` is ``done`` (``summary.json``
        marked), ``failed`` (``error.json`` present), ``running`` (an attempt without an end whose process is
        alive: checked by pid on this host, trusted on another host), else ``pending``; ``step`` the last
        logged step, ``total`` ``train_iters`` (argument, else ``run.yaml``'s), ``last_loss`` its training loss,
        ``wall_s`` the summary's wall time when done, else the running attempt's age, ``error`` the first line
        of ``error.json``.
    """
    out: dict[str, Any] = {"state": "pending", "step": None, "total": train_iters, "last_loss": None, "wall_s": None,
                           "error": ""}
    if out["total"] is None and files.config.is_file():
        import yaml

        try:
            out["total"] = int(yaml.safe_load(files.config.read_text())["train"]["train_iters"])
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
            pass
    last = _last_jsonl(files.metrics)
    if last is not None:
        out["step"], out["last_loss"] = last.get("step"), last.get("loss")
    if is_done(files.summary):
        summary = _read(files.summary) or {}
        out.update(state="done", wall_s=summary.get("wall_s"), step=summary.get("train_iters", out["step"]),
                   last_loss=summary.get("final_train_loss", out["last_loss"]))
        return out
    error = _read(files.error)
    if error is not None:
        out.update(state="failed", error=first_line(error.get("error", "")))
        return out
    attempt = _read(files.attempt)
    if attempt is not None and "end" not in attempt:
        here = attempt.get("host") == socket.gethostname()
        if not here or psutil.pid_exists(int(attempt.get("pid", -1))):
            out["state"] = "running"
            try:
                start = datetime.datetime.fromisoformat(attempt["start"])
                out["wall_s"] = round(time.time() - start.timestamp(), 1)
            except (KeyError, ValueError):
                pass
    return out
