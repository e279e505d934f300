"""Text normalisation, paragraph hashing for train/eval overlap, and wiki markup → prose.

All corpora go through :func:`normalize_text` before they are written, so downstream stages can rely
on: Unicode NFC; ``\\n`` line endings; no control characters; within a line, runs of whitespace
collapsed to one space and no leading/trailing space; at most one blank line between paragraphs; no
leading/trailing blank lines. A *paragraph* is one non-empty line of normalised text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Iterator

# Any Unicode whitespace except the newline (str.split semantics), plus zero-width/BOM characters.
_WS_RUN = re.compile(r"[^\S\n]+")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_LINE_BREAKS = re.compile(r"\r\n|\r|[\u2028\u2029\x0b\x0c\x85]")
_BLANK_RUNS = re.compile(r"\n{3,}")

PARAGRAPH_MIN_CHARS = 100
"""Paragraphs (lines) longer than this many characters are hashed for train/eval overlap checks."""


def normalize_text(text: str) -> str:
    """Normalise one document (see the module docstring for the guarantees); pure and idempotent."""
    text = unicodedata.normalize("NFC", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _ZERO_WIDTH.sub("", text)
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    lines = [_WS_RUN.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def paragraphs(text: str, min_chars: int = 0) -> Iterator[str]:
    """Yield the paragraphs (non-empty lines) of normalised ``text`` longer than ``min_chars``."""
    for line in text.split("\n"):
        if len(line) > min_chars:
            yield line


def text_key(text: str) -> bytes:
    """16-byte BLAKE2b digest of case-folded ``text``: the identity used for overlap checks."""
    return hashlib.blake2b(text.casefold().encode("utf-8"), digest_size=16).digest()


def overlap_keys(text: str) -> Iterable[bytes]:
    """Keys of a normalised document: the whole text plus every paragraph > ``PARAGRAPH_MIN_CHARS``."""
    yield text_key(text)
    for p in paragraphs(text, PARAGRAPH_MIN_CHARS):
        yield text_key(p)


# --------------------------------------------------------------------------------------------------
# MediaWiki markup → readable prose (after gensim's filter_wiki has removed templates, refs, tags)
# --------------------------------------------------------------------------------------------------
# Sections after which an article holds only lists of sources and links.
_TAIL_SECTIONS = {
    "see also", "references", "notes", "footnotes", "citations", "sources", "bibliography",
    "further reading", "external links", "works cited", "notes and references", "reference",
    "explanatory notes", "general references", "primary sources", "secondary sources", "selected works",
    "works", "publications", "discography", "filmography", "gallery",
}
_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1\s*$")
_BOLD_ITALIC = re.compile(r"'{2,5}")
_EMPTY_PARENS = re.compile(r"\(\s*(?:[,;:]\s*)*\)|\[\s*\]")
_PAREN_LEAD_PUNCT = re.compile(r"\(\s*(?:[,;:]\s*)+")
_PAREN_TRAIL_PUNCT = re.compile(r"(?:\s*[,;:])+\s*\)")
_GALLERY = re.compile(r"<gallery\b.*?</gallery\s*>", re.I | re.S)
_IMAGE_LINE = re.compile(r"^[^|]*\.(?:jpe?g|png|svg|gif|tiff?|webp)\s*\|", re.I)
_FILE_LINK = re.compile(r"\[\[\s*(?:file|image)\s*:", re.I)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)])")
_SPACE_AFTER_OPEN = re.compile(r"\(\s+")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_LEFTOVER_MARKUP = re.compile(r"^(\{\||\|\}|\|-|!|\||__[A-Z]+__)")


def wiki_to_prose(markup: str) -> str:
    """Turn one article's MediaWiki markup into plain prose paragraphs separated by a blank line.

    Uses :func:`gensim.corpora.wikicorpus.filter_wiki` (templates, references, tags, links, tables),
    after removing image links, galleries and their captions; then removes bold/italic quotes and leftover
    table lines, keeps section headings as their own
    paragraph, keeps list items as text without their markers, and drops everything from the first
    reference-like section (``See also``, ``References``, ``External links``, ...) on.

    Raises:
        MegasynthError: if gensim is not installed (names the pip package).
    """
    from megasynth.corpora.loaders import require

    wikicorpus = require("gensim.corpora.wikicorpus", "gensim")
    text = wikicorpus.filter_wiki(_remove_file_links(_GALLERY.sub("", markup)))
    out: list[tuple[bool, str]] = []  # (is_heading, text)
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        m = _HEADING.match(line)
        if m:
            title = _BOLD_ITALIC.sub("", m.group(2)).strip()
            if title.casefold() in _TAIL_SECTIONS:
                break
            if title:
                out.append((True, title))
            continue
        if _LEFTOVER_MARKUP.match(line) or _IMAGE_LINE.match(line):
            continue
        line = _LIST_MARKER.sub("", line)
        line = _BOLD_ITALIC.sub("", line)
        line = _EMPTY_PARENS.sub("", line)
        line = _PAREN_LEAD_PUNCT.sub("(", line)
        line = _PAREN_TRAIL_PUNCT.sub(")", line)
        line = _SPACE_AFTER_OPEN.sub("(", line)
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
        line = " ".join(line.split())
        # Keep lines with words in them; a caption fragment or a bare list marker is not prose.
        if sum(ch.isalpha() for ch in line) >= 3:
            out.append((False, line))
    # Drop headings left without a body (a heading followed by a heading, or at the end).
    kept = [t for i, (h, t) in enumerate(out) if not h or (i + 1 < len(out) and not out[i + 1][0])]
    return "\n\n".join(kept)


def _remove_file_links(markup: str) -> str:
    """Remove ``[[File:...]]``/``[[Image:...]]`` links with their captions (which nest ``[[...]]``)."""
    out, pos = [], 0
    for m in _FILE_LINK.finditer(markup):
        if m.start() < pos:  # inside a link already removed
            continue
        depth, i = 0, m.start()
        while i < len(markup) - 1:
            pair = markup[i:i + 2]
            if pair == "[[":
                depth, i = depth + 1, i + 2
            elif pair == "]]":
                depth, i = depth - 1, i + 2
                if depth == 0:
                    break
            else:
                i += 1
        out.append(markup[pos:m.start()])
        pos = i if depth == 0 else len(markup)
    out.append(markup[pos:])
    return "".join(out)
