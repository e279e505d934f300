"""Held-out evaluation by documents: bits per byte and per-token losses of a Megatron indexed eval set.

Every document of ``<prefix>.{bin,idx}`` (its text tokens and the ``eod`` the preprocess stage appended) is
scored once, as a :class:`~megasynth.evaluation.scoring.Request` with context ``[eod]`` (the token every
training document follows) and the document's tokens as continuation. A document longer than
``seq_length`` is scored in consecutive windows of ``seq_length`` tokens, each token once
(:func:`~megasynth.evaluation.scoring.request_rows`, lm-evaluation-harness's rolling windows: the first
token of a later window is predicted from the previous window's last token only; the last window is
extended back to ``seq_length`` tokens of input). No document sees another one.

Measures (Σ over the documents evaluated; ``nats(d)`` = Σ of the losses of every token of ``d``, the final
``eod`` included):

- ``nats_per_token = Σ nats(d) / Σ tokens(d)``
- ``bits_per_byte = Σ nats(d) / (ln 2 · Σ bytes(d))`` with ``bytes(d)`` the UTF-8 bytes of the document
  text, which does not depend on the tokenizer (Gao et al. 2020, "The Pile", §4; the ``eod`` has no bytes).

Per-token losses come back as numpy arrays aligned with the tokens of the ``.bin`` (``losses[i]`` = loss of
predicting token ``i``), which :func:`megasynth.analysis.unigrams.loss_by_type` reads when every document
is evaluated; :func:`save_token_losses` writes them as ``runs/<run>/token_losses/<eval_set>.npy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from megasynth.evaluation.scoring import DEFAULT_MAX_BATCH_TOKENS, Request, request_rows, score_rows, unwrap
from megasynth.utils import MegasynthError, atomic_path

LN2 = math.log(2.0)

TOKEN_LOSS_DTYPE = np.dtype([("token", "<i4"), ("loss", "<f4")])
"""Record of one token in ``token_losses/<eval_set>.npy``: its id and the loss (nats) of predicting it."""


@dataclass
class HeldoutResult:
    """Documents of one eval set, scored.

    Attributes:
        documents: ``[n_docs]`` int64 document indices (into the indexed dataset) evaluated, in order.
        document_offsets: ``[n_docs + 1]`` int64 offsets of each document's tokens in ``token_ids``.
        document_bytes: ``[n_docs]`` int64 UTF-8 bytes of each document's text.
        document_nats: ``[n_docs]`` float64 summed loss of each document (nats).
        token_ids: ``[n_tokens]`` int32 token ids (the ``.bin`` tokens of the documents, in order).
        token_losses: ``[n_tokens]`` float32 loss of predicting each token (nats).
    """

    documents: np.ndarray
    document_offsets: np.ndarray
    document_bytes: np.ndarray
    document_nats: np.ndarray
    token_ids: np.ndarray
    token_losses: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.size)

    @property
    def num_bytes(self) -> int:
        return int(self.document_bytes.sum())

    @property
    def nats(self) -> float:
        return float(self.document_nats.sum())

    @property
    def nats_per_token(self) -> float:
        """Mean loss per token (nats/token), the tokenizer-dependent number."""
        return self.nats / self.num_tokens

    @property
    def bits_per_byte(self) -> float:
        """``Σ nats / (ln 2 · Σ UTF-8 bytes)``: tokenizer-independent."""
        return self.nats / (LN2 * self.num_bytes) if self.num_bytes else float("nan")


def read_documents(prefix: str | Path, max_documents: Optional[int] = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(document indices, token arrays)`` of the first ``max_documents`` documents (``None`` = all) of
    the Megatron indexed dataset ``prefix`` (``<prefix>.bin``/``.idx``), read with megatron-core's
    ``IndexedDataset``.

    Raises:
        MegasynthError: files missing, or no tokens.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = str(prefix)
    if not IndexedDataset.exists(prefix):
        raise MegasynthError(f"{prefix}: indexed dataset (.bin/.idx) not found")
    if Path(prefix + ".bin").stat().st_size == 0:  # (an empty file cannot be memory-mapped)
        raise MegasynthError(f"{prefix}: eval set has no tokens")
    ds = IndexedDataset(prefix)
    bounds = ds.document_indices
    n_docs = len(bounds) - 1
    if max_documents is not None:
        n_docs = min(n_docs, max_documents)
    docs = []
    for d in range(n_docs):
        parts = [np.asarray(ds[int(i)]) for i in range(int(bounds[d]), int(bounds[d + 1]))]
        docs.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32))
    if not any(len(t) for t in docs):
        raise MegasynthError(f"{prefix}: eval set has no tokens")
    return np.arange(n_docs, dtype=np.int64), docs


def document_text_bytes(docs: Sequence[np.ndarray], tokenizer) -> np.ndarray:
    """UTF-8 bytes of each document's text, ``[num_documents]`` int64 (0 for an empty document): the
    ``detokenize`` of its tokens without the final ``eod`` (exact for the byte-level BPE and Llama-3
    tokenizers). ``docs`` as :func:`read_documents` returns them."""
    eod = tokenizer.eod
    return np.asarray([len(tokenizer.detokenize(t[:-1] if t[-1] == eod else t).encode("utf-8")) if len(t) else 0
                       for t in docs], dtype=np.int64)


def evaluate_documents(model: torch.nn.Module, prefix: str | Path, tokenizer, seq_length: Optional[int] = None, *,
                       max_documents: Optional[int] = None, document_bytes: Optional[Sequence[int]] = None,
                       max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, progress: Optional[str] = None) -> HeldoutResult:
    """Score every document of an indexed eval set once (see the module docstring).

    Args:
        model: a megatron-core ``GPTModel`` (layouts: :func:`~megasynth.evaluation.scoring.score_rows`).
        prefix: ``tokenized/<eval_set>_text_document`` (no extension).
        tokenizer: the study's tokenizer: its ``eod`` prefixes every document; it also gives each
            document's text bytes (``detokenize`` of its tokens without the final ``eod``, exact for the
            byte-level BPE and Llama-3 tokenizers) unless ``document_bytes`` is passed.
        seq_length: window length in tokens (default: the model's ``max_sequence_length``).
        max_documents: the first this many documents; ``None`` = all ("all documents once").
        document_bytes: UTF-8 bytes of each document's text, in document order (e.g. from the corpus
            JSONL), instead of detokenizing.
        max_batch_tokens: tokens per forward pass (rows × longest row).
        progress: name of a progress log line, or ``None``.

    Returns:
        :class:`HeldoutResult` (identical on every rank).

    Raises:
        MegasynthError: files missing, an eval set with no tokens, ``document_bytes`` of another length.
    """
    seq_length = seq_length or unwrap(model).max_sequence_length
    doc_ids, docs = read_documents(prefix, max_documents)
    keep = [i for i, t in enumerate(docs) if len(t)]
    if document_bytes is None:
        document_bytes = document_text_bytes(docs, tokenizer)
    if len(document_bytes) < len(docs):
        raise MegasynthError(f"document_bytes: {len(document_bytes)} values for {len(docs)} documents of {prefix}")
    nbytes = [int(document_bytes[i]) for i in keep]
    rows, owner = [], []
    for j, i in enumerate(keep):
        for row in request_rows(Request([tokenizer.eod], docs[i].tolist()), seq_length, f"{prefix}: document {i}"):
            rows.append(row)
            owner.append(j)
    out = score_rows(model, rows, max_batch_tokens=max_batch_tokens, progress=progress)
    per_doc: list[list[torch.Tensor]] = [[] for _ in keep]
    for j, (loss, _) in zip(owner, out):
        per_doc[j].append(loss)
    losses = [torch.cat(parts).numpy().astype(np.float32) for parts in per_doc]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in losses])
    return HeldoutResult(
        documents=doc_ids[keep],
        document_offsets=offsets,
        document_bytes=np.asarray(nbytes, dtype=np.int64),
        document_nats=np.asarray([float(x.astype(np.float64).sum()) for x in losses], dtype=np.float64),
        token_ids=np.concatenate([docs[i] for i in keep]).astype(np.int32),
        token_losses=np.concatenate(losses),
    )


def save_token_losses(path: str | Path, result: HeldoutResult) -> Path:
    """Write ``result``'s per-token ids and losses to ``path`` (``.npy``, dtype :data:`TOKEN_LOSS_DTYPE`),
    atomically. Read back with ``np.load(path)["loss"]`` / ``["token"]``."""
    path = Path(path)
    arr = np.empty(result.num_tokens, dtype=TOKEN_LOSS_DTYPE)
    arr["token"], arr["loss"] = result.token_ids, result.token_losses
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    return path
