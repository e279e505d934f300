"""The input plan of the generate stage: which excerpt of which document goes into which shard, for any process.

- **Offsets**: one streaming pass over the seed corpus (``corpora/<name>.jsonl``) records the byte offset of
  every document (non-empty JSONL line) in ``plan/<name>.offsets.npy`` (8 bytes per document, memory-mapped;
  rebuilt when the corpus file's size or mtime changes). Documents are then read one at a time by seeking.
- **Order**: a seeded pseudo-random permutation of the ``N`` documents, :class:`DocumentOrder` (a Feistel
  network over the next power of four ≥ N with cycle walking, after Black & Rogaway 2002, "Ciphers with
  arbitrary finite domains"): position ``p`` holds document ``order(p)``. It needs O(1) memory, and any
  process computes any position without the others.
- **Plan**: the first ``limit`` positions (``num_documents`` in sample mode, ``max_documents`` or ``N`` in
  corpus mode); shard ``k`` holds positions ``[k·shard_size, (k+1)·shard_size)``. Sample mode takes one
  excerpt per document, chosen with a generator seeded by ``(seed, document index)``; corpus mode takes
  every excerpt (:func:`~megasynth.generate.reader.split_excerpts`, ``max_input_tokens`` generator tokens).
  The plan does not depend on ``limit``: raising it appends shards and keeps the earlier ones.
- **Ranks**: rank ``r`` of world size ``w`` takes the shards with ``k % w == r`` (:func:`resolve_rank`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from megasynth.generate.reader import split_excerpts
from megasynth.utils import MegasynthError, Progress, atomic_path, is_done, mark_done, read_json, marker_path

logger = logging.getLogger("megasynth.generate")

_READ_BYTES = 1 << 24
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # SplitMix64 finaliser
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROUNDS = 6


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014), elementwise on ``uint64``."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x = x ^ (x >> np.uint64(27))
        x = x * _M2
        return x ^ (x >> np.uint64(31))


class DocumentOrder:
    """A seeded permutation of ``range(n)``: ``order(positions) -> document indices`` (see the module docstring).

    Example:
        >>> o = DocumentOrder(10, seed=1)
        >>> sorted(o(np.arange(10)).tolist()) == list(range(10))
        True
    """

    def __init__(self, n: int, seed: int):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n, self.seed = int(n), int(seed)
        bits = max(2, math.ceil(math.log2(max(n, 2))))
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        base = _mix(np.array([self.seed & (2**64 - 1)], dtype=np.uint64) ^ _GOLDEN)
        with np.errstate(over="ignore"):
            self.keys = [_mix(base + np.uint64(r + 1) * _GOLDEN)[0] for r in range(_ROUNDS)]

    def _round(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        for key in self.keys:
            with np.errstate(over="ignore"):
                left, right = right, left ^ (_mix(right ^ key) & self.mask)
        return (left << np.uint64(self.half)) | right

    def __call__(self, positions: np.ndarray | int) -> np.ndarray:
        """Document index at each position (``[len(positions)]`` int64); positions must be in ``[0, n)``."""
        p = np.atleast_1d(np.asarray(positions, dtype=np.uint64))
        if self.n <= 1:
            return p.astype(np.int64)
        out = self._round(p)
        bad = out >= np.uint64(self.n)
        while bad.any():  # cycle walking: the walk from a position < n returns below n
            out[bad] = self._round(out[bad])
            bad = out >= np.uint64(self.n)
        return out.astype(np.int64)


# --------------------------------------------------------------------------------------------- offsets
def build_offsets(corpus: Path, out: Path) -> np.ndarray:
    """Byte offsets ``[N]`` (int64) of the non-empty lines of ``corpus``, cached in ``out`` (``.npy``).

    The cache's marker holds the corpus file's size and mtime; a changed corpus rebuilds it. Streams the
    file in 16 MiB blocks (never holds it).

    Raises:
        MegasynthError: the corpus file does not exist.
    """
    if not corpus.is_file():
        raise MegasynthError(f"{corpus}: generation source corpus not found (run `megasynth corpora` first)")
    st = corpus.stat()
    ident = {"corpus": str(corpus), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if is_done(out) and out.exists():
        info = read_json(marker_path(out))
        if all(info.get(k) == v for k, v in ident.items() if k != "corpus"):
            return np.load(out, mmap_mode="r")
    starts: list[np.ndarray] = []
    progress = Progress(f"index {corpus.name}", total=st.st_size / 1e6, unit="MB")
    pos, carry_start, carry_content = 0, 0, False  # the line running into the next block
    with open(corpus, "rb") as f:
        while True:
            buf = f.read(_READ_BYTES)
            if not buf:
                break
            arr = np.frombuffer(buf, dtype=np.uint8)
            content = ~((arr == 32) | (arr == 9) | (arr == 13) | (arr == 10))
            cum = np.concatenate([[0], np.cumsum(content, dtype=np.int64)])  # content bytes before index i
            nl = np.flatnonzero(arr == 10)
            if len(nl):
                line_starts = np.concatenate([[0], nl[:-1] + 1])
                has = cum[nl] - cum[line_starts] > 0  # a line is a document when it has a non-space byte
                has[0] |= carry_content
                glob = pos + line_starts
                glob[0] = carry_start
                starts.append(glob[has])
                carry_start, carry_content = pos + int(nl[-1]) + 1, bool(cum[-1] - cum[nl[-1] + 1] > 0)
            else:
                carry_content |= bool(cum[-1] > 0)
            pos += len(buf)
            progress.update(len(buf) / 1e6)
    if carry_content:  # a last line without a newline
        starts.append(np.array([carry_start], dtype=np.int64))
    progress.close()
    offsets = np.concatenate(starts) if starts else np.empty(0, dtype=np.int64)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, offsets)
    mark_done(out, {**ident, "documents": int(len(offsets))})
    return np.load(out, mmap_mode="r")


# --------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class PlannedExcerpt:
    """One excerpt of the plan: shard ``shard``, document at ``position`` (index ``doc`` in the corpus, id
    ``doc_id``), excerpt ``chunk`` of it, ``text``. ``key`` (``"<position>:<chunk>"``) identifies it in a shard."""

    shard: int
    position: int
    doc: int
    doc_id: str
    chunk: int
    text: str

    @property
    def key(self) -> str:
        return f"{self.position}:{self.chunk}"


class GenerationPlan:
    """The excerpts of a generation source corpus, in shards (see the module docstring).

    Args:
        corpus: ``corpora/<name>.jsonl`` (``id``, ``text`` per line).
        offsets: :func:`build_offsets` of it.
        seed: the study seed (document order and sample-mode excerpt choice).
        shard_size: documents per shard.
        max_input_tokens: excerpt length limit in tokens of ``tokenizer``.
        num_documents: sample mode (one excerpt per document) over this many documents.
        max_documents: corpus mode over this many documents (``None`` and no ``num_documents``: all).
    """

    def __init__(self, corpus: Path, offsets: np.ndarray, *, seed: int, shard_size: int, max_input_tokens: int,
                 num_documents: Optional[int] = None, max_documents: Optional[int] = None):
        self.corpus, self.offsets, self.seed = Path(corpus), offsets, int(seed)
        self.shard_size, self.max_input_tokens = int(shard_size), int(max_input_tokens)
        self.documents = int(len(offsets))
        self.sample = num_documents is not None
        want = num_documents if self.sample else max_documents
        self.limit = self.documents if want is None else min(self.documents, int(want))
        if want is not None and want > self.documents:
            field = "num_documents" if self.sample else "max_documents"
            logger.warning("generation.%s=%d but %s has %d documents: using all of them", field, want, corpus,
                           self.documents)
        self.num_shards = math.ceil(self.limit / self.shard_size)
        self.order = DocumentOrder(self.documents, self.seed)
        self._fh = None

    @property
    def mode(self) -> str:
        """``sample`` (one excerpt per document) or ``corpus`` (every excerpt)."""
        return "sample" if self.sample else "corpus"

    def shard_positions(self, k: int) -> range:
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.limit))

    def read(self, doc: int) -> tuple[str, str]:
        """``(id, text)`` of document ``doc`` (its line in the corpus).

        Raises:
            MegasynthError: ``file:line`` for a malformed line or one without ``id``/``text``.
        """
        if self._fh is None:
            self._fh = open(self.corpus, "rb")
        self._fh.seek(int(self.offsets[doc]))
        line = self._fh.readline()
        where = f"{self.corpus}: document {doc + 1}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise MegasynthError(f"{where}: malformed JSON ({e.msg}); was the corpus changed?") from None
        if not isinstance(rec, dict) or "text" not in rec or "id" not in rec:
            raise MegasynthError(f"{where}: expected a JSON object with 'id' and 'text'")
        text = rec["text"] if isinstance(rec["text"], str) else ""
        return str(rec["id"]), text

    def excerpts(self, k: int, tokenizer) -> list[PlannedExcerpt]:
        """The excerpts of shard ``k`` in plan order (position, then chunk); excerpt lengths in ``tokenizer`` tokens."""
        positions = list(self.shard_positions(k))
        if not positions:
            return []
        docs = self.order(np.array(positions, dtype=np.int64))
        out: list[PlannedExcerpt] = []
        for p, d in zip(positions, docs.tolist()):
            doc_id, text = self.read(d)
            if not text.strip():
                continue
            pieces = split_excerpts(text, tokenizer, self.max_input_tokens)
            if not pieces:
                continue
            if self.sample:
                c = int(np.random.default_rng([self.seed, d]).integers(len(pieces)))
                out.append(PlannedExcerpt(k, p, d, doc_id, c, pieces[c]))
            else:
                out.extend(PlannedExcerpt(k, p, d, doc_id, c, t) for c, t in enumerate(pieces))
        return out

    def request_seed(self, base: int, ex: PlannedExcerpt) -> int:
        """Per-request sampling seed: ``base + position`` (sample mode) or ``base + position·2^16 + chunk``."""
        return base + ex.position if self.sample else base + (ex.position << 16) + ex.chunk

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def plan_for(cfg, layout, tokenizer_name: str = "") -> GenerationPlan:
    """The :class:`GenerationPlan` of a study's ``generation`` section and seed corpus."""
    g = cfg.generation
    corpus = layout.corpus(cfg.generation_source)
    offsets = build_offsets(corpus, layout.corpus_offsets(cfg.generation_source))
    return GenerationPlan(corpus, offsets, seed=cfg.seed, shard_size=g.shard_size,
                          max_input_tokens=g.max_input_tokens, num_documents=g.num_documents,
                          max_documents=g.max_documents)


