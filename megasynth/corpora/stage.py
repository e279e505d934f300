"""The ``corpora`` stage: natural corpora and held-out eval sets → ``corpora/<name>.jsonl``.

Each output line is ``{"id", "text", "source"}`` (``source`` = the corpus name). Outputs are written
atomically and marked with ``corpora/<name>.jsonl.done`` holding the stats::

    {"completed_at", "section": "train"|"eval", "loader", "config": {...CorpusConfig...},
     "documents", "characters", "dropped_short", "dropped_overlap", "seconds",
     "decontaminated_against": {train name: [documents, characters, completed_at]}  # eval only}

A corpus is skipped on rerun when its file and marker exist and the marker's ``config`` (and, for an
eval set, ``decontaminated_against``) match the current study, so editing a corpus entry or
rebuilding a training corpus rebuilds what depends on it.

Held-out sets are strictly out of training: an eval document is dropped when its normalised text, or
any of its paragraphs longer than 100 characters, equals (case-folded, by BLAKE2b hash) a document or
paragraph of a training corpus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from typing import Callable, Iterator, Optional

from megasynth.config import CorpusConfig, StudyConfig
from megasynth.corpora.loaders import LOADERS, LoaderFn
from megasynth.corpora.text import normalize_text, overlap_keys
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, Progress, atomic_path, is_done, mark_done, marker_path, read_jsonl

logger = logging.getLogger("megasynth.corpora")


def get_loader(c: CorpusConfig, where: str) -> LoaderFn:
    """The registered loader of ``c``.

    Raises:
        MegasynthError: ``<where>.loader: unknown loader 'x' (known: ...)``.
    """
    fn = LOADERS.get(c.loader)
    if fn is None:
        raise MegasynthError(f"{where}.loader: unknown loader {c.loader!r} (known: {', '.join(sorted(LOADERS))})")
    return fn


def load_corpus(c: CorpusConfig, where: Optional[str] = None,
                exclude: Optional[Callable[[str], bool]] = None,
                counters: Optional[dict] = None) -> Iterator[dict]:
    """Stream the normalised documents of corpus ``c`` as ``{"id", "text", "source"}`` records.

    Applies, in order: :func:`~megasynth.corpora.text.normalize_text`; drop texts shorter than
    ``c.min_chars`` characters; drop texts for which ``exclude(text)`` is true; stop after
    ``c.max_documents`` documents (the first N in the loader's deterministic order).

    Args:
        c: the corpus entry.
        where: dotted config prefix for error messages (default ``c.name``).
        exclude: optional predicate on normalised text (used for train/eval decontamination).
        counters: optional dict; ``dropped_short`` and ``dropped_overlap`` are incremented in it.

    Raises:
        MegasynthError: unknown loader, missing package or file, malformed input (``file:line``),
            or a duplicate document id.
    """
    where = where or c.name
    fn = get_loader(c, where)  # raised here, not at the first next()
    counters = counters if counters is not None else {}
    counters.setdefault("dropped_short", 0)
    counters.setdefault("dropped_overlap", 0)
    return _stream(c, where, fn, exclude, counters)


def _stream(c: CorpusConfig, where: str, fn: LoaderFn, exclude: Optional[Callable[[str], bool]],
            counters: dict) -> Iterator[dict]:
    if c.max_documents is not None and c.max_documents <= 0:
        return
    with contextlib.closing(fn(c, where)) as raws:  # close the loader's files when stopping early
        yield from _filter(c, where, raws, exclude, counters)


def _filter(c: CorpusConfig, where: str, raws: Iterator[dict], exclude: Optional[Callable[[str], bool]],
            counters: dict) -> Iterator[dict]:
    seen: set[str] = set()
    kept = 0
    for raw in raws:
        text = normalize_text(raw["text"])
        if len(text) < c.min_chars:
            counters["dropped_short"] += 1
            continue
        if exclude is not None and exclude(text):
            counters["dropped_overlap"] += 1
            continue
        rid = str(raw["id"])
        if rid in seen:
            raise MegasynthError(f"{where}: loader {c.loader!r} yielded duplicate document id {rid!r}")
        seen.add(rid)
        yield {"id": rid, "text": text, "source": c.name}
        kept += 1
        if c.max_documents is not None and kept >= c.max_documents:
            return


def run_corpora(cfg: StudyConfig, layout: StudyLayout) -> None:
    """Write ``layout.corpus(name)`` for every ``cfg.corpora.train`` then ``cfg.corpora.eval`` entry.

    Training corpora are written first; eval sets are then decontaminated against all training
    corpora (see the module docstring). Up-to-date outputs are skipped.

    Raises:
        MegasynthError: naming ``corpora.<section>[i].<field>`` or ``file:line`` for bad input.
    """
    train = [(f"corpora.train[{i}]", c) for i, c in enumerate(cfg.corpora.train)]
    evals = [(f"corpora.eval[{i}]", c) for i, c in enumerate(cfg.corpora.eval)]
    for where, c in train + evals:  # fail fast, before any long load
        get_loader(c, where)
        if c.loader == "jsonl" and not c.path:
            raise MegasynthError(f"{where}.path: required for loader 'jsonl'")

    for where, c in train:
        path = layout.corpus(c.name)
        if _up_to_date(path, _expected(c)):
            logger.info("corpus %s: up to date (%s), skipping", c.name, path)
            continue
        _write_corpus(c, where, path, "train")

    if not evals:
        return
    fingerprint = _fingerprints(cfg, layout)
    keys: Optional[set[bytes]] = None
    for where, c in evals:
        path = layout.corpus(c.name)
        expected = _expected(c, fingerprint)
        if _up_to_date(path, expected):
            logger.info("corpus %s: up to date (%s), skipping", c.name, path)
            continue
        if keys is None:
            keys = _training_keys(layout, [c for _, c in train])
        train_keys = keys

        def overlaps(text: str) -> bool:
            return any(k in train_keys for k in overlap_keys(text))

        _write_corpus(c, where, path, "eval", exclude=overlaps, extra={"decontaminated_against": fingerprint})


def corpora_done(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether every corpus and eval set of ``cfg`` is written and up to date (the stage's completion)."""
    if not all(_up_to_date(layout.corpus(c.name), _expected(c)) for c in cfg.corpora.train):
        return False
    fingerprint = _fingerprints(cfg, layout)
    return all(_up_to_date(layout.corpus(c.name), _expected(c, fingerprint)) for c in cfg.corpora.eval)


def _expected(c: CorpusConfig, fingerprint: Optional[dict] = None) -> dict:
    """What the marker of an up-to-date corpus holds: its config (and, for an eval set, the training corpora
    it was decontaminated against)."""
    out: dict = {"config": dataclasses.asdict(c)}
    if fingerprint is not None:
        out["decontaminated_against"] = fingerprint
    return out


def _fingerprints(cfg: StudyConfig, layout: StudyLayout) -> dict:
    return {c.name: _fingerprint(layout.corpus(c.name)) for c in cfg.corpora.train}


# --------------------------------------------------------------------------------------------------
def _write_corpus(c: CorpusConfig, where: str, path, section: str,
                  exclude: Optional[Callable[[str], bool]] = None, extra: Optional[dict] = None) -> dict:
    start = time.monotonic()
    logger.info("corpus %s: loading with loader %r (%s)", c.name, c.loader, section)
    counters: dict = {}
    n_docs = n_chars = 0
    progress = Progress(f"corpus {c.name}", total=c.max_documents, unit="docs")
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed earlier run
        stale.unlink(missing_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in load_corpus(c, where, exclude=exclude, counters=counters):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n_docs += 1
            n_chars += len(rec["text"])
            progress.update(1)
    progress.close()
    if n_docs == 0:
        logger.warning("corpus %s: no documents left (min_chars=%d, %d dropped as short, %d as overlapping)",
                       c.name, c.min_chars, counters["dropped_short"], counters["dropped_overlap"])
    stats = {"section": section, "loader": c.loader, "config": dataclasses.asdict(c),
             "documents": n_docs, "characters": n_chars, **counters,
             "seconds": round(time.monotonic() - start, 3), **(extra or {})}
    mark_done(path, stats)
    logger.info("corpus %s: %d documents, %d characters (%d short, %d overlapping dropped) in %.1fs → %s",
                c.name, n_docs, n_chars, counters["dropped_short"], counters["dropped_overlap"],
                stats["seconds"], path)
    return stats


def _read_marker(path) -> Optional[dict]:
    try:
        return json.loads(marker_path(path).read_text())
    except (OSError, ValueError):
        return None


def _up_to_date(path, expected: dict) -> bool:
    """True if ``path`` and its marker exist and the marker holds every ``expected`` key/value."""
    if not (path.is_file() and is_done(path)):
        return False
    marker = _read_marker(path)
    if marker is None:
        return False
    # JSON round trip so tuples/lists and int/float compare as they were stored.
    return all(marker.get(k) == json.loads(json.dumps(v)) for k, v in expected.items())


def _fingerprint(path) -> list:
    marker = _read_marker(path) or {}
    return [marker.get("documents"), marker.get("characters"), marker.get("completed_at")]


def _training_keys(layout: StudyLayout, train: list[CorpusConfig]) -> set[bytes]:
    """Overlap keys (whole texts and long paragraphs) of every written training corpus."""
    keys: set[bytes] = set()
    for c in train:
        for rec in read_jsonl(layout.corpus(c.name), required=("text",)):
            keys.update(overlap_keys(rec["text"]))
    logger.info("corpora: %d overlap keys from %d training corpora", len(keys), len(train))
    return keys
