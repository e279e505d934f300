"""Reference-document selection: a cheap heuristic prefilter, then a rating by the generator.

Prefilter (:func:`prefilter_reason`), first failing check wins:

- ``too_short`` / ``too_long``: characters outside ``[min_chars, max_chars]``;
- ``symbols``: share of characters that are not alphanumeric, whitespace or common punctuation
  (``.,;:!?'"()-``) above ``max_symbol_ratio`` (cf. Gopher's symbol-to-word filter, Rae et al. 2021);
- ``language``: share of words that are English stop words below ``min_stopword_ratio`` (Gopher's
  stop-word rule, a language proxy that needs no model).

Rating: the generator answers ``{"score": n}`` with n in 1..5 (the FineWeb-Edu-style educational value
prompt in :mod:`.prompts`); :func:`parse_score` reads it tolerantly (JSON first, else the first digit
1-5 that stands alone) and returns ``None`` when it cannot.
"""

from __future__ import annotations

import re

from megasynth.generate.synthllm.concepts import STOPWORDS, _first_json_object

PREFILTER_REASONS = ("too_short", "too_long", "symbols", "language")
_PUNCT = set(".,;:!?'\"()-\u2019\u2018\u201c\u201d")
_DIGIT = re.compile(r"(?<![\d.])([1-5])(?![\d.]\d)")

SCORE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                "required": ["score"], "additionalProperties": False}


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither alphanumeric, whitespace nor common punctuation."""
    if not text:
        return 0.0
    bad = sum(1 for ch in text if not (ch.isalnum() or ch.isspace() or ch in _PUNCT))
    return bad / len(text)


def stopword_ratio(text: str) -> float:
    """Share of whitespace-separated words (lower-cased, punctuation stripped) that are English stop words."""
    words = [w.strip(".,;:!?'\"()[]").lower() for w in text.split()]
    words = [w for w in words if w]
    if not words:
        return 0.0
    return sum(1 for w in words if w in STOPWORDS) / len(words)


def prefilter_reason(text: str, *, min_chars: int = 200, max_chars: int = 20000, max_symbol_ratio: float = 0.1,
                     min_stopword_ratio: float = 0.05) -> str | None:
    """The prefilter reason to reject ``text`` (one of :data:`PREFILTER_REASONS`), or ``None`` to keep it."""
    n = len(text)
    if n < min_chars:
        return "too_short"
    if n > max_chars:
        return "too_long"
    if symbol_ratio(text) > max_symbol_ratio:
        return "symbols"
    if stopword_ratio(text) < min_stopword_ratio:
        return "language"
    return None


def parse_score(text: str) -> int | None:
    """The 1-5 rating in a rating output (``{"score": 4}``, ``"Score: 4/5"``, ``"4"``), else ``None``."""
    if not isinstance(text, str) or not text.strip():
        return None
    obj = _first_json_object(text)
    if obj is not None:
        v = obj.get("score")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= 5 and float(v).is_integer():
            return int(v)
        if isinstance(v, str) and v.strip() in {"1", "2", "3", "4", "5"}:
            return int(v.strip())
    m = _DIGIT.search(text)
    return int(m.group(1)) if m else None
