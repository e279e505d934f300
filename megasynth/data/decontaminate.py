"""Eval-set decontamination: drop training documents that share a word n-gram with an eval set.

The method is the n-gram overlap test of GPT-3 (Brown et al. 2020, Sec. 4 and App. C) as NeMo Curator
implements it for downstream tasks (``nemo_curator/modules/task.py`` ``TaskDecontamination`` and
``nemo_curator/tasks/downstream_task.py`` ``DownstreamTask._update_ngrams``):

- **Words** (NeMo Curator ``utils/text_utils.get_words``): the text is lower-cased, punctuation is
  deleted (not replaced by a space: ``don't`` → ``dont``, ``U.S.`` → ``us``) and the rest is split into
  words. Two deliberate differences: every Unicode punctuation or symbol character is deleted (NeMo
  Curator deletes ``string.punctuation`` only, so a curly quote would stop a match), and words are split
  on any whitespace (NeMo Curator splits on the space character only, which glues the last word of a
  line to the first of the next).
- **Eval n-grams** (``DownstreamTask._update_ngrams``, ``min_ngram_size=8, max_ngram_size=13``): every
  ``n``-gram of every eval document; an eval document with fewer than ``n`` but at least ``min_n`` words
  contributes itself as one shorter n-gram (so the n-gram size is capped at the document length); one
  with fewer than ``min_n`` words contributes nothing (too short to tell overlap from chance).
- **Matching**: a training document is contaminated when any of its word windows of length ``n`` (or of
  a shorter length that some short eval document has) equals an eval n-gram.
- **Too common** (GPT-3 App. C; ``TaskDecontamination(max_matches=10)``): an n-gram that occurs in more
  than ``max_matches`` training documents of the source is treated as a common phrase and ignored.
- **Removal**: a contaminated document is removed whole and counted. (GPT-3 and NeMo Curator cut the
  match and 200 characters on each side and drop a document only when it falls into more than 10 pieces;
  this study removes the document, which never leaves eval text around the cut in the training data.)

Memory: the eval n-grams are held as a sorted ``uint64`` array of 64-bit hashes plus a ``uint64`` bitmask
of the eval sets each belongs to (16 bytes per distinct n-gram); the source is streamed and never held.
Each word is hashed once (BLAKE2b, 8 bytes); an n-gram's hash is a polynomial of its word hashes mod 2^64
(the length mixed in, then the SplitMix64 finaliser), computed for all windows of a document at once with
numpy. Two distinct n-grams collide with probability about 2^-64 per pair.

Parallelism: the source is read in chunks of lines that worker processes scan in parallel (``spawn``ed, each
given the index once: a forked worker of a process that already runs threads, e.g. after an in-process vLLM
engine, can inherit a held lock and hang);
results come back in source order. Pass 1 (the workers) finds each document's matched n-grams and writes
them to a temporary side file; pass 2 (one process, I/O only) applies the ``max_matches`` rule and copies
the kept lines verbatim to ``out_jsonl`` through :func:`~megasynth.utils.atomic_path`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from megasynth.utils import MegasynthError, Progress, atomic_path, read_jsonl_numbered

logger = logging.getLogger("megasynth.data")

DEFAULT_N = 13
"""Default n-gram size in words (GPT-3 App. C; NeMo Curator ``max_ngram_size``)."""
DEFAULT_MIN_N = 8
"""Shortest eval document (words) that still contributes an n-gram (NeMo Curator ``min_ngram_size``)."""
DEFAULT_MAX_MATCHES = 10
"""An n-gram found in more training documents than this is ignored (GPT-3 App. C; NeMo ``max_matches``)."""
NUM_EXAMPLES = 5
"""Example n-grams reported per eval set."""

_PUNCT = re.compile(r"[^\w\s]|_")
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # SplitMix64 finaliser
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_MAX_EVAL_SETS = 64  # one bit each in the owner mask


# The same deletion for ASCII text through str.translate (several times faster than the regex).
_ASCII_DELETE = {c: None for c in range(128) if _PUNCT.match(chr(c))}


def words(text: str) -> list[str]:
    """The words of ``text`` for overlap tests: lower-cased, punctuation/symbols deleted, split on whitespace."""
    text = text.lower()
    return (text.translate(_ASCII_DELETE) if text.isascii() else _PUNCT.sub("", text)).split()


def _word_hashes(ws: list[str], cache: dict[str, int]) -> np.ndarray:
    """BLAKE2b-64 of each word (``[len(ws)]`` uint64), memoised in ``cache``."""
    for w in set(ws).difference(cache):
        cache[w] = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
    return np.fromiter(map(cache.__getitem__, ws), dtype=np.uint64, count=len(ws))


def ngram_hashes(wh: np.ndarray, length: int) -> np.ndarray:
    """64-bit hashes of every window of ``length`` word hashes in ``wh`` (``[len(wh) - length + 1]``, uint64).

    ``h = mix64((sum_k wh[i+k] * P^(length-1-k) mod 2^64) xor length)`` with SplitMix64's finaliser as
    ``mix64``; empty when ``len(wh) < length``.
    """
    m = len(wh) - length + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(length):
            h = h * _POLY + wh[k:k + m]
        h ^= np.uint64(length)
        h ^= h >> _S30
        h *= _MIX1
        h ^= h >> _S27
        h *= _MIX2
        h ^= h >> _S31
    return h


@dataclass
class EvalIndex:
    """The eval sets' n-grams: sorted unique 64-bit hashes ``keys`` ``[K]`` and owner bitmasks ``owners`` ``[K]``.

    Bit ``j`` of ``owners[i]`` is set when eval set ``names[j]`` has n-gram ``keys[i]``. ``lengths`` are
    the window lengths (words) to test in training documents: ``n`` plus those of short eval documents.
    """

    names: list[str]
    keys: np.ndarray
    owners: np.ndarray
    lengths: list[int]
    n: int
    min_n: int
    info: dict[str, dict]

    def __post_init__(self) -> None:
        # A bitmap over the low ``bits`` bits of the keys (about 32 bits per key, 2^16..2^33 bits) rules
        # out most windows with one gather, so only the rest are binary-searched in ``keys``.
        bits = int(min(33, max(16, np.ceil(np.log2(max(1, len(self.keys)) * 32)))))
        self._mask = np.uint64((1 << bits) - 1)
        self._bitmap = np.zeros(1 << (bits - 3), dtype=np.uint8)
        low = self.keys & self._mask
        np.bitwise_or.at(self._bitmap, (low >> np.uint64(3)).astype(np.intp),
                         (np.uint8(1) << (low & np.uint64(7)).astype(np.uint8)))

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Boolean mask ``[len(hashes)]``: which ``hashes`` are eval n-grams."""
        if not len(self.keys) or not len(hashes):
            return np.zeros(len(hashes), dtype=bool)
        low = hashes & self._mask
        maybe = (self._bitmap[(low >> np.uint64(3)).astype(np.intp)] >> (low & np.uint64(7)).astype(np.uint8)) & 1
        out = np.zeros(len(hashes), dtype=bool)
        cand = np.flatnonzero(maybe)
        if len(cand):
            h = hashes[cand]
            pos = np.searchsorted(self.keys, h)
            pos[pos == len(self.keys)] = 0
            out[cand] = self.keys[pos] == h
        return out

    def owner_of(self, hashes: np.ndarray) -> np.ndarray:
        """Owner bitmasks ``[len(hashes)]`` of ``hashes``, which must all be eval n-grams."""
        return self.owners[np.searchsorted(self.keys, hashes)]


