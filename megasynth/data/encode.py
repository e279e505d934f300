"""Encoding work items (in worker processes): parse and check records, split them into pieces (sentences),
tokenize in batches and lay the ids out as Megatron sequences and documents (see :mod:`megasynth.data.engine`
for the rules)."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from megasynth.data.inputs import Chunk
from megasynth.utils import MegasynthError

SPLIT_MAX_CHARS = 1_000_000
"""Megatron-LM splits sentences in slices of this many characters."""


@dataclass
class EncodeSpec:
    """Everything a worker needs. ``tokenize_batch(texts) -> list[list[int]]`` is one tokenizer call
    per text; the ids of that call are ``prefix + tokenize_batch(texts)[i] + suffix`` (the per-call
    special tokens, e.g. a BOS, added here with numpy; empty when ``tokenize_batch`` includes them)."""
    tokenize_batch: Callable[[list[str]], list[list[int]]]
    eod: int
    dtype: np.dtype
    keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    splitter: Any = None
    empty: str = "megatron"
    skip_bad: bool = False
    make_splitter: Optional[Callable[[], Any]] = None
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()


def _add_affixes(flat: np.ndarray, lens: np.ndarray, prefix: Sequence[int], suffix: Sequence[int]):
    """``flat`` (ids of pieces of ``lens`` tokens, concatenated) with ``prefix``/``suffix`` around every piece."""
    n, p, q = len(lens), len(prefix), len(suffix)
    new_lens = lens + (p + q)
    starts = np.zeros(n, np.int64)                      # start of each piece in the output
    if n > 1:
        np.cumsum(new_lens[:-1], out=starts[1:])
    out = np.empty(int(new_lens.sum()), np.int64)
    for k, t in enumerate(prefix):
        out[starts + k] = t
    for k, t in enumerate(suffix):
        out[starts + p + lens + k] = t
    if flat.size:
        src_starts = np.zeros(n, np.int64)
        if n > 1:
            np.cumsum(lens[:-1], out=src_starts[1:])
        out[np.repeat(starts + p - src_starts, lens) + np.arange(flat.size)] = flat
    return out, new_lens


@dataclass
class KeyResult:
    ids: np.ndarray
    seq_lens: np.ndarray      # int32, one per sequence
    doc_counts: np.ndarray    # int32, sequences per written document
    documents: int = 0
    empty_documents: int = 0
    sentences: int = 0
    text_bytes: int = 0


@dataclass
class ChunkResult:
    source: str
    keys: dict[str, KeyResult]
    records: int = 0
    nbytes: int = 0
    blank_lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error: Optional[str] = None


_SPEC: Optional[EncodeSpec] = None


def _decoder():
    try:
        import msgspec

        dec = msgspec.json.Decoder()

        def decode(b: bytes):
            try:
                return dec.decode(b)
            except msgspec.DecodeError:
                return json.loads(b)  # the reference parser decides (lone surrogates, NaN, errors)
        return decode
    except ImportError:  # pragma: no cover
        return json.loads


_DECODE = None


def _records(chunk: Chunk, spec: EncodeSpec, res: ChunkResult) -> list[dict]:
    """Parsed, validated records of a chunk; bad ones raise (``file:line``) or are counted with ``skip_bad``."""
    global _DECODE
    if _DECODE is None:
        _DECODE = _decoder()
    out: list[dict] = []

    def bad(lineno: int, why: str, detail: str) -> None:
        if not spec.skip_bad:
            raise MegasynthError(f"{chunk.source}:{lineno}: {detail}")
        res.skipped[why] = res.skipped.get(why, 0) + 1

    if chunk.kind == "jsonl":
        lines = chunk.payload.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        for i, line in enumerate(lines):
            lineno = chunk.first_line + i
            if not line.strip():
                res.blank_lines += 1
                continue
            try:
                rec = _DECODE(line)
            except (ValueError, UnicodeDecodeError) as e:
                bad(lineno, "malformed JSON", f"malformed JSON ({str(e).splitlines()[0][:200]})")
                continue
            if not isinstance(rec, dict):
                bad(lineno, "not an object", f"record is not a JSON object (got {type(rec).__name__})")
                continue
            if _check(rec, spec, lineno, bad):
                out.append(rec)
    else:
        cols = chunk.payload
        n = len(next(iter(cols.values())))
        for i in range(n):
            rec = {k: cols[k][i] for k in spec.keys}
            if _check(rec, spec, chunk.first_line + i, bad, what="row"):
                out.append(rec)
    return out


def _check(rec: dict, spec: EncodeSpec, lineno: int, bad, what: str = "") -> bool:
    for k in spec.keys:
        if k not in rec:
            bad(lineno, f"missing key {k!r}", f"missing key {k!r}")
            return False
        v = rec[k]
        if not isinstance(v, str) and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            bad(lineno, f"{k!r} not a string", f"{k!r} must be a string, got {type(v).__name__}")
            return False
    return True


def encode_records(records: list[dict], spec: EncodeSpec) -> dict[str, KeyResult]:
    """Split, tokenize and lay out ``records`` for every key (see the module docstring for the rules)."""
    out: dict[str, KeyResult] = {}
    for key in spec.keys:
        pieces: list[str] = []
        counts: list[int] = []
        text_bytes = 0
        for rec in records:
            v = rec[key]
            if isinstance(v, list):
                parts = v
            elif spec.splitter is not None:
                tok = spec.splitter.tokenize
                parts = [s for i in range(0, len(v), SPLIT_MAX_CHARS) for s in tok(v[i: i + SPLIT_MAX_CHARS])]
            else:
                parts = [v]
            pieces.extend(parts)
            counts.append(len(parts))
            text_bytes += sum(len(p.encode("utf-8", "surrogatepass")) for p in parts) if isinstance(v, list) \
                else len(v.encode("utf-8", "surrogatepass"))
        ids_lists = spec.tokenize_batch(pieces) if pieces else []
        lens = np.fromiter((len(x) for x in ids_lists), dtype=np.int64, count=len(ids_lists))
        flat = np.fromiter(itertools.chain.from_iterable(ids_lists), dtype=np.int64, count=int(lens.sum()))
        if spec.prefix or spec.suffix:
            flat, lens = _add_affixes(flat, lens, spec.prefix, spec.suffix)
        counts_a = np.asarray(counts, dtype=np.int64)
        # per piece: which document it belongs to; keep pieces with ids
        piece_doc = np.repeat(np.arange(len(counts_a)), counts_a)
        keep = lens > 0
        seq_lens = lens[keep]
        seq_doc = piece_doc[keep]
        doc_counts = np.bincount(seq_doc, minlength=len(counts_a)).astype(np.int64)
        nonempty = doc_counts > 0
        if spec.append_eod and len(seq_lens):
            last_seq = np.cumsum(doc_counts)[nonempty] - 1          # index of each non-empty doc's last sequence
            ends = np.cumsum(seq_lens)[last_seq]                     # token offset right after it
            flat = np.insert(flat, ends, spec.eod)
            seq_lens = seq_lens.copy()
            seq_lens[last_seq] += 1
        n_empty = int((~nonempty).sum())
        if spec.empty == "skip":
            doc_counts = doc_counts[nonempty]
        out[key] = KeyResult(ids=flat.astype(spec.dtype), seq_lens=seq_lens.astype(np.int32),
                             doc_counts=doc_counts.astype(np.int32),
                             documents=len(doc_counts), empty_documents=n_empty,
                             sentences=int(len(seq_lens)), text_bytes=text_bytes)
    return out


def encode_chunk(chunk: Chunk, spec: Optional[EncodeSpec] = None) -> ChunkResult:
    """Parse + encode one work item (in a worker: with the module's forked ``_SPEC``)."""
    spec = spec or _SPEC
    if spec.splitter is None and spec.make_splitter is not None:
        spec.splitter = spec.make_splitter()
    res = ChunkResult(chunk.source, {}, nbytes=chunk.nbytes)
    try:
        recs = _records(chunk, spec, res)
        res.records = len(recs)
        res.keys = encode_records(recs, spec)
    except MegasynthError as e:
        res.error = str(e)
    return res


def _worker_init(threads_env: dict) -> None:
    """Pool worker start: thread settings; on Linux the worker is killed when its parent dies (a killed run
    leaves no orphan workers blocked on the task queue)."""
    os.environ.update(threads_env)
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(1)


def worker_pool(spec: EncodeSpec, workers: int):
    """A forked ``multiprocessing`` pool of ``workers`` processes that encode with ``spec``
    (:func:`encode_chunk` without a spec argument); one thread per worker for the tokenizer."""
    global _SPEC
    _SPEC = spec
    return multiprocessing.get_context("fork").Pool(
        workers, initializer=_worker_init, initargs=({"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},))
