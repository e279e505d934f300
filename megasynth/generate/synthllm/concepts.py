"""Concept extraction output: JSON schema, tolerant parser, normalisation.

The generator answers the extraction prompt (:mod:`.prompts`) with ``{"topics": [...], "concepts": [...]}``.
With vLLM structured output (:func:`extraction_schema`) the text is valid JSON unless it was cut by
``max_tokens``; without it (or cut), :func:`parse_concepts` reads what it can:

1. the first balanced ``{...}`` that parses as JSON with a ``concepts`` and/or ``topics`` list;
2. else a truncated JSON object: the complete quoted strings inside the first ``[...`` after ``"concepts"``;
3. else bullet / numbered lines, or one comma/semicolon separated line after ``Concepts:``.

Normalisation (:func:`normalize_concept`): Unicode NFKC, lower case, punctuation other than inner
hyphens/apostrophes removed, whitespace collapsed, and simple English plural folding of the last word
(``-ies`` → ``-y``, ``-ses/-xes/-zes/-ches/-shes`` → drop ``es``, ``-s`` → drop ``s`` except after ``s``,
``u``, ``i`` and in words of <= 3 letters). Concepts that normalise to nothing, to a single character
or to a stop word are dropped, duplicates keep their first position.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field

# Statuses of one extraction output.
OK, MALFORMED, EMPTY = "ok", "malformed", "empty"

_WORD_CHARS = re.compile(r"[^\w\s'\-]+", re.UNICODE)
_SPACES = re.compile(r"\s+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|[a-z][.)])\s+(.+?)\s*$", re.IGNORECASE)
_AFTER_LABEL = re.compile(r"(?:concepts?|topics?|key concepts?)\s*[:\-]\s*(.+)", re.IGNORECASE)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')

STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that "
    "these those he she they we you i his her their our your my not no yes so than then there here which who "
    "whom what when where why how all any each some such can could would should will shall may might must do "
    "does did done have has had into over under about also very more most other only own same too just".split())


def extraction_schema(max_concepts: int, max_concept_chars: int) -> dict:
    """JSON schema of the extraction answer: up to ``max_concepts`` topics and concepts (strings of at
    most ``max_concept_chars`` characters, letters/digits first). A pattern (no ``maxLength``) bounds the
    strings: vLLM's xgrammar backend rejects pattern + length bounds together."""
    item = {"type": "string", "pattern": rf"^[A-Za-z0-9][A-Za-z0-9 '\-]{{0,{max(0, max_concept_chars - 1)}}}$"}
    arr = {"type": "array", "items": item, "minItems": 1, "maxItems": max_concepts}
    topics = {"type": "array", "items": item, "minItems": 1, "maxItems": max(1, min(3, max_concepts))}
    return {"type": "object", "properties": {"topics": topics, "concepts": arr},
            "required": ["topics", "concepts"], "additionalProperties": False}


def _fold_plural(word: str) -> str:
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize_concept(text: str) -> str:
    """Canonical form of a concept string (see module docstring); ``""`` if nothing is left."""
    s = unicodedata.normalize("NFKC", str(text)).lower().replace("_", " ")
    s = _WORD_CHARS.sub(" ", s)
    words = [w.strip("'-") for w in _SPACES.split(s)]
    words = [w for w in words if w]
    if not words:
        return ""
    words[-1] = _fold_plural(words[-1])
    out = " ".join(words)
    if len(out) < 2 or out in STOPWORDS:
        return ""
    return out


def normalize_concepts(items, max_concepts: int | None = None) -> list[str]:
    """Normalise, drop empties and duplicates (first occurrence wins), keep at most ``max_concepts``."""
    seen: dict[str, None] = {}
    for it in items:
        if not isinstance(it, str):
            continue
        c = normalize_concept(it)
        if c and c not in seen:
            seen[c] = None
            if max_concepts is not None and len(seen) >= max_concepts:
                break
    return list(seen)


@dataclass
class ParsedConcepts:
    """Result of :func:`parse_concepts`: ``status`` in (``ok``, ``malformed``, ``empty``), the method that
    read the text (``json``, ``partial_json``, ``lines``, ``none``), normalised ``concepts`` and ``topics``."""

    status: str
    method: str
    concepts: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)


def _first_json_object(text: str):
    """The first balanced ``{...}`` in ``text`` that parses as a JSON object, else ``None``."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for j in range(start, len(text)):
            ch = text[j]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start:j + 1])
                    except json.JSONDecodeError:
                        break
                    if isinstance(obj, dict):
                        return obj
                    break
        start = text.find("{", start + 1)
    return None


def _partial_list(text: str, key: str) -> list[str]:
    m = re.search(rf'"{key}"\s*:\s*\[', text)
    if not m:
        return []
    rest = text[m.end():]
    end = rest.find("]")
    body = rest if end == -1 else rest[:end]
    out = []
    for q in _QUOTED.findall(body):
        try:
            out.append(json.loads(f'"{q}"'))
        except json.JSONDecodeError:
            continue
    return out


def parse_concepts(text: str, max_concepts: int = 10) -> ParsedConcepts:
    """Read topics and concepts from one extraction output; never raises.

    Returns ``status="empty"`` for blank output, ``"malformed"`` when no concept could be read, else
    ``"ok"`` with normalised, deduplicated concepts (at most ``max_concepts``; topics at most 3). Topics
    are also counted as concepts of the document (they are its highest-level concepts).
    """
    if not isinstance(text, str) or not text.strip():
        return ParsedConcepts(EMPTY, "none")
    obj = _first_json_object(text)
    if obj is not None and isinstance(obj.get("concepts", obj.get("topics")), list):
        topics = normalize_concepts(obj.get("topics") or [], 3) if isinstance(obj.get("topics"), list) else []
        concepts = normalize_concepts(list(obj.get("concepts") or []) if isinstance(obj.get("concepts"), list)
                                      else [], max_concepts)
        allc = normalize_concepts(topics + concepts, max_concepts)
        return ParsedConcepts(OK if allc else MALFORMED, "json", allc, topics)
    topics = normalize_concepts(_partial_list(text, "topics"), 3)
    concepts = normalize_concepts(_partial_list(text, "concepts"), max_concepts)
    if topics or concepts:
        return ParsedConcepts(OK, "partial_json", normalize_concepts(topics + concepts, max_concepts), topics)
    items: list[str] = []
    for line in text.splitlines():
        m = _BULLET.match(line)
        if m:
            items.append(m.group(1))
    if not items:
        m = _AFTER_LABEL.search(text)
        if m:
            items = re.split(r"[,;]", m.group(1).splitlines()[0])
    items = [i for i in items if 0 < len(i.split()) <= 8]  # a concept is a short phrase, not a sentence
    concepts = normalize_concepts(items, max_concepts)
    if concepts:
        return ParsedConcepts(OK, "lines", concepts, [])
    return ParsedConcepts(MALFORMED, "none")
