"""Unigram statistics of Megatron indexed datasets, streamed from the ``.bin`` file.

A Megatron indexed dataset is ``<prefix>.idx`` (header ``MMIDIDX\\x00\\x00``, version ``<Q``, dtype code
``<B``, sequence and document counts, then the sequence lengths/pointers) and ``<prefix>.bin`` (all
token ids concatenated, in that dtype). :func:`count_unigrams` reads the dtype from the ``.idx``,
memory-maps the ``.bin`` and counts with ``np.bincount`` over fixed-size chunks, so memory is
O(chunk + vocabulary) whatever the file size.

Statistics (``p`` = eval distribution, ``q`` = training distribution over a vocabulary of ``V`` ids):

* coverage: share of the eval set's distinct types (``type_coverage``) and of its tokens
  (``token_coverage``) whose id occurs at least once in the training set;
* ``KL(p‖q) = Σ_{p_i > 0} p_i log(p_i / q_i)`` in nats, with additive (Laplace/Lidstone) smoothing of
  the training counts only: ``q_i = (c_i + α) / (Σc + α·V)`` (α = ``smoothing``, default 1), so unseen
  eval types have finite cost; ``p`` is unsmoothed;
* entropy ``H = −Σ p_i log p_i`` (nats; also bits), the number of distinct types, and tail mass: the
  probability mass outside the ``top_k`` most frequent types and the mass of types seen at most
  ``rare_count`` times — a synthetic corpus that "shrinks" the distribution has lower entropy, fewer
  types and less tail mass than natural text of the same size;
* loss attribution: given per-token eval losses aligned with the eval ``.bin`` (the loss of
  predicting each token, NaN where none), the total loss carried by each type, and the rare types
  (training count ≤ ``rare_count``) that carry most of it;
* a run's training distribution: the *expected* count of each id in its training stream,
  ``Σ_s share_s · D · c_s / N_s`` over the mixture's sources (:func:`expected_counts`; ``D`` training tokens,
  ``c_s`` and ``N_s`` a source's counts and size), and eval losses bucketed by that count
  (:func:`loss_by_frequency`: the study's "rare unigrams drive the loss" reading);
* size-matched comparisons: a corpus subsampled without replacement to another's size
  (:func:`subsample_counts`), so entropy, types and tail mass of corpora of different sizes compare.
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from megasynth.utils import MegasynthError, Progress

logger = logging.getLogger("megasynth.analysis")

__all__ = ["read_index_dtype", "token_memmap", "count_unigrams", "distribution_stats", "coverage", "kl_divergence",
           "loss_by_type", "rare_loss_contributors", "compare_corpora", "DTYPES", "type_losses", "expected_counts",
           "subsample_counts", "loss_by_frequency", "FREQUENCY_EDGES"]

_INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}
"""Megatron ``DType`` codes (``megatron.core.datasets.indexed_dataset.DType``)."""
CHUNK_TOKENS = 1 << 24


def _prefix(path: str | Path) -> Path:
    p = str(path)
    for ext in (".bin", ".idx"):
        if p.endswith(ext):
            p = p[: -len(ext)]
    return Path(p)


def read_index_dtype(prefix: str | Path) -> tuple[np.dtype, int, int]:
    """(token dtype, sequence count, document count) from ``<prefix>.idx``.

    Raises:
        MegasynthError: missing file, bad magic/version, unknown dtype code.
    """
    idx = Path(f"{_prefix(prefix)}.idx")
    if not idx.is_file():
        raise MegasynthError(f"{idx}: indexed dataset index not found")
    with open(idx, "rb") as f:
        head = f.read(9 + 8 + 1 + 8 + 8)
    if len(head) < 34 or head[:9] != _INDEX_HEADER:
        raise MegasynthError(f"{idx}: not a Megatron indexed dataset index (bad header)")
    version = struct.unpack("<Q", head[9:17])[0]
    if version != 1:
        raise MegasynthError(f"{idx}: unsupported index version {version}")
    code = head[17]
    if code not in DTYPES:
        raise MegasynthError(f"{idx}: unknown dtype code {code}")
    seqs, docs = struct.unpack("<QQ", head[18:34])
    return np.dtype(DTYPES[code]), int(seqs), int(docs)


def token_memmap(prefix: str | Path) -> np.ndarray:
    """All token ids of ``<prefix>.bin`` as a read-only ``np.memmap`` ``[n_tokens]`` (dtype from ``.idx``)."""
    dtype, _, _ = read_index_dtype(prefix)
    binp = Path(f"{_prefix(prefix)}.bin")
    if not binp.is_file():
        raise MegasynthError(f"{binp}: indexed dataset data file not found")
    size = binp.stat().st_size
    if size % dtype.itemsize:
        raise MegasynthError(f"{binp}: size {size} is not a multiple of the token size {dtype.itemsize}")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(binp, dtype=dtype, mode="r")


def count_unigrams(prefix: str | Path, vocab_size: int | None = None, chunk_tokens: int = CHUNK_TOKENS) -> np.ndarray:
    """Token-id counts of an indexed dataset, streamed in chunks of ``chunk_tokens`` tokens.

    Args:
        prefix: Megatron data prefix (``.bin``/``.idx`` suffix optional).
        vocab_size: length of the result (≥ max id + 1); default max id + 1.

    Returns:
        ``[V]`` int64 counts.

    Raises:
        MegasynthError: bad files, negative ids, an id ≥ ``vocab_size``.
    """
    toks = token_memmap(prefix)
    if toks.dtype.kind == "f":
        raise MegasynthError(f"{_prefix(prefix)}.idx: float token dtype {toks.dtype} is not a token-id dataset")
    counts = np.zeros(vocab_size or 0, dtype=np.int64)
    prog = Progress(f"unigrams {_prefix(prefix).name}", total=toks.size, unit="tokens")
    for start in range(0, toks.size, chunk_tokens):
        chunk = np.asarray(toks[start:start + chunk_tokens])
        if toks.dtype.kind == "i" and chunk.size and chunk.min() < 0:
            raise MegasynthError(f"{_prefix(prefix)}.bin: negative token id at chunk {start}")
        c = np.bincount(chunk)
        if c.size > counts.size:
            if vocab_size is not None:
                raise MegasynthError(f"{_prefix(prefix)}.bin: token id {c.size - 1} >= vocab_size {vocab_size}")
            counts = np.concatenate([counts, np.zeros(c.size - counts.size, dtype=np.int64)])
        counts[:c.size] += c
        prog.update(chunk.size)
    if toks.size > chunk_tokens:
        prog.close()
    return counts


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(a)
    return a if a.size >= n else np.concatenate([a, np.zeros(n - a.size, dtype=a.dtype)])


def distribution_stats(counts: np.ndarray, top_k: int = 1000, rare_count: int = 1) -> dict[str, Any]:
    """Entropy (nats, bits), types, tokens, tail mass beyond the ``top_k`` types, mass of types with
    count ≤ ``rare_count``, and the share of types that are singletons."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise MegasynthError("distribution_stats: empty corpus (no tokens)")
    p = c[c > 0] / total
    srt = np.sort(p)[::-1]
    H = float(-(p * np.log(p)).sum())
    nz = c[c > 0]
    return {"tokens": int(total), "types": int(p.size), "entropy_nats": H, "entropy_bits": H / math.log(2),
            "top_k": top_k, "tail_mass_beyond_top_k": float(srt[top_k:].sum()),
            "rare_count": rare_count, "rare_type_mass": float(nz[nz <= rare_count].sum() / total),
            "singleton_type_share": float((nz == 1).sum() / nz.size)}


