"""What a vLLM engine leaves in ``/dev/shm`` when its process is killed, recorded and removed by a rerun.

vLLM's offline engine creates POSIX shared memory (``psm_*`` segments of its message queues, a ``sem.mp-*``
semaphore of ``multiprocessing``) and removes them on a clean shutdown; ``kill -9`` of the process group
leaves them behind (about 400 MiB per engine on CPU). So:

- :meth:`EngineShm.start` / :meth:`EngineShm.started` bracket an engine start: the ``/dev/shm`` entries that
  appeared in between, minus any that a process outside this process tree maps or holds open (another
  program's), are written to ``engines/<host>-<pid>.json`` in the study directory with this process's pid and
  start time;
- :meth:`EngineShm.release` after a clean shutdown removes whatever of those is still there and no live
  process holds, then the record;
- :func:`cleanup_dead_engines` (at the start of a generate run) does the same for every record of this host
  whose process is gone (its pid is not running, or runs a process with another start time).

Nothing else in ``/dev/shm`` is ever touched: only recorded names, only when their recorder is dead, and
only when no live process maps or holds them (``/proc/<pid>/maps`` and ``/proc/<pid>/fd``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterable, Optional

from megasynth.utils import read_json, write_json

logger = logging.getLogger("megasynth.generate")

SHM_DIR = Path("/dev/shm")


def shm_entries(root: Path = SHM_DIR) -> set[str]:
    """Names in ``/dev/shm`` (empty where it does not exist)."""
    try:
        return set(os.listdir(root))
    except OSError:
        return set()


def process_start_time(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), ``None`` if not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def alive(pid: int, start_time: Optional[int]) -> bool:
    """Whether process ``pid`` runs and (when ``start_time`` is known) is the same process as recorded."""
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def holders(root: Path = SHM_DIR) -> dict[str, set[int]]:
    """``{name in /dev/shm: pids that map it or hold it open}`` over every process this user may inspect."""
    out: dict[str, set[int]] = {}
    prefix = str(root) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find(prefix)
                    if i >= 0:
                        name = line[i + len(prefix):].strip().removesuffix(" (deleted)")
                        out.setdefault(name, set()).add(pid)
        except OSError:
            pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    out.setdefault(target[len(prefix):].removesuffix(" (deleted)"), set()).add(pid)
        except OSError:
            pass
    return out


def process_tree(pid: int) -> set[int]:
    """``pid`` and all its descendants (``/proc/<pid>/task/*/children``)."""
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                try:
                    todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
                except OSError:
                    pass
        except OSError:
            pass
    return seen


def _remove_unheld(names: Iterable[str], root: Path = SHM_DIR) -> list[str]:
    """Unlink those of ``names`` that exist and that no live process maps or holds; return the removed ones."""
    present = [n for n in names if (root / n).exists()]
    if not present:
        return []
    held = holders(root)
    removed = []
    for n in present:
        if held.get(n):
            logger.info("/dev/shm/%s is in use by pid %s: left alone", n, sorted(held[n]))
            continue
        try:
            (root / n).unlink()
            removed.append(n)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("could not remove /dev/shm/%s: %s", n, e)
    return removed


class EngineShm:
    """The ``/dev/shm`` record of one engine started by this process (see the module docstring)."""

    def __init__(self, record_dir: Path, root: Path = SHM_DIR):
        self.record_dir, self.root = Path(record_dir), root
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.path = self.record_dir / f"{self.host}-{self.pid}.json"
        self.segments: list[str] = []
        self._before: set[str] = set()

    def start(self) -> None:
        """Call just before the engine starts."""
        self._before = shm_entries(self.root)

    def started(self, what: str = "") -> list[str]:
        """Call once the engine has started: record the segments it made; return them."""
        new = shm_entries(self.root) - self._before
        if new:
            mine = process_tree(self.pid)
            held = holders(self.root)
            new = {n for n in new if not (held.get(n, set()) - mine)}  # held only by others: not ours
        previous = read_json(self.path).get("segments", []) if self.path.exists() else []
        self.segments = sorted(set(previous) | new)
        write_json(self.path, {"host": self.host, "pid": self.pid, "start_time": process_start_time(self.pid),
                               "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engine": what,
                               "segments": self.segments})
        logger.info("vLLM engine made %d /dev/shm segment(s) (recorded in %s): %s", len(self.segments), self.path,
                    ", ".join(self.segments) or "none")
        return self.segments

    def release(self) -> list[str]:
        """After the engine's shutdown: remove its segments that are still there and unheld, then the record."""
        removed = _remove_unheld(self.segments, self.root)
        if removed:
            logger.info("removed %d /dev/shm segment(s) the engine left: %s", len(removed), ", ".join(removed))
        self.path.unlink(missing_ok=True)
        return removed


def cleanup_dead_engines(record_dir: Path, root: Path = SHM_DIR) -> list[str]:
    """Remove the recorded ``/dev/shm`` segments of this host's engines whose process is gone; return them.

    Records of live processes (another run of the same study) and of other hosts are left as they are.
    """
    record_dir = Path(record_dir)
    if not record_dir.is_dir():
        return []
    host = socket.gethostname()
    removed: list[str] = []
    for path in sorted(record_dir.glob(f"{host}-*.json")):
        try:
            rec = read_json(path)
        except Exception:  # an unreadable record: leave it, and every segment, alone
            logger.warning("%s: unreadable engine record; left alone", path)
            continue
        if rec.get("host") != host or not isinstance(rec.get("pid"), int):
            continue
        if alive(rec["pid"], rec.get("start_time")):
            continue
        gone = _remove_unheld(rec.get("segments", []), root)
        removed += gone
        path.unlink(missing_ok=True)
        logger.info("engine of pid %d (%s) is gone: removed %d of its %d recorded /dev/shm segment(s)%s",
                    rec["pid"], path.name, len(gone), len(rec.get("segments", [])),
                    f": {', '.join(gone)}" if gone else "")
    return removed
