"""Quality filters for generated outputs: empty, truncated, degenerate.

Each output gets at most one reason, checked in this order:

- ``empty``: fewer than ``min_output_words`` whitespace-separated words;
- ``truncated``: ``finish_reason == "length"`` (hit ``max_tokens``) unless ``keep_truncated``;
- ``degenerate``: the most frequent word 4-gram covers more than ``max_repeated_ngram_frac`` of all
  word 4-grams (repetition loops; cf. the duplicate n-gram filters of Gopher, Rae et al. 2021).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

REASONS = ("empty", "truncated", "degenerate")


def top_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word ``n``-grams (lower-cased) taken by the most frequent one; 0.0 if there are none."""
    words = text.lower().split()
    if len(words) < n:
        return 0.0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return max(counts.values()) / (len(words) - n + 1)


def filter_reason(text: str, finish_reason: str | None, *, min_output_words: int = 20,
                  keep_truncated: bool = False, max_repeated_ngram_frac: float = 0.3) -> str | None:
    """The reason to drop an output (one of :data:`REASONS`), or ``None`` to keep it."""
    if len(text.split()) < min_output_words:
        return "empty"
    if finish_reason == "length" and not keep_truncated:
        return "truncated"
    if top_ngram_fraction(text, 4) > max_repeated_ngram_frac:
        return "degenerate"
    return None


def manifest_counts(totals: dict[str, int], reasons: Sequence[str] = REASONS) -> dict:
    """A manifest's ``counts`` (``requests``, ``kept``, ``filtered`` by reason), ``prompt_tokens`` and
    ``output_tokens`` from the summed shard markers (:func:`megasynth.utils.sum_markers`)."""
    return {"counts": {"requests": totals.get("requests", 0), "kept": totals.get("kept", 0),
                       "filtered": {r: totals.get(f"filtered_{r}", 0) for r in reasons}},
            "prompt_tokens": totals.get("prompt_tokens", 0), "output_tokens": totals.get("output_tokens", 0)}
