"""Shared helpers: one-line errors, atomic writes, completion markers, JSONL I/O, logging.

Every stage of a study writes its outputs through :func:`atomic_path` (write to a temporary name in
the same directory, then ``os.replace``) and marks completion with :func:`mark_done`, so a study that
is killed at any point and rerun skips what is complete and never reads a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

logger = logging.getLogger("megasynth")
_UMASK = os.umask(0)
os.umask(_UMASK)


class MegasynthError(Exception):
    """A user-facing error: bad config, missing file, malformed input.

    The message is one line naming the field or ``file:line``. The CLI prints it and exits with
    code 2.
    """


class StageInterrupted(KeyboardInterrupt):
    """A stage stopped by a signal (SIGTERM from SLURM or ``kill``, SIGINT) after a clean shutdown; finished
    work is on disk. The CLI exits with ``128 + signum`` (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def cli_error(message: object, prog: str = "megasynth") -> int:
    """Print ``<prog>: error: <message>`` (its first line) to stderr; return 2, the exit status of bad input.

    Every command line of the project reports a :class:`MegasynthError` through this one helper.
    """
    text = str(message).splitlines()[0] if str(message) else type(message).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the ``megasynth`` logger once (idempotent)."""
    root = logging.getLogger("megasynth")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory (same filesystem) so the final ``os.replace`` is
    atomic. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON from ``path``; raise :class:`MegasynthError` naming the file if missing/invalid."""
    path = Path(path)
    if not path.exists():
        raise MegasynthError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MegasynthError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records as JSON lines to ``path`` atomically; return the number of records."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Iterator[dict]:
    """Stream records from a JSONL file (see :func:`read_jsonl_numbered` for the errors raised)."""
    for _, rec in read_jsonl_numbered(path, required):
        yield rec


def read_jsonl_numbered(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Stream ``(line number, record)`` from a JSONL file, skipping blank lines.

    Raises:
        MegasynthError: ``file:line: ...`` for a line that is not a JSON object or lacks a key in
            ``required``; ``file: file not found`` if the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise MegasynthError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise MegasynthError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise MegasynthError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            for key in required:
                if key not in rec:
                    raise MegasynthError(f"{path}:{lineno}: missing key {key!r}")
            yield lineno, rec


def marker_path(path: str | os.PathLike) -> Path:
    """The completion marker for an output file or directory: ``<path>.done`` beside it."""
    path = Path(path)
    return path.parent / f"{path.name}.done"


def is_done(path: str | os.PathLike) -> bool:
    """True if ``path`` was completed (its marker exists)."""
    return marker_path(path).exists()


def mark_done(path: str | os.PathLike, info: dict | None = None) -> None:
    """Write the completion marker for ``path`` (atomically), with optional metadata."""
    write_json(marker_path(path), {"completed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})})


def sum_markers(paths: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Sum of the integer fields (not booleans) of the completion markers of ``paths`` (shard counts).

    Raises:
        MegasynthError: a marker is missing or not valid JSON.
    """
    totals: dict[str, int] = {}
    for p in paths:
        for key, v in read_json(marker_path(p)).items():
            if isinstance(v, int) and not isinstance(v, bool):
                totals[key] = totals.get(key, 0) + v
    return totals


def clear_done(path: str | os.PathLike) -> None:
    """Remove the completion marker of ``path`` if present."""
    with contextlib.suppress(FileNotFoundError):
        marker_path(path).unlink()


class Progress:
    """Periodic progress log line with rate and ETA, for loops whose total is known.

    Example:
        >>> p = Progress("tokenize", total=1000, unit="docs")
        >>> for _ in range(1000): p.update(1)
        >>> p.close()
    """

    def __init__(self, name: str, total: float | None, unit: str = "items", every_s: float = 10.0):
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.count = 0.0
        self.start = self.last = time.monotonic()

    def update(self, n: float = 1.0) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        if self.total:
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            logger.info("%s: %.0f/%.0f %s (%.1f %s/s, ETA %.0fs)", self.name, self.count, self.total,
                        self.unit, rate, self.unit, eta)
        else:
            logger.info("%s: %.0f %s (%.1f %s/s)", self.name, self.count, self.unit, rate, self.unit)

    def close(self) -> float:
        """Log the final line and return elapsed seconds."""
        now = time.monotonic()
        self._log(now)
        return now - self.start
