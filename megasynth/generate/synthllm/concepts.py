"""Concept extraction output: JSON schema, tolerant parser, normalisation.

The generator answers the extraction prompt (:mod:`.prompts`) with ``{"topics": [...], "concepts": [...]}``.
With vLLM structured output (:func:`extraction_schema`) the text is valid JSON unless it was cut by
``max_tokens``; without it (or cut), :func:`parse_concepts` reads what it can:

1. the first balanced ``{...}`` that parses as JSON with a ``concepts`` and/or ``topics`` list;
2. else a truncated JSON object: the complete quoted strings inside the first ``[...`` after ``"concepts"``;
3. else bullet / numbered lines, or one comma/semicolon separated line after ``Concepts:``.

Normalisation (:func:`normalize_concept`): Unicode NFKC, lower case, punctuation other than inner
hyphens/apostrophes removed, whitespace collapsed, leading and trailing stop words removed (``the
economy`` → ``economy``), and simple English plural folding of the last word (``-ies`` → ``-y``,
``-ses/-xes/-zes/-ches/-shes`` → drop ``es``, ``-s`` → drop ``s`` except after ``s``, ``u``, ``i`` and in
words of <= 3 letters). Concepts that normalise to nothing, to a single character or to a stop word are
dropped, concepts of more than ``max_words`` words are dropped (SynthLLM's concepts are short terms;
counted as ``too_long``), duplicates keep their first position.

Merging (:func:`merge_concepts`): free-form terms from a small generator rarely match exactly across
documents (``tax cuts`` / ``cutting taxes`` / ``the tax cut``), which leaves the co-occurrence graph in
one clique per document and level 3 with nothing to walk. Concepts whose *content-word stem sets*
(stop words removed, Porter stems from nltk, Porter 1980) have a Jaccard similarity of at least
``threshold`` are merged into one representative. Representatives are chosen greedily (leader
clustering, no chaining): concepts in order of document frequency (descending), then fewer words,
then shorter, then alphabetical; each joins the most similar earlier representative at or above the
threshold, else becomes one. With the default 0.5 a term merges with any term of the same stems
(inflections and word order: ``tax cut`` = ``cutting taxes``) and a two-word term with a one-word term it
contains (``civil war`` → ``war``), so that related documents share a node; two different two-word terms
sharing one word (J = 1/3: ``foreign policy``, ``energy policy``) stay apart. Token overlap was chosen over
sentence embeddings (e.g. all-MiniLM-L6-v2) because it needs no model at generation time, is exact and
reproducible, and for 1-4-word terms the variation that breaks exact matching is morphological; embeddings
also rate topically related terms (``inflation`` / ``unemployment``) as similar, which would join
concepts that are not the same.
"""

from __future__ import annotations

import functools
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


MAX_WORD_CHARS = 20
"""Longest word of a concept in the extraction schema (characters)."""


def extraction_schema(max_concepts: int, max_concept_chars: int, max_words: int = 4) -> dict:
    """JSON schema of the extraction answer: up to ``max_concepts`` topics and concepts, each a term of 1 to
    ``max_words`` words separated by single spaces, every word of letters, digits, ``'`` and ``-`` starting with
    a letter or digit and at most ``min(MAX_WORD_CHARS, max_concept_chars)`` characters long. A pattern (no
    ``maxLength``) bounds the strings: vLLM's xgrammar backend rejects pattern + length bounds together; the
    whole term's ``max_concept_chars`` is enforced by :func:`parse_concepts`."""
    w = max(0, min(MAX_WORD_CHARS, max_concept_chars) - 1)
    word = rf"[A-Za-z0-9][A-Za-z0-9'\-]{{0,{w}}}"
    item = {"type": "string", "pattern": rf"^{word}( {word}){{0,{max(0, max_words - 1)}}}$"}
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
    while words and words[0] in STOPWORDS:
        words.pop(0)
    while words and words[-1] in STOPWORDS:
        words.pop()
    if not words:
        return ""
    words[-1] = _fold_plural(words[-1])
    out = " ".join(words)
    if len(out) < 2 or out in STOPWORDS:
        return ""
    return out


def normalize_concepts(items, max_concepts: int | None = None, max_words: int | None = None,
                       max_chars: int | None = None, dropped: list | None = None) -> list[str]:
    """Normalise, drop empties, terms longer than ``max_words`` words or ``max_chars`` characters (appended to
    ``dropped`` when given) and duplicates (first occurrence wins); keep at most ``max_concepts``."""
    seen: dict[str, None] = {}
    for it in items:
        if not isinstance(it, str):
            continue
        c = normalize_concept(it)
        if c and ((max_words is not None and len(c.split()) > max_words)
                  or (max_chars is not None and len(c) > max_chars)):
            if dropped is not None:
                dropped.append(c)
            continue
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
    too_long: list[str] = field(default_factory=list)
    """Terms dropped for more than ``max_words`` words or ``max_chars`` characters."""


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


