"""Fast text → Megatron indexed dataset engine (read, split, tokenize, write), byte-compatible with Megatron-LM.

The output of :func:`run_engine` equals, byte for byte, what Megatron-LM's ``tools/preprocess_data.py``
writes with megatron-core's ``IndexedDatasetBuilder`` for the same records, tokenizer and flags:

- one document per record and key; its "sentences" are the text itself (document mode), the nltk punkt
  sentences of each 1,000,000-character slice (sentence mode), or the record's list of strings;
- every piece is tokenized by one tokenizer call (so per-call special tokens such as a BOS are per piece);
  pieces with no ids are dropped; if the document has ids and ``append_eod``, EOD is appended to its
  last sequence;
- a document without ids is still written as a document with zero sequences (``empty="megatron"``;
  ``empty="skip"`` drops it instead — the study stage's convention); either way it is counted;
- token dtype ``uint16`` if ``vocab_size < 65500`` else ``int32`` (``DType.optimal_dtype``); ``.idx`` is
  megatron-core's ``MMIDIDX`` version-1 layout (int32 sequence lengths, int64 byte pointers, int64
  document indices).

Speed: records travel to worker processes as raw byte blocks of JSONL lines (or Arrow column slices),
each worker parses, splits and batch-tokenizes a whole block and returns three numpy arrays (ids,
sequence lengths, sequences per document) — no per-document pickling; the parent appends them to the
``.bin`` with large buffered writes and keeps the index arrays. Outputs are written under temporary
names (``.<name>.tmp<pid>.bin/.idx``) and renamed, ``.bin`` first and ``.idx`` last, only when complete.
"""

from __future__ import annotations

import glob
import gzip
import io
import itertools
import json
import logging
import multiprocessing
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.data")

INDEX_HEADER = b"MMIDIDX\x00\x00"
"""megatron-core ``_INDEX_HEADER``; followed by ``<Q`` version 1 and ``<B`` dtype code."""
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
"""megatron-core ``DType`` codes."""
SPLIT_MAX_CHARS = 1_000_000
"""Megatron-LM splits sentences in slices of this many characters."""
CHUNK_BYTES = 1 << 20
"""Raw JSONL bytes per work item sent to a worker."""
ARROW_ROWS = 2000
"""Rows per work item for Parquet / HF datasets inputs."""
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)


def optimal_dtype(vocab_size: Optional[int]) -> np.dtype:
    """megatron-core ``DType.optimal_dtype``: uint16 when ``vocab_size < 65500``, else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------
def is_hf_dataset_dir(path: Path) -> bool:
    """A directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``)."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def _input_kind(path: Path) -> str:
    name = path.name.lower()
    if is_hf_dataset_dir(path):
        return "hf"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "jsonl"


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files (any name), directories (their ``*.jsonl[.gz|.zst]``, ``*.json*``, ``*.parquet`` files,
    recursively, sorted; or a HF ``datasets`` directory) and globs, in the order given.

    Raises:
        MegasynthError: an input that matches nothing.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if is_hf_dataset_dir(p):
                out.append(p)
                continue
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.name.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES))
            if not files:
                raise MegasynthError(f"--input: directory {p} holds no .jsonl/.json[.gz|.zst]/.parquet files")
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise MegasynthError(f"--input: no file matches {item}")
            out.extend(expand_inputs(matches))
    return out


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise MegasynthError(f"{path}: reading .zst needs the zstandard package") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                 buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


@dataclass
class Chunk:
    """One work item: ``payload`` is raw JSONL bytes (``kind == "jsonl"``) or ``{key: list}`` rows."""
    source: str
    first_line: int
    kind: str
    payload: Any
    nbytes: int