# --------------------------------------------------------------------------------------------- ranks
def resolve_rank(rank: Optional[int] = None, world_size: Optional[int] = None,
                 env: Optional[Mapping[str, str]] = None) -> tuple[int, int]:
    """``(rank, world size)`` of this generate process.

    Precedence: ``rank``/``world_size`` (``--rank/--world-size``; both or neither); a SLURM array
    (``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``); torchrun's
    ``RANK``/``WORLD_SIZE``; else ``(0, 1)``.

    Raises:
        MegasynthError: one of the two flags without the other, a world size < 1, a rank < 0 or ≥ world size.
    """
    env = os.environ if env is None else env
    if (rank is None) != (world_size is None):
        raise MegasynthError("--rank/--world-size: give both or neither")
    if rank is not None:
        r, w, what = int(rank), int(world_size), "--rank/--world-size"
    elif env.get("SLURM_ARRAY_TASK_ID") and env.get("SLURM_ARRAY_TASK_COUNT"):
        r = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
        w, what = int(env["SLURM_ARRAY_TASK_COUNT"]), "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
    elif env.get("RANK") and env.get("WORLD_SIZE"):
        r, w, what = int(env["RANK"]), int(env["WORLD_SIZE"]), "RANK/WORLD_SIZE"
    else:
        return 0, 1
    if w < 1:
        raise MegasynthError(f"{what}: world size must be >= 1, got {w}")
    if not 0 <= r < w:
        raise MegasynthError(f"{what}: rank {r} is not in 0..{w - 1} (world size {w})")
    return r, w


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shards of ``rank``: ``k % world_size == rank``, in increasing order."""
    return list(range(rank, num_shards, world_size))


