"""What a vLLM engine leaves in ``/dev/shm`` when its process is killed, recorded and removed by a rerun.

vLLM's offline engine creates POSIX shared memory (``psm_*`` segments of its message queues, ``sem.mp-*``
semaphores of ``multiprocessing``) and removes them on a clean shutdown; ``kill -9`` of the process group
leaves them behind (about 400 MiB per engine on CPU). Which entries of a shared ``/dev/shm`` are this
engine's is learnt two ways, neither of which can claim another program's:

- **Registrations.** Python's ``multiprocessing`` registers every named semaphore and shared-memory segment a
  process creates with a *resource tracker* process, which every process spawned from it shares (vLLM's engine
  core and workers included) and which unlinks what is left when they have all exited. Before the first engine
  starts, :func:`start_tracker` starts that tracker itself (:func:`tracker_main`: the standard protocol and
  clean-up, plus an append-only log of each ``REGISTER``/``UNREGISTER`` in ``engines/<host>-<pid>.registered``).
  A ``kill -9`` of the process group kills the tracker too (hence the leak); its log survives.
- **Held segments.** The ``/dev/shm`` entries that appeared during the engine start and that a process of this
  process tree maps or holds open (``/proc/<pid>/maps``, ``/proc/<pid>/fd``) right after it.

:meth:`EngineShm.started` writes ``engines/<host>-<pid>.json`` (pid, start time, held segments);
:meth:`EngineShm.release` after a clean shutdown removes those of its segments (held or registered and not
unregistered) that are still there and that no live process maps or holds, then the record;
:func:`cleanup_dead_engines` (at the start of every generate run) does the same for every record of this host
whose process is gone (its pid is not running, or runs a process with another start time). Nothing else in
``/dev/shm`` is ever touched.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
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


_TRACKER: dict = {}  # this process's own resource tracker: {"pid", "log"}


def start_tracker(log: Path) -> bool:
    """Start this process's ``multiprocessing`` resource tracker as :func:`tracker_main` logging to ``log``.

    Returns True if the tracker is ours (started now, or earlier with the same log); False when another
    tracker already runs for this process (then only held segments are recorded).
    """
    from multiprocessing import resource_tracker as rt
    from multiprocessing import spawn, util

    tracker = rt._resource_tracker
    if getattr(tracker, "_fd", None) is not None:
        return _TRACKER.get("pid") == getattr(tracker, "_pid", None) and _TRACKER.get("log") == str(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    r, w = os.pipe()
    fds = [r]
    try:
        fds.append(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):
        pass
    exe = spawn.get_executable()
    args = [exe, *util._args_from_interpreter_flags(), "-c",
            f"from megasynth.generate.shm import tracker_main; tracker_main({r}, {str(log)!r})"]
    mask = hasattr(signal, "pthread_sigmask")
    try:
        if mask:  # as the standard tracker: no SIGINT/SIGTERM before it ignores them
            signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
        pid = util.spawnv_passfds(exe, args, fds)
    except BaseException:
        os.close(w)
        raise
    finally:
        if mask:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
        os.close(r)
    tracker._fd, tracker._pid = w, pid
    _TRACKER.update(pid=pid, log=str(log))
    return True


def tracker_main(fd: int, log: str) -> None:
    """The resource tracker process (the protocol of ``multiprocessing.resource_tracker.main``): read
    ``REGISTER|UNREGISTER|PROBE:<name>:<type>`` lines until every writer has exited, append each (un)registration
    to ``log``, then unlink what is still registered."""
    from multiprocessing import resource_tracker as rt

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
    for f in (sys.stdin, sys.stdout):
        try:
            f.close()
        except Exception:
            pass
    cache: dict[str, set] = {rtype: set() for rtype in rt._CLEANUP_FUNCS}
    try:
        with open(fd, "rb") as f, open(log, "a", encoding="ascii") as out:
            for line in f:
                try:
                    cmd, name, rtype = line.strip().decode("ascii").split(":")
                except ValueError:
                    continue
                if rtype not in cache or cmd == "PROBE":
                    continue
                if cmd == "REGISTER":
                    cache[rtype].add(name)
                elif cmd == "UNREGISTER":
                    cache[rtype].discard(name)
                else:
                    continue
                out.write(f"{cmd} {rtype} {name}\n")
                out.flush()
    finally:
        for rtype, names in cache.items():
            for name in names:
                try:
                    rt._CLEANUP_FUNCS[rtype](name)
                except FileNotFoundError:
                    pass
                except Exception as e:  # pragma: no cover
                    print(f"resource tracker: {name}: {e}", file=sys.stderr)


def registered(log: Path) -> list[str]:
    """``/dev/shm`` names that ``log`` (of :func:`tracker_main`) shows registered and not unregistered."""
    live: dict[str, None] = {}
    try:
        lines = Path(log).read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue
        cmd, rtype, name = parts
        file = {"shared_memory": name.lstrip("/"), "semaphore": "sem." + name.lstrip("/")}.get(rtype)
        if file is None or "/" in file:
            continue
        if cmd == "REGISTER":
            live[file] = None
        else:
            live.pop(file, None)
    return list(live)


class EngineShm:
    """The ``/dev/shm`` record of one engine started by this process (see the module docstring)."""

    def __init__(self, record_dir: Path, root: Path = SHM_DIR, track: bool = True):
        self.record_dir, self.root, self.track = Path(record_dir), root, track
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.path = self.record_dir / f"{self.host}-{self.pid}.json"
        self.log = self.record_dir / f"{self.host}-{self.pid}.registered"
        self.segments: list[str] = []
        self.tracked = False
        self._before: set[str] = set()

    def start(self) -> None:
        """Call just before the engine starts (starts this process's resource tracker if none runs yet)."""
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.tracked = self.track and start_tracker(self.log)
        self._write()  # a record exists from now on: a kill during the start is cleaned up too
        self._before = shm_entries(self.root)

    def _write(self) -> None:
        write_json(self.path, {"host": self.host, "pid": self.pid, "start_time": process_start_time(self.pid),
                               "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engine": self.what,
                               "segments": self.segments, "registered_log": self.log.name if self.tracked else None})

    what = ""

    def started(self, what: str = "") -> list[str]:
        """Call once the engine has started: record the segments it made (held or registered); return them."""
        new = shm_entries(self.root) - self._before
        if new:
            mine = process_tree(self.pid)
            held = holders(self.root)
            new = {n for n in new if held.get(n, set()) & mine}  # held by this process tree: ours
        self.what = what
        self.segments = sorted(set(self.segments) | new | set(registered(self.log) if self.tracked else []))
        self._write()
        logger.info("vLLM engine made %d /dev/shm segment(s) (recorded in %s): %s", len(self.segments), self.path,
                    ", ".join(self.segments) or "none")
        return self.segments

    def release(self) -> list[str]:
        """After the engine's shutdown: remove its segments (held at start, or registered and not unregistered)
        that are still there and unheld; then the record."""
        names = set(self.segments) | set(registered(self.log) if self.tracked else [])
        removed = _remove_unheld(sorted(names), self.root)
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
    for log in sorted(record_dir.glob(f"{host}-*.registered")):  # a log without its record: a finished process
        pid = log.stem.rsplit("-", 1)[-1]
        if not log.with_suffix(".json").exists() and pid.isdigit() and not alive(int(pid), None):
            removed += _remove_unheld(registered(log), root)
            log.unlink(missing_ok=True)
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
        log = record_dir / rec["registered_log"] if rec.get("registered_log") else None
        names = sorted(set(rec.get("segments", [])) | set(registered(log) if log else []))
        gone = _remove_unheld(names, root)
        removed += gone
        path.unlink(missing_ok=True)
        if log is not None:
            log.unlink(missing_ok=True)
        logger.info("engine of pid %d (%s) is gone: removed %d of its %d recorded /dev/shm segment(s)%s",
                    rec["pid"], path.name, len(gone), len(names), f": {', '.join(gone)}" if gone else "")
    return removed
