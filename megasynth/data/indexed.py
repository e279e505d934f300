"""megatron-core's indexed dataset format, written: ``.bin`` (token ids) and ``.idx`` (``MMIDIDX`` version 1:
int32 sequence lengths, int64 byte pointers, int64 document indices), byte-identical to ``IndexedDatasetBuilder``."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
"""megatron-core ``_INDEX_HEADER``; followed by ``<Q`` version 1 and ``<B`` dtype code."""
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
"""megatron-core ``DType`` codes."""

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.data.encode import KeyResult


def optimal_dtype(vocab_size: Optional[int]) -> np.dtype:
    """megatron-core ``DType.optimal_dtype``: uint16 when ``vocab_size < 65500``, else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


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


def select_docs(kr: "KeyResult", mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documents of ``kr`` where ``mask`` (one bool per document) holds, in order."""
    dc = kr.doc_counts.astype(np.int64)
    seq_start = np.concatenate([[0], np.cumsum(dc)])
    tok_start = np.concatenate([[0], np.cumsum(kr.seq_lens.astype(np.int64))])
    doc_tok0, doc_tok1 = tok_start[seq_start[:-1]], tok_start[seq_start[1:]]
    seq_mask = np.repeat(mask, dc)
    tok_mask = np.repeat(mask, doc_tok1 - doc_tok0)
    return kr.ids[tok_mask], kr.seq_lens[seq_mask], kr.doc_counts[mask]
