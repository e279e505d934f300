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

Parts: :mod:`megasynth.data.inputs` (reading work items), :mod:`megasynth.data.encode` (workers),
:mod:`megasynth.data.indexed` (the ``.bin``/``.idx`` writer); this module drives them (:func:`run_engine`).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import psutil

from megasynth.data.encode import EncodeSpec, encode_chunk, worker_pool
from megasynth.data.indexed import IndexedWriter, select_docs, write_index
from megasynth.data.inputs import input_size, iter_chunks
from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.data")


def tmp_prefix(final_prefix: Path) -> Path:
    """The temporary prefix outputs are written under until they are complete (``.<name>.tmp<pid>``)."""
    return final_prefix.parent / f".{final_prefix.name}.tmp{os.getpid()}"


def clean_stale_tmp(final_prefix: Path) -> None:
    """Remove temporary files a killed earlier run left for ``final_prefix``."""
    for p in final_prefix.parent.glob(f".{glob.escape(final_prefix.name)}.tmp*"):
        try:
            pid = int(p.name.rsplit(".tmp", 1)[1].split(".")[0])
        except ValueError:
            continue
        if pid == os.getpid() or not psutil.pid_exists(pid):
            p.unlink(missing_ok=True)


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
    rr = partitions > 1 and not keep_sequential
    nparts = partitions if rr else 1
    tmp: dict[str, list[Path]] = {}
    writers: dict[str, list[IndexedWriter]] = {}
    for key, prefix in prefixes.items():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(prefix)
        t = tmp_prefix(prefix)
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
                own_pool = pool = worker_pool(spec, workers)
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
                        writers[key][i].append(*select_docs(kr, part == i))
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
                with open(f"{tmp_prefix(prefix)}.bin", "wb") as out:
                    for w in ws:
                        w.close()
                        lens.extend(w._lens)
                        docs.extend(w._docs)
                        with open(w.bin_path, "rb") as src:
                            shutil.copyfileobj(src, out, 16 << 20)
                        w.bin_path.unlink()
                write_index(f"{tmp_prefix(prefix)}.idx", spec.dtype,
                            np.concatenate(lens) if lens else np.zeros(0, np.int32),
                            np.concatenate(docs) if docs else np.zeros(0, np.int64))
            else:
                ws[0].finalize(f"{tmp_prefix(prefix)}.idx")
        for key, prefix in prefixes.items():
            os.replace(f"{tmp_prefix(prefix)}.bin", f"{prefix}.bin")
            os.replace(f"{tmp_prefix(prefix)}.idx", f"{prefix}.idx")
    except BaseException:
        if own_pool is not None:
            own_pool.terminate()
            own_pool = None
        for key, prefix in prefixes.items():
            for w in writers[key]:
                w.close()
                w.bin_path.unlink(missing_ok=True)
            for suf in (".bin", ".idx"):
                Path(f"{tmp_prefix(prefix)}{suf}").unlink(missing_ok=True)
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