def iter_chunks(path: Path, keys: Sequence[str], chunk_bytes: int = CHUNK_BYTES,
                rows: int = ARROW_ROWS) -> Iterator[Chunk]:
    """Stream ``path`` as work items (memory bounded by ``chunk_bytes`` / ``rows``)."""
    kind = _input_kind(path)
    if kind == "jsonl":
        lineno = 1
        with _open_binary(path) as f:
            rest = b""
            while True:
                block = f.read(chunk_bytes)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n")
                if cut < 0:
                    rest = block
                    continue
                body, rest = block[: cut + 1], block[cut + 1:]
                yield Chunk(str(path), lineno, "jsonl", body, len(body))
                lineno += body.count(b"\n")
            if rest:
                yield Chunk(str(path), lineno, "jsonl", rest, len(rest))
    elif kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        missing = [k for k in keys if k not in pf.schema_arrow.names]
        if missing:
            raise MegasynthError(f"{path}: missing column(s) {missing} (has {pf.schema_arrow.names})")
        row = 1
        for batch in pf.iter_batches(batch_size=rows, columns=list(keys)):
            cols = {k: batch.column(k).to_pylist() for k in keys}
            yield Chunk(str(path), row, "rows", cols, batch.nbytes)
            row += batch.num_rows
    else:
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise MegasynthError(f"{path}: a DatasetDict; give one split's directory ({path}/<split>) as --input")
        missing = [k for k in keys if k not in ds.column_names]
        if missing:
            raise MegasynthError(f"{path}: missing column(s) {missing} (has {ds.column_names})")
        ds = ds.select_columns(list(keys))
        row = 1
        for batch in ds.iter(batch_size=rows):
            n = len(batch[keys[0]])
            yield Chunk(str(path), row, "rows", batch, sum(len(t) for t in batch[keys[0]] if isinstance(t, str)))
            row += n