def parse_concepts(text: str, max_concepts: int = 10, max_words: int | None = None,
                   max_chars: int | None = None) -> ParsedConcepts:
    """Read topics and concepts from one extraction output; never raises.

    Returns ``status="empty"`` for blank output, ``"malformed"`` when no concept could be read, else
    ``"ok"`` with normalised, deduplicated concepts (at most ``max_concepts``; topics at most 3). Topics
    are also counted as concepts of the document (they are its highest-level concepts). Terms of more
    than ``max_words`` words or ``max_chars`` characters are dropped and listed in ``too_long``.
    """
    if not isinstance(text, str) or not text.strip():
        return ParsedConcepts(EMPTY, "none")
    long: list[str] = []
    norm = lambda items, n: normalize_concepts(items, n, max_words, max_chars, long)  # noqa: E731
    obj = _first_json_object(text)
    if obj is not None and isinstance(obj.get("concepts", obj.get("topics")), list):
        topics = norm(obj.get("topics") or [], 3) if isinstance(obj.get("topics"), list) else []
        concepts = norm(list(obj.get("concepts") or []) if isinstance(obj.get("concepts"), list) else [],
                        max_concepts)
        allc = normalize_concepts(topics + concepts, max_concepts)
        return ParsedConcepts(OK if allc else MALFORMED, "json", allc, topics, sorted(set(long)))
    topics = norm(_partial_list(text, "topics"), 3)
    concepts = norm(_partial_list(text, "concepts"), max_concepts)
    if topics or concepts:
        return ParsedConcepts(OK, "partial_json", normalize_concepts(topics + concepts, max_concepts), topics,
                              sorted(set(long)))
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
    concepts = norm(items, max_concepts)
    if concepts:
        return ParsedConcepts(OK, "lines", concepts, [], sorted(set(long)))
    return ParsedConcepts(MALFORMED, "none", too_long=sorted(set(long)))


# ------------------------------------------------------------------------------------------ merging
DEFAULT_MERGE_THRESHOLD = 0.5
"""Jaccard similarity of content-word stem sets at or above which two concepts merge (module docstring)."""


def content_stems(concept: str) -> frozenset[str]:
    """The Porter stems (nltk) of the words of ``concept`` that are not stop words (all words if every one is)."""
    ws = concept.split()
    content = [w for w in ws if w not in STOPWORDS] or ws
    return frozenset(_porter().stem(w) for w in content)


@functools.lru_cache(maxsize=1)
def _porter():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


def merge_concepts(document_frequency: dict[str, int], threshold: float = DEFAULT_MERGE_THRESHOLD) -> dict[str, str]:
    """Map every concept to its representative (itself when not merged); see the module docstring.

    Args:
        document_frequency: normalised concept -> documents that list it.
        threshold: Jaccard similarity in (0, 1] of the content-word stem sets at or above which a concept
            joins a representative; 1.0 merges only concepts with the same stem set.

    Returns:
        ``{concept: representative}`` for every concept; deterministic (no dependence on dict order).

    Candidates are found through an inverted index stem -> representatives, so the cost is about the number
    of concepts times the representatives sharing a stem with each, not all pairs.

    Example:
        >>> merge_concepts({"tax cut": 3, "cutting taxes": 1, "civil war": 2, "war": 5, "foreign policy": 2,
        ...                 "energy policy": 1})["cutting taxes"]
        'tax cut'
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    order = sorted(document_frequency, key=lambda c: (-document_frequency[c], len(c.split()), len(c), c))
    leaders: list[tuple[str, frozenset]] = []
    by_stem: dict[str, list[int]] = {}
    out: dict[str, str] = {}
    for c in order:
        st = content_stems(c)
        best, best_j = None, 0.0
        for i in sorted({i for s in st for i in by_stem.get(s, ())}):
            lst = leaders[i][1]
            j = len(st & lst) / len(st | lst)
            if j >= threshold and j > best_j:
                best, best_j = i, j
        if best is None:
            for s in st:
                by_stem.setdefault(s, []).append(len(leaders))
            leaders.append((c, st))
            out[c] = c
        else:
            out[c] = leaders[best][0]
    return out
