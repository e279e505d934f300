"""Record-level resume of a shard: an append-only partial file of completed records.

While shard ``k`` of source ``s`` is generated, every finished request (kept or filtered) is appended to
``synthetic/<s>/partial-NNNNN.jsonl`` as one JSON line, written with a single ``write`` on an ``O_APPEND``
descriptor, so a killed process leaves every earlier line whole and at most a torn last line. Reopening the
file (:meth:`PartialShard.open`) cuts a torn last line off (logged), reads the completed records and skips
them; each record is kept once (a repeated key keeps the first). An exclusive ``flock`` on the file stops a
second process from generating the same shard at the same time; the kernel drops it when the process dies.

When every planned request of the shard has a record, the shard is finalised by the pipeline (the kept
records in plan order to ``shard-NNNNN.jsonl`` atomically, its marker, then this file is removed).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Optional

from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.generate")


class PartialShard:
    """The partial file of one shard; ``entries`` maps a request key to its completed line (a dict)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.fd: Optional[int] = None
        self.torn_bytes = 0

    def open(self) -> "PartialShard":
        """Lock the file, drop a torn last line, read the completed entries; keep it open for appends.

        Raises:
            MegasynthError: another process holds the shard; a complete line that is not a JSON object
                with a ``key`` (``file:line``).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MegasynthError(f"{self.path}: another process is generating this shard (the file is locked); "
                                 "two runs of one rank at once?") from None
        try:
            data = b""
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    data = f.read()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):
                self.torn_bytes = len(data) - cut
                os.ftruncate(fd, cut)
                logger.info("%s: dropped a torn last line (%d bytes) left by a killed process", self.path.name,
                            self.torn_bytes)
            for lineno, line in enumerate(data[:cut].splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MegasynthError(f"{self.path}:{lineno}: malformed record ({e.msg}); delete the file to "
                                         "regenerate the shard") from None
                if not isinstance(rec, dict) or "key" not in rec:
                    raise MegasynthError(f"{self.path}:{lineno}: expected a JSON object with a 'key'")
                self.entries.setdefault(str(rec["key"]), rec)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def append(self, entry: dict) -> None:
        """Append ``entry`` (with its ``key``) as one line, in one ``write``; ignore a key already there."""
        key = str(entry["key"])
        if key in self.entries:
            return
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # a regular file takes the whole buffer at once; loop only for the rare short write
            view = view[os.write(self.fd, view):]
        self.entries[key] = entry

    def close(self, remove: bool = False) -> None:
        """Close (and with ``remove``, delete) the file; releases the lock."""
        if remove:
            self.path.unlink(missing_ok=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