def input_size(path: Path) -> int:
    """Bytes on disk (for progress ETA)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------------------------------
# encoding (runs in workers)
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
class IndexedWriter:
    """Appends (ids, sequence lengths, sequences per document) to ``bin_path``; writes the ``.idx``.

    The bytes equal megatron-core ``IndexedDatasetBuilder`` fed the same documents with
    ``add_document(ids, lengths)``.
    """

    def __init__(self, bin_path: str | os.PathLike, dtype: np.dtype, buffer_bytes: int = 16 << 20) -> None:
        self.bin_path, self.dtype = Path(bin_path), np.dtype(dtype)
        self._f = open(self.bin_path, "wb", buffering=buffer_bytes)
        self._lens: list[np.ndarray] = []
        self._docs: list[np.ndarray] = []
        self.tokens = 0

    def append(self, ids: np.ndarray, seq_lens: np.ndarray, doc_counts: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(ids, dtype=self.dtype).data)
        self.tokens += int(ids.size)
        if seq_lens.size:
            self._lens.append(np.asarray(seq_lens, dtype=np.int32))
        if doc_counts.size:
            self._docs.append(np.asarray(doc_counts, dtype=np.int64))

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def finalize(self, idx_path: str | os.PathLike) -> dict:
        """Close the ``.bin`` and write the ``.idx``; returns ``sequences``, ``documents``, ``tokens``."""
        self.close()
        lens = np.concatenate(self._lens) if self._lens else np.zeros(0, np.int32)
        docs = np.concatenate(self._docs) if self._docs else np.zeros(0, np.int64)
        write_index(idx_path, self.dtype, lens, docs)
        return {"sequences": int(lens.size), "documents": int(docs.size), "tokens": self.tokens}


def write_index(idx_path: str | os.PathLike, dtype: np.dtype, seq_lens: np.ndarray, doc_counts: np.ndarray) -> None:
    """Write megatron-core's ``.idx`` for sequences ``seq_lens`` grouped ``doc_counts`` per document."""
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(seq_lens), np.int64)
    if len(seq_lens) > 1:
        np.cumsum(seq_lens[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    doc_idx = np.zeros(len(doc_counts) + 1, np.int64)
    np.cumsum(doc_counts, out=doc_idx[1:])
    with open(idx_path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", DTYPE_CODES[np.dtype(dtype)]))
        f.write(struct.pack("<Q", len(seq_lens)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(np.asarray(seq_lens, np.int32).tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())


def _select_docs(kr: KeyResult, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documents of ``kr`` where ``mask`` (one bool per document) holds, in order."""
    dc = kr.doc_counts.astype(np.int64)
    seq_start = np.concatenate([[0], np.cumsum(dc)])
    tok_start = np.concatenate([[0], np.cumsum(kr.seq_lens.astype(np.int64))])
    doc_tok0, doc_tok1 = tok_start[seq_start[:-1]], tok_start[seq_start[1:]]
    seq_mask = np.repeat(mask, dc)
    tok_mask = np.repeat(mask, doc_tok1 - doc_tok0)
    return kr.ids[tok_mask], kr.seq_lens[seq_mask], kr.doc_counts[mask]


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------
def _tmp_prefix(final_prefix: Path) -> Path:
    return final_prefix.parent / f".{final_prefix.name}.tmp{os.getpid()}"


def clean_stale_tmp(final_prefix: Path) -> None:
    """Remove temporary files a killed earlier run left for ``final_prefix``."""
    for p in final_prefix.parent.glob(f".{glob.escape(final_prefix.name)}.tmp*"):
        try:
            pid = int(p.name.rsplit(".tmp", 1)[1].split(".")[0])
        except ValueError:
            continue
        if pid == os.getpid() or not _alive(pid):
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_engine(inputs: Sequence[Path], prefixes: dict[str, Path], spec: EncodeSpec, workers: int = 1,
               partitions: int = 1, keep_sequential: bool = True, log_interval_s: float = 10.0,
               log_every_docs: int = 0, label: str = "", pool=None) -> dict:
    """Encode ``inputs`` (in order) into ``prefixes[key].{bin,idx}`` for every key of ``spec``.

    Args:
        inputs: expanded input files (see :func:`expand_inputs`).
        prefixes: final output prefix per key (parent directories are created).
        workers: encoding processes (1: in this process).
        partitions: Megatron-LM's ``--partitions``: without ``keep_sequential``, documents are
            dealt round-robin into this many partitions and the partitions concatenated (Megatron's
            order); with it, the order is the input order.
        log_every_docs: also log every this many documents (0: every ``log_interval_s`` seconds).
        pool: an existing ``multiprocessing`` pool forked with this ``spec`` (reuse across calls).

    Returns:
        Stats: ``records`` (documents in), ``documents`` / ``empty_documents`` / ``sentences`` /
        ``tokens`` / ``text_bytes`` per key under ``keys``, ``input_bytes``, ``blank_lines``,
        ``skipped`` (reason → count), ``wall_s``, ``docs_per_s``, ``mb_per_s``, ``tokens_per_s``.

    Raises:
        MegasynthError: a bad record (``file:line``) unless ``spec.skip_bad``; nothing is left
            under the final names then.
    """
    global _SPEC
    rr = partitions > 1 and not keep_sequential
    nparts = partitions if rr else 1
    tmp: dict[str, list[Path]] = {}
    writers: dict[str, list[IndexedWriter]] = {}
    for key, prefix in prefixes.items():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(prefix)
        t = _tmp_prefix(prefix)
        tmp[key] = [Path(f"{t}.part{i}.bin") if rr else Path(f"{t}.bin") for i in range(nparts)]
        writers[key] = [IndexedWriter(p, spec.dtype) for p in tmp[key]]
    total_bytes = sum(input_size(p) for p in inputs) or 1
    stats = {"records": 0, "input_bytes": 0, "blank_lines": 0, "skipped": {},
             "keys": {k: {"documents": 0, "empty_documents": 0, "sentences": 0, "tokens": 0, "text_bytes": 0}
                      for k in prefixes}}
    start = last = time.monotonic()
    next_docs = log_every_docs
    doc_offset = 0
    own_pool = None
    try:
        chunks = (c for p in inputs for c in iter_chunks(p, spec.keys))
        if workers > 1:
            if pool is None:
                _SPEC = spec
                ctx = multiprocessing.get_context("fork")
                own_pool = pool = ctx.Pool(workers, initializer=_worker_init,
                                           initargs=({"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},))
            results = pool.imap(encode_chunk, chunks, 1)
        else:
            results = (encode_chunk(c, spec) for c in chunks)
        for res in results:
            if res.error:
                raise MegasynthError(res.error)
            stats["records"] += res.records
            stats["input_bytes"] += res.nbytes
            stats["blank_lines"] += res.blank_lines
            for why, n in res.skipped.items():
                stats["skipped"][why] = stats["skipped"].get(why, 0) + n
            ndocs = 0
            for key, kr in res.keys.items():
                ks = stats["keys"][key]
                for f in ("documents", "empty_documents", "sentences", "text_bytes"):
                    ks[f] += getattr(kr, f)
                ks["tokens"] += int(kr.ids.size)
                ndocs = kr.documents
                if rr:
                    part = (doc_offset + np.arange(kr.documents)) % nparts
                    for i in range(nparts):
                        writers[key][i].append(*_select_docs(kr, part == i))
                else:
                    writers[key][0].append(kr.ids, kr.seq_lens, kr.doc_counts)
            doc_offset += ndocs
            now = time.monotonic()
            if now - last >= log_interval_s or (log_every_docs and stats["records"] >= next_docs):
                last = now
                if log_every_docs:
                    next_docs = (stats["records"] // log_every_docs + 1) * log_every_docs
                _log_progress(label, stats, now - start, total_bytes)
        for key, prefix in prefixes.items():
            ws = writers[key]
            if rr:
                lens, docs = [], []
                with open(f"{_tmp_prefix(prefix)}.bin", "wb") as out:
                    for w in ws:
                        w.close()
                        lens.extend(w._lens)
                        docs.extend(w._docs)
                        with open(w.bin_path, "rb") as src:
                            import shutil

                            shutil.copyfileobj(src, out, 16 << 20)
                        w.bin_path.unlink()
                write_index(f"{_tmp_prefix(prefix)}.idx", spec.dtype,
                            np.concatenate(lens) if lens else np.zeros(0, np.int32),
                            np.concatenate(docs) if docs else np.zeros(0, np.int64))
            else:
                ws[0].finalize(f"{_tmp_prefix(prefix)}.idx")
        for key, prefix in prefixes.items():
            os.replace(f"{_tmp_prefix(prefix)}.bin", f"{prefix}.bin")
            os.replace(f"{_tmp_prefix(prefix)}.idx", f"{prefix}.idx")
    except BaseException:
        if own_pool is not None:
            own_pool.terminate()
            own_pool = None
        for key, prefix in prefixes.items():
            for w in writers[key]:
                w.close()
                w.bin_path.unlink(missing_ok=True)
            for suf in (".bin", ".idx"):
                Path(f"{_tmp_prefix(prefix)}{suf}").unlink(missing_ok=True)
        raise
    finally:
        if own_pool is not None:
            own_pool.close()
            own_pool.join()
    wall = max(time.monotonic() - start, 1e-9)
    _log_progress(label, stats, wall, total_bytes, final=True)
    tokens = sum(k["tokens"] for k in stats["keys"].values())
    stats.update(wall_s=round(wall, 3), docs_per_s=round(stats["records"] / wall, 1),
                 mb_per_s=round(stats["input_bytes"] / wall / 1e6, 2), tokens_per_s=round(tokens / wall, 1))
    return stats


def _log_progress(label: str, stats: dict, elapsed: float, total_bytes: int, final: bool = False) -> None:
    el = max(elapsed, 1e-9)
    tokens = sum(k["tokens"] for k in stats["keys"].values())
    done = stats["input_bytes"]
    rate = done / el
    eta = "" if final else f", ETA {max(total_bytes - done, 0) / rate:.0f}s" if rate > 0 else ", ETA ?"
    logger.info("%s%s %d docs (%.0f docs/s, %.1f MB/s, %.0f tokens/s)%s", label + ": " if label else "",
                "done," if final else "processed", stats["records"], stats["records"] / el, rate / 1e6, tokens / el, eta)