def build_eval_index(eval_jsonls: Mapping[str, str | os.PathLike], n: int = DEFAULT_N,
                     min_n: int = DEFAULT_MIN_N) -> EvalIndex:
    """Hash the n-grams of every eval set (JSONL with a ``text`` key per document).

    Raises:
        MegasynthError: a missing or malformed eval file (``file:line``), bad ``n``/``min_n``, more than
            64 eval sets.
    """
    if n < 1 or not 1 <= min_n <= n:
        raise MegasynthError(f"decontaminate: need 1 <= min_n <= n, got n={n}, min_n={min_n}")
    if len(eval_jsonls) > _MAX_EVAL_SETS:
        raise MegasynthError(f"decontaminate: at most {_MAX_EVAL_SETS} eval sets, got {len(eval_jsonls)}")
    names = list(eval_jsonls)
    cache: dict[str, int] = {}
    all_keys, all_owners, lengths, info = [], [], {n}, {}
    for j, name in enumerate(names):
        path = Path(eval_jsonls[name])
        parts, docs, short = [], 0, 0
        for lineno, rec in read_jsonl_numbered(path, required=("text",)):
            if not isinstance(rec["text"], str):
                raise MegasynthError(f"{path}:{lineno}: 'text' must be a string")
            docs += 1
            wh = _word_hashes(words(rec["text"]), cache)
            if len(wh) >= n:
                parts.append(ngram_hashes(wh, n))
            elif len(wh) >= min_n:
                parts.append(ngram_hashes(wh, len(wh)))
                lengths.add(len(wh))
            else:
                short += 1
        keys = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)
        all_keys.append(keys)
        all_owners.append(np.full(len(keys), np.uint64(1) << np.uint64(j), dtype=np.uint64))
        info[name] = {"path": str(path), "documents": docs, "documents_too_short": short, "ngrams": int(len(keys))}
    keys = np.concatenate(all_keys) if all_keys else np.empty(0, dtype=np.uint64)
    owners = np.concatenate(all_owners) if all_owners else np.empty(0, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    keys, owners = keys[order], owners[order]
    if len(keys):
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        owners = np.bitwise_or.reduceat(owners, first)
        keys = keys[first]
    return EvalIndex(names, keys, owners, sorted(lengths, reverse=True), n, min_n, info)


def match_eval_sets(index: EvalIndex, text: str, cache: dict[str, int] | None = None) -> dict[str, list[str]]:
    """The eval sets ``text`` shares an n-gram with, each with up to :data:`NUM_EXAMPLES` shared n-grams; ``{}``
    when clean. One document at a time, in memory (for records checked as they are generated); the
    ``max_matches`` rule of :func:`decontaminate` (which needs the whole source) is not applied.
    ``cache``: word-hash memo to reuse across calls."""
    ws = words(text)
    wh = _word_hashes(ws, {} if cache is None else cache)
    found: dict[str, list[str]] = {}
    for length in index.lengths:
        h = ngram_hashes(wh, length)
        for p in np.flatnonzero(index.lookup(h)):
            owners = int(index.owner_of(h[p:p + 1])[0])
            for j, name in enumerate(index.names):
                if owners >> j & 1:
                    ex = found.setdefault(name, [])
                    if len(ex) < NUM_EXAMPLES:
                        ex.append(" ".join(ws[p:p + length]))
    return found


# ---------------------------------------------------------------------------------------- pass 1 (workers)
_W: dict = {}  # per-process state: index, source path


def _init_worker(index: EvalIndex, source: str) -> None:
    _W["index"], _W["source"], _W["cache"] = index, source, {}


def _scan_chunk(chunk: tuple[int, list[bytes]]) -> tuple[int, int, list[tuple[int, np.ndarray, list]]]:
    """Scan one chunk: ``(documents, bytes, [(doc offset, matched hashes, [(hash, n-gram text)]), ...])``."""
    first_line, lines = chunk
    index: EvalIndex = _W["index"]
    cache: dict[str, int] = _W["cache"]
    if len(cache) > 2_000_000:  # bound the per-process word-hash cache
        cache.clear()
    docs, nbytes, hits = 0, 0, []
    for off, raw in enumerate(lines):
        nbytes += len(raw)
        if not raw.strip():
            continue
        lineno = first_line + off
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise MegasynthError(f"{_W['source']}:{lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise MegasynthError(f"{_W['source']}:{lineno}: expected a JSON object with a string 'text'")
        ws = words(rec["text"])
        wh = _word_hashes(ws, cache)
        matched, examples = [], []
        for length in index.lengths:
            h = ngram_hashes(wh, length)
            mask = index.lookup(h)
            if mask.any():
                pos = np.flatnonzero(mask)
                matched.append(h[pos])
                for p in pos[:NUM_EXAMPLES]:
                    examples.append((int(h[p]), " ".join(ws[p:p + length])))
        if matched:
            hits.append((docs, np.unique(np.concatenate(matched)), examples))
        docs += 1
    return docs, nbytes, hits


def _chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[int, list[bytes]]]:
    with open(path, "rb") as f:
        lines, size, first = [], 0, 1
        for lineno, raw in enumerate(f, 1):
            if not lines:
                first = lineno
            lines.append(raw)
            size += len(raw)
            if size >= chunk_bytes:
                yield first, lines
                lines, size = [], 0
        if lines:
            yield first, lines


def default_workers() -> int:
    """Cores this process may use (``os.sched_getaffinity``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------- the function
def decontaminate(source_jsonl: str | os.PathLike, eval_jsonls: Mapping[str, str | os.PathLike],
                  out_jsonl: str | os.PathLike, n: int = DEFAULT_N, workers: int | None = None, *,
                  min_n: int = DEFAULT_MIN_N, max_matches: int | None = DEFAULT_MAX_MATCHES,
                  index: EvalIndex | None = None, chunk_bytes: int | None = None) -> dict:
    """Copy ``source_jsonl`` to ``out_jsonl`` without the documents that overlap an eval set.

    Args:
        source_jsonl: training documents, one JSON object with a string ``text`` per line (natural
            corpus or synthetic shard); kept lines are copied byte for byte, blank lines dropped.
        eval_jsonls: eval set name → JSONL path (``text`` per line).
        out_jsonl: output path, written atomically (may equal ``source_jsonl``).
        n: n-gram size in words (13).
        workers: processes scanning the source (default: every core this process may use; 1 = in-process).
        min_n: shortest eval document in words that still contributes an n-gram (8).
        max_matches: ignore an eval n-gram found in more than this many source documents (10);
            ``None`` never ignores one.
        index: a prebuilt :func:`build_eval_index` (reuse across sources; ``eval_jsonls``, ``n`` and
            ``min_n`` are then taken from it).
        chunk_bytes: bytes of source lines per work item (default: about 16 items per worker, 64 KiB–8 MiB).

    Returns:
        ``{"source", "out", "n", "min_n", "max_matches", "documents_checked", "documents_removed",
        "documents_kept", "bytes", "wall_s", "documents_per_s", "mb_per_s", "workers", "eval_sets":
        {name: {"documents_checked", "documents_removed", "ngrams_matched", "ngrams_ignored_common",
        "examples", "eval_documents", "eval_documents_too_short", "eval_ngrams"}}}`` (documents are JSONL
        records; a document matching two eval sets counts as removed for both, once in the total).

    Raises:
        MegasynthError: missing or malformed source/eval file (``file:line``), bad ``n``/``min_n``.
    """
    t0 = time.monotonic()
    source, out = Path(source_jsonl), Path(out_jsonl)
    if not source.is_file():
        raise MegasynthError(f"{source}: file not found")
    if max_matches is not None and max_matches < 1:
        raise MegasynthError(f"decontaminate: max_matches must be >= 1 or None, got {max_matches}")
    if index is None:
        index = build_eval_index(eval_jsonls, n=n, min_n=min_n)
    workers = max(1, workers or default_workers())
    size = source.stat().st_size
    if chunk_bytes is None:
        chunk_bytes = int(min(8 << 20, max(64 << 10, size // (workers * 16) + 1)))
    logger.info("decontaminate %s: %.1f MB against %s (%d eval n-grams, n=%d), %d worker(s)", source.name,
                size / 1e6, ", ".join(index.names), len(index.keys), index.n, workers)

    counts: Counter = Counter()  # matched hash -> source documents containing it
    examples: dict[int, str] = {}  # hash -> n-gram text (first few per document, document order)
    docs = 0
    progress = Progress(f"decontaminate {source.name}", total=size / 1e6, unit="MB")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, side_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".matches", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as side:
            if workers == 1:
                _init_worker(index, str(source))
                results = map(_scan_chunk, _chunks(source, chunk_bytes))
                pool = None
            else:
                pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (index, str(source)))
                results = pool.imap(_scan_chunk, _chunks(source, chunk_bytes))
            try:
                for n_docs, n_bytes, hits in results:
                    for off, hashes, exs in hits:
                        side.write(np.array([docs + off, len(hashes)], dtype=np.int64).tobytes())
                        side.write(hashes.tobytes())
                        counts.update(hashes.tolist())
                        for h, text in exs:
                            if h not in examples and len(examples) < 64 * NUM_EXAMPLES * len(index.names):
                                examples[h] = text
                    docs += n_docs
                    progress.update(n_bytes / 1e6)
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
        scan_s = progress.close()
        common = {h for h, c in counts.items() if max_matches is not None and c > max_matches}
        stats = _copy_kept(source, out, side_name, index, common, docs)
    finally:
        Path(side_name).unlink(missing_ok=True)

    per_set = stats.pop("per_set")
    matched = np.array(list(counts), dtype=np.uint64)
    owners = index.owner_of(matched) if len(matched) else np.empty(0, dtype=np.uint64)
    is_common = np.isin(matched, np.array(sorted(common), dtype=np.uint64))
    eval_sets = {}
    for j, name in enumerate(index.names):
        mine = (owners >> np.uint64(j)) & np.uint64(1) == 1
        effective = set(matched[mine & ~is_common].tolist())
        eval_sets[name] = {
            "documents_checked": docs, "documents_removed": per_set[j], "ngrams_matched": len(effective),
            "ngrams_ignored_common": int((mine & is_common).sum()),
            "examples": [text for h, text in examples.items() if h in effective][:NUM_EXAMPLES],
            "eval_documents": index.info[name]["documents"],
            "eval_documents_too_short": index.info[name]["documents_too_short"],
            "eval_ngrams": index.info[name]["ngrams"],
        }
    wall = time.monotonic() - t0
    result = {
        "source": str(source), "out": str(out), "n": index.n, "min_n": index.min_n, "max_matches": max_matches,
        "documents_checked": docs, "documents_removed": stats["removed"], "documents_kept": docs - stats["removed"],
        "bytes": size, "wall_s": round(wall, 3), "scan_s": round(scan_s, 3),
        "documents_per_s": round(docs / wall, 2) if wall > 0 else None,
        "mb_per_s": round(size / 1e6 / wall, 3) if wall > 0 else None, "workers": workers, "eval_sets": eval_sets,
    }
    logger.info("decontaminate %s: removed %d of %d documents (%s) in %.1fs", source.name, stats["removed"], docs,
                ", ".join(f"{k}: {v['documents_removed']}" for k, v in eval_sets.items()), wall)
    return result


def _read_side(path: str) -> Iterator[tuple[int, np.ndarray]]:
    with open(path, "rb") as f:
        while True:
            head = f.read(16)
            if not head:
                return
            doc, k = np.frombuffer(head, dtype=np.int64)
            yield int(doc), np.frombuffer(f.read(8 * int(k)), dtype=np.uint64)


def _copy_kept(source: Path, out: Path, side: str, index: EvalIndex, common: set, docs: int) -> dict:
    """Pass 2: copy the lines of documents with no (not too common) matched n-gram; count removals."""
    per_set = [0] * len(index.names)
    removed = 0
    hits = _read_side(side)
    nxt = next(hits, None)
    common_arr = np.array(sorted(common), dtype=np.uint64)
    doc = 0
    with atomic_path(out) as tmp, open(source, "rb") as fin, open(tmp, "wb") as fout:
        for raw in fin:
            if not raw.strip():
                continue
            drop = False
            if nxt is not None and nxt[0] == doc:
                hashes = nxt[1]
                if len(common_arr):
                    hashes = hashes[~np.isin(hashes, common_arr)]
                if len(hashes):
                    drop = True
                    mask = int(np.bitwise_or.reduce(index.owner_of(hashes)))
                    for j in range(len(index.names)):
                        if mask >> j & 1:
                            per_set[j] += 1
                nxt = next(hits, None)
            if drop:
                removed += 1
            else:
                fout.write(raw if raw.endswith(b"\n") else raw + b"\n")
            doc += 1
    if doc != docs:
        raise MegasynthError(f"{source}: changed while being decontaminated ({docs} then {doc} documents)")
    return {"removed": removed, "per_set": per_set}