def coverage(eval_counts: np.ndarray, train_counts: np.ndarray) -> dict[str, float]:
    """Share of the eval set's types and tokens whose id occurs in the training set."""
    n = max(len(eval_counts), len(train_counts))
    e, t = _pad(eval_counts, n), _pad(train_counts, n)
    ev = e > 0
    if not ev.any():
        raise MegasynthError("coverage: empty eval set (no tokens)")
    seen = ev & (t > 0)
    return {"type_coverage": float(seen.sum() / ev.sum()), "token_coverage": float(e[seen].sum() / e.sum()),
            "eval_types": int(ev.sum()), "eval_types_unseen": int((ev & (t == 0)).sum())}


def kl_divergence(eval_counts: np.ndarray, train_counts: np.ndarray, smoothing: float = 1.0,
                  vocab_size: int | None = None) -> float:
    """KL(p_eval ‖ q_train) in nats; ``q_i = (c_i + α) / (Σc + α·V)`` (additive smoothing α), V =
    ``vocab_size`` (default: the longer count vector). ``p`` is the unsmoothed eval distribution.

    Raises:
        MegasynthError: α < 0, or α = 0 with an eval type unseen in training (infinite KL).
    """
    if smoothing < 0:
        raise MegasynthError(f"smoothing: must be >= 0, got {smoothing}")
    V = vocab_size or max(len(eval_counts), len(train_counts))
    e = _pad(eval_counts, V).astype(np.float64)
    t = _pad(train_counts, V).astype(np.float64)
    p = e / e.sum()
    q = (t + smoothing) / (t.sum() + smoothing * V)
    m = p > 0
    if np.any(q[m] == 0):
        raise MegasynthError("KL divergence is infinite: an eval type never occurs in training; use smoothing > 0")
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def loss_by_type(prefix: str | Path, losses: np.ndarray, vocab_size: int, chunk_tokens: int = CHUNK_TOKENS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of per-token losses per token id: ``(loss_sum [V], n [V])``.

    ``losses`` ``[n_tokens]`` (nats) is aligned with the tokens of ``<prefix>.bin``: ``losses[i]`` is
    the model's loss of predicting token ``i``; NaN marks tokens without a prediction (skipped).

    Raises:
        MegasynthError: length mismatch with the ``.bin``.
    """
    toks = token_memmap(prefix)
    losses = np.asarray(losses)
    if losses.shape != (toks.size,):
        raise MegasynthError(f"losses: expected shape ({toks.size},) aligned with {_prefix(prefix)}.bin, "
                             f"got {losses.shape}")
    s = np.zeros(vocab_size)
    n = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, toks.size, chunk_tokens):
        t = np.asarray(toks[start:start + chunk_tokens]).astype(np.int64)
        lo = np.asarray(losses[start:start + chunk_tokens], dtype=np.float64)
        ok = np.isfinite(lo)
        s += np.bincount(t[ok], weights=lo[ok], minlength=vocab_size)[:vocab_size]
        n += np.bincount(t[ok], minlength=vocab_size)[:vocab_size]
    return s, n


def rare_loss_contributors(loss_sum: np.ndarray, loss_n: np.ndarray, train_counts: np.ndarray,
                           rare_count: int = 10, top: int = 20, decode=None) -> dict[str, Any]:
    """The rare types (training count ≤ ``rare_count``) carrying the most eval loss.

    Returns:
        ``{"rare_count", "rare_loss_share", "rare_token_share", "mean_loss_rare", "mean_loss_other",
        "top": [{id, token, train_count, eval_count, mean_loss, loss_share}]}``.
    """
    V = len(loss_sum)
    t = _pad(train_counts, V)[:V]
    total = loss_sum.sum()
    rare = (t <= rare_count) & (loss_n > 0)
    other = (t > rare_count) & (loss_n > 0)
    order = np.argsort(-np.where(rare, loss_sum, -np.inf))[:top]
    rows = [{"id": int(i), "token": decode(int(i)) if decode else None, "train_count": int(t[i]),
             "eval_count": int(loss_n[i]), "mean_loss": float(loss_sum[i] / loss_n[i]),
             "loss_share": float(loss_sum[i] / total) if total > 0 else float("nan")} for i in order if rare[i]]
    return {"rare_count": rare_count, "rare_loss_share": float(loss_sum[rare].sum() / total) if total > 0 else float("nan"),
            "rare_token_share": float(loss_n[rare].sum() / max(loss_n.sum(), 1)),
            "mean_loss_rare": float(loss_sum[rare].sum() / max(loss_n[rare].sum(), 1)),
            "mean_loss_other": float(loss_sum[other].sum() / max(loss_n[other].sum(), 1)), "top": rows}


def compare_corpora(train: dict[str, str | Path], eval_sets: dict[str, str | Path], *, vocab_size: int | None = None,
                    smoothing: float = 1.0, top_k: int = 1000, rare_count: int = 10,
                    losses: dict[str, np.ndarray] | None = None, decode=None, top: int = 20,
                    counts_out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Unigram report: per corpus stats; per (eval, train) coverage and KL(eval‖train); rare-type loss.

    Args:
        train / eval_sets: name → Megatron prefix.
        losses: eval name → per-token losses aligned with that eval ``.bin`` (optional).
        counts_out: if given, filled with name → counts (for plots).
    """
    counts = {name: count_unigrams(p, vocab_size) for name, p in {**train, **eval_sets}.items()}
    V = vocab_size or max(c.size for c in counts.values())
    counts = {k: _pad(c, V) for k, c in counts.items()}
    if counts_out is not None:
        counts_out.update(counts)
    out: dict[str, Any] = {"vocab_size": V, "smoothing": smoothing,
                           "kl": "KL(p_eval || q_train), nats; q = (c + smoothing) / (N + smoothing * V)",
                           "corpora": {k: {"role": "train" if k in train else "eval",
                                           **distribution_stats(c, top_k, 1)} for k, c in counts.items()},
                           "pairs": [], "rare_loss": {}}
    for e in eval_sets:
        for t in train:
            out["pairs"].append({"eval": e, "train": t, **coverage(counts[e], counts[t]),
                                 "kl_nats": kl_divergence(counts[e], counts[t], smoothing, V)})
    for e, lo in (losses or {}).items():
        if e not in eval_sets:
            raise MegasynthError(f"losses: {e!r} is not an eval set ({', '.join(eval_sets)})")
        s, n = loss_by_type(eval_sets[e], lo, V)
        tr = sum(counts[t] for t in train)
        out["rare_loss"][e] = rare_loss_contributors(s, n, tr, rare_count, top, decode)
    return out


def type_losses(token_ids: np.ndarray, losses: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(loss_sum [V], n [V])`` of per-token losses ``[n]`` (nats) grouped by their ids ``[n]`` (a saved
    ``token_losses/<eval_set>.npy``: ``arr["token"]``, ``arr["loss"]``); NaN losses are skipped.

    Raises:
        MegasynthError: shapes differ, or an id outside ``[0, vocab_size)``.
    """
    t = np.asarray(token_ids).astype(np.int64)
    lo = np.asarray(losses, dtype=np.float64)
    if t.shape != lo.shape:
        raise MegasynthError(f"losses: shape {lo.shape} does not match the token ids' {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= vocab_size):
        raise MegasynthError(f"token ids: outside [0, {vocab_size})")
    ok = np.isfinite(lo)
    return (np.bincount(t[ok], weights=lo[ok], minlength=vocab_size)[:vocab_size],
            np.bincount(t[ok], minlength=vocab_size)[:vocab_size].astype(np.int64))


def expected_counts(source_counts: dict[str, np.ndarray], shares: dict[str, float], tokens: float) -> np.ndarray:
    """Expected count of each id in a run's ``tokens`` training tokens drawn from sources at ``shares``:
    ``Σ_s share_s · tokens · c_s / N_s`` (float64 ``[V]``).

    Raises:
        MegasynthError: a source with a positive share has no counts or no tokens.
    """
    out = None
    total = sum(r for r in shares.values() if r > 0)
    for src, r in shares.items():
        if r <= 0:
            continue
        c = source_counts.get(src)
        if c is None or c.sum() <= 0:
            raise MegasynthError(f"expected_counts: source {src!r} has no tokens")
        part = (r / total) * tokens * np.asarray(c, dtype=np.float64) / float(c.sum())
        out = part if out is None else _pad(out, part.size) + _pad(part, out.size)
    if out is None:
        raise MegasynthError("expected_counts: no source with a positive share")
    return out


def subsample_counts(counts: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Counts of ``n`` tokens drawn without replacement from a corpus with ``counts`` ``[V]`` (multivariate
    hypergeometric; ``counts`` itself when ``n`` ≥ its size)."""
    c = np.asarray(counts, dtype=np.int64)
    if n >= c.sum():
        return c.copy()
    return np.random.default_rng(seed).multivariate_hypergeometric(c, int(n), method="marginals").astype(np.int64)


FREQUENCY_EDGES = (0.0, 1.0, 10.0, 100.0, 1000.0, math.inf)
"""Training-count buckets of :func:`loss_by_frequency`: ``[0, 1)``, ``[1, 10)``, ``[10, 100)``, ``[100, 1000)``,
``[1000, ∞)`` (expected occurrences in the run's training tokens)."""


def loss_by_frequency(token_ids: np.ndarray, losses: np.ndarray, train_counts: np.ndarray,
                      edges: tuple[float, ...] = FREQUENCY_EDGES) -> list[dict[str, Any]]:
    """Eval tokens bucketed by the training count of their id: per bucket ``[lo, hi)`` the eval ``tokens``,
    ``token_share``, ``mean_loss`` (nats) and ``loss_share`` (of the summed eval loss).

    Raises:
        MegasynthError: shapes differ.
    """
    t = np.asarray(token_ids).astype(np.int64)
    lo = np.asarray(losses, dtype=np.float64)
    if t.shape != lo.shape:
        raise MegasynthError(f"losses: shape {lo.shape} does not match the token ids' {t.shape}")
    ok = np.isfinite(lo)
    t, lo = t[ok], lo[ok]
    freq = _pad(np.asarray(train_counts, dtype=np.float64), int(t.max()) + 1 if t.size else 0)[t]
    total, n = float(lo.sum()), t.size
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        m = (freq >= a) & (freq < b)
        k = int(m.sum())
        out.append({"lo": a, "hi": b, "tokens": k, "token_share": k / n if n else float("nan"),
                    "mean_loss": float(lo[m].mean()) if k else float("nan"),
                    "loss_share": float(lo[m].sum() / total) if total > 0 else float("nan")})
    return out
