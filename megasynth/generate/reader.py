"""Reader: seeded sample of natural-document excerpts that seed generation.

Documents are split into excerpts of at most ``max_input_tokens`` generator tokens, on paragraph
boundaries where possible, then sentence boundaries, then (for a single over-long sentence) token
boundaries. One excerpt per sampled document; when ``num_documents`` exceeds the corpus, documents are
reused with excerpts not yet taken. The sample depends only on the corpus, the tokenizer, the seed and
the sizes, so every style (and every rerun) gets the same excerpts in the same order.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from megasynth.utils import MegasynthError, read_jsonl

logger = logging.getLogger("megasynth.generate")

_PARA = re.compile(r"\n\s*\n")
_SENT = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+")


@dataclass(frozen=True)
class Excerpt:
    """A natural-text excerpt: document ``source_id``, excerpt index ``chunk`` within it, ``text``."""

    source_id: str
    chunk: int
    text: str


def split_excerpts(text: str, tokenizer, max_tokens: int) -> list[str]:
    """Split ``text`` into excerpts of at most ``max_tokens`` tokens of ``tokenizer`` (no specials).

    Paragraphs (blank-line separated) are packed greedily; a paragraph longer than ``max_tokens`` is
    split into sentences, and a sentence longer than that into token windows.
    """
    if max_tokens <= 0:
        raise MegasynthError("generation.max_input_tokens: must be > 0")
    count: Callable[[str], int] = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])
    units: list[tuple[str, str]] = []  # (piece, separator before it)
    for para in _PARA.split(text.strip()):
        para = " ".join(para.split()) if "\n" in para.strip() else para.strip()
        if not para:
            continue
        if count(para) <= max_tokens:
            units.append((para, "\n\n"))
            continue
        first = True
        for sent in _SENT.split(para):
            sent = sent.strip()
            if not sent:
                continue
            pieces = [sent] if count(sent) <= max_tokens else _token_windows(sent, tokenizer, max_tokens)
            for p in pieces:
                units.append((p, "\n\n" if first else " "))
                first = False
    excerpts: list[str] = []
    cur = ""
    for piece, sep in units:
        cand = f"{cur}{sep}{piece}" if cur else piece
        if cur and count(cand) > max_tokens:
            excerpts.append(cur)
            cur = piece
        else:
            cur = cand
    if cur:
        excerpts.append(cur)
    return excerpts


def _token_windows(text: str, tokenizer, max_tokens: int) -> list[str]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = []
    for i in range(0, len(ids), max_tokens):
        piece = tokenizer.decode(ids[i:i + max_tokens]).strip()
        # decode→encode can grow by a token at the edges; trim until it fits
        while piece and len(tokenizer(piece, add_special_tokens=False)["input_ids"]) > max_tokens:
            piece = piece[: int(len(piece) * 0.95)]
        if piece:
            out.append(piece)
    return out


def sample_excerpts(corpus: str | Path, tokenizer, *, num_documents: int, max_input_tokens: int,
                    seed: int) -> list[Excerpt]:
    """Sample ``num_documents`` excerpts (one per sampled document, seeded) from a corpus JSONL.

    Args:
        corpus: ``corpora/<name>.jsonl`` with keys ``id``, ``text``.
        tokenizer: the generator's tokenizer (excerpt lengths are in its tokens).
        num_documents: excerpts wanted (documents, reused only if the corpus has fewer).
        max_input_tokens: excerpt length limit in generator tokens.
        seed: sampling seed (``cfg.seed``).

    Returns:
        Excerpts in sample order; fewer than ``num_documents`` only if the corpus has fewer excerpts.

    Raises:
        MegasynthError: missing/malformed corpus (``file:line``), or a corpus without any text.
    """
    docs = [(str(r["id"]), r["text"]) for r in read_jsonl(corpus, required=("id", "text"))
            if isinstance(r["text"], str) and r["text"].strip()]
    if not docs:
        raise MegasynthError(f"{corpus}: no documents with text to seed generation")
    rng = random.Random(seed)
    order = rng.sample(range(len(docs)), len(docs))
    cache: dict[int, list[str]] = {}
    used: set[tuple[int, int]] = set()
    out: list[Excerpt] = []
    exhausted: set[int] = set()
    i = 0
    while len(out) < num_documents and len(exhausted) < len(docs):
        d = order[i % len(docs)]
        i += 1
        if d in exhausted:
            continue
        if d not in cache:
            cache[d] = split_excerpts(docs[d][1], tokenizer, max_input_tokens)
        free = [c for c in range(len(cache[d])) if (d, c) not in used]
        if not free:
            exhausted.add(d)
            continue
        c = rng.choice(free)
        used.add((d, c))
        out.append(Excerpt(docs[d][0], c, cache[d][c]))
    if len(out) < num_documents:
        logger.warning("%s: only %d excerpts available, fewer than generation.num_documents=%d",
                       corpus, len(out), num_documents)
    return out
