"""JSONL → Megatron indexed datasets (``.bin``/``.idx``), and the ``preprocess`` stage.

One JSONL record is one document: its text is tokenized (no special tokens), ``eod`` is appended,
and the ids are written as one document of one sequence with megatron-core's
``IndexedDatasetBuilder`` — the layout Megatron-LM's ``tools/preprocess_data.py`` writes without
sentence splitting. Token dtype follows megatron-core ``DType.optimal_dtype(vocab_size)``: uint16
when the vocabulary has fewer than 65,500 ids, else int32. Records whose text yields no tokens are
skipped (counted as ``empty_documents``). Both files are written under temporary names and renamed
when complete, ``.bin`` first and ``.idx`` last, so a prefix whose ``.idx`` exists is whole.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from megasynth.data.tokenizer import MegasynthTokenizer, load_tokenizer, train_bpe_tokenizer
from megasynth.utils import MegasynthError, Progress, is_done, mark_done, read_json, read_jsonl, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import StudyConfig
    from megasynth.study.layout import StudyLayout

logger = logging.getLogger("megasynth.data")

BATCH_DOCUMENTS = 1000
"""Documents tokenized per ``tokenize_batch`` call."""


def _count_lines(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                n += block.count(b"\n")
    return n


def _texts(paths: list[Path], json_key: str) -> Iterator[str]:
    """Yield ``record[json_key]`` of every record; MegasynthError ``file:line`` for bad records."""
    for path in paths:
        lineno = 0
        for rec in read_jsonl(path):
            # read_jsonl skips blank lines; recover the line number for error messages cheaply.
            lineno += 1
            if json_key not in rec:
                raise MegasynthError(f"{path}:{_line_of(path, lineno)}: missing key {json_key!r}")
            text = rec[json_key]
            if not isinstance(text, str):
                raise MegasynthError(f"{path}:{_line_of(path, lineno)}: {json_key!r} must be a string, "
                                     f"got {type(text).__name__}")
            yield text


def _line_of(path: Path, record_no: int) -> int:
    """1-based line number of the ``record_no``-th non-blank line of ``path`` (error path only)."""
    seen = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == record_no:
                    return lineno
    return record_no


def _batches(it: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for x in it:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def preprocess_jsonl(paths: Iterable[str | os.PathLike], output_prefix: str | os.PathLike,
                     tokenizer: MegasynthTokenizer, json_key: str = "text", append_eod: bool = True,
                     batch_size: int = BATCH_DOCUMENTS, log_interval: int = 0, name: str | None = None) -> dict:
    """Tokenize the JSONL files ``paths`` (in order) into ``output_prefix.{bin,idx}``.

    Args:
        paths: JSONL files, one document per record (blank lines ignored).
        output_prefix: Megatron data prefix (path without ``.bin``/``.idx``); parent dirs are created.
        tokenizer: encodes ``record[json_key]``; its ``eod`` ends every document if ``append_eod``.
        batch_size: documents per ``tokenizer.tokenize_batch`` call.
        log_interval: also log progress every this many documents (0: every 10 s only).
        name: label for log lines (default: the prefix's file name).

    Returns:
        Stats: ``documents`` (written), ``empty_documents`` (skipped: no tokens), ``tokens`` (written
        ids incl. EOD), ``bytes`` (UTF-8 bytes of the input texts), ``tokenizer``, ``vocab_size``,
        ``dtype``, ``append_eod``, ``inputs``, ``wall_s``, ``tokens_per_s`` (written tokens per wall second,
        reading + tokenizing + writing).

    Raises:
        MegasynthError: missing input file; ``file:line`` for malformed JSON, a record that is not an
            object, lacks ``json_key``, or whose ``json_key`` is not a string.
    """
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise MegasynthError(f"{p}: input file not found")
    output_prefix = Path(output_prefix)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    label = name or output_prefix.name
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    eod = tokenizer.eod
    tmp_prefix = output_prefix.parent / f".{output_prefix.name}.tmp{os.getpid()}"
    tmp_bin, tmp_idx = Path(f"{tmp_prefix}.bin"), Path(f"{tmp_prefix}.idx")

    total_docs = _count_lines(paths)
    start = time.monotonic()
    progress = Progress(f"tokenize {label}", total=total_docs, unit="docs")
    docs = empty = tokens = nbytes = seen = 0
    next_log = log_interval
    if log_interval:
        batch_size = max(1, min(batch_size, log_interval))
    builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
    try:
        for batch in _batches(_texts(paths, json_key), batch_size):
            for text, ids in zip(batch, tokenizer.tokenize_batch(batch)):
                nbytes += len(text.encode("utf-8"))
                if not ids:
                    empty += 1
                    continue
                if append_eod:
                    ids.append(eod)
                builder.add_document(np.asarray(ids, dtype=dtype), [len(ids)])
                docs += 1
                tokens += len(ids)
            seen += len(batch)
            progress.update(len(batch))
            if log_interval and seen >= next_log:
                el = time.monotonic() - start
                logger.info("tokenize %s: %d/%d docs, %d tokens (%.0f tokens/s)", label, seen, total_docs,
                            tokens, tokens / max(el, 1e-9))
                next_log = (seen // log_interval + 1) * log_interval
        builder.finalize(str(tmp_idx))
        os.replace(tmp_bin, f"{output_prefix}.bin")
        os.replace(tmp_idx, f"{output_prefix}.idx")
    except BaseException:
        builder.data_file.close()
        for p in (tmp_bin, tmp_idx):
            p.unlink(missing_ok=True)
        raise
    wall = max(time.monotonic() - start, 1e-9)
    progress.close()
    stats = {"documents": docs, "empty_documents": empty, "tokens": tokens, "bytes": nbytes,
             "tokenizer": tokenizer.name, "tokenizer_sha": tokenizer.unique_identifiers.get("sha"),
             "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name, "append_eod": append_eod,
             "inputs": [str(p) for p in paths], "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}
    logger.info("tokenized %s: %d docs (%d empty), %d tokens, %.0f tokens/s -> %s", label, docs, empty, tokens,
                stats["tokens_per_s"], output_prefix)
    if docs == 0:
        logger.warning("tokenized %s: no documents with tokens", label)
    return stats


# --------------------------------------------------------------------------------------------------
# the preprocess stage
# --------------------------------------------------------------------------------------------------
def ensure_tokenizer(cfg: "StudyConfig", layout: "StudyLayout") -> MegasynthTokenizer:
    """Load the study's tokenizer, training the ``bpe`` one first if it is not trained yet.

    The BPE is trained on the natural training corpora only (``corpora.train``; at most
    ``tokenizer.train_max_documents`` documents in all), never on eval sets or synthetic data.
    """
    tc = cfg.tokenizer
    if tc.type == "bpe" and not is_done(layout.tokenizer_dir / "tokenizer.json"):
        paths = [layout.corpus(n) for n in cfg.natural_sources]
        for p in paths:
            if not p.is_file():
                raise MegasynthError(f"{p}: natural corpus not found (run `megasynth corpora` first)")
        limit = tc.train_max_documents

        def texts() -> Iterator[str]:
            n = 0
            for p in paths:
                for rec in read_jsonl(p, required=("text",)):
                    if limit is not None and n >= limit:
                        return
                    n += 1
                    yield rec["text"]

        t0 = time.monotonic()
        logger.info("training byte-level BPE (vocab_size %d) on %s", tc.vocab_size, ", ".join(cfg.natural_sources))
        tok = train_bpe_tokenizer(texts(), tc.vocab_size, layout.tokenizer_dir)
        logger.info("trained %s in %.1fs", tok.name, time.monotonic() - t0)
        return tok
    return load_tokenizer(tc, layout)


def _sources(cfg: "StudyConfig", layout: "StudyLayout") -> list[tuple[str, str, list[Path]]]:
    """(name, kind, input files) for every source: natural corpora, synthetic styles, eval sets."""
    out: list[tuple[str, str, list[Path]]] = []
    for name in cfg.natural_sources:
        out.append((name, "natural", [layout.corpus(name)]))
    for style in cfg.synthetic_sources:
        d = layout.synthetic_dir(style)
        shards = sorted(d.glob("shard-*.jsonl"))
        if not (d / "manifest.json").exists():
            raise MegasynthError(f"{d / 'manifest.json'}: synthetic style {style!r} not generated yet "
                                 "(run `megasynth generate` first)")
        out.append((style, "synthetic", shards))
    for name in cfg.eval_sets:
        out.append((name, "eval", [layout.corpus(name)]))
    return out


def run_preprocess(cfg: "StudyConfig", layout: "StudyLayout") -> None:
    """The ``preprocess`` stage: tokenizer, then ``tokenized/<name>_text_document.{bin,idx}`` per source.

    Sources: natural corpora (``corpora/<name>.jsonl``), synthetic styles (all
    ``synthetic/<style>/shard-*.jsonl``, sorted; none if ``generation.enabled`` is false), eval sets.
    Writes ``tokenized/<name>.stats.json`` (see :func:`preprocess_jsonl`, plus ``source``, ``kind``)
    and a completion marker on the prefix; complete sources are skipped on rerun.

    Raises:
        MegasynthError: a missing input, malformed JSONL (``file:line``), or a complete source that
            was tokenized with a different tokenizer than the current one.
    """
    tokenizer = ensure_tokenizer(cfg, layout)
    logger.info("tokenizer %s: vocab_size %d, eod %d", tokenizer.name, tokenizer.vocab_size, tokenizer.eod)
    sha = tokenizer.unique_identifiers.get("sha")
    for name, kind, paths in _sources(cfg, layout):
        prefix = layout.tokenized_prefix(name)
        stats_path = layout.tokenized_stats(name)
        if is_done(prefix) and stats_path.exists():
            old = read_json(stats_path)
            if old.get("tokenizer") != tokenizer.name or old.get("tokenizer_sha") != sha:
                raise MegasynthError(
                    f"{stats_path}: tokenized with {old.get('tokenizer')} but tokenizer is now {tokenizer.name}; "
                    f"delete {prefix.parent} (or use a new study_dir) to re-tokenize")
            logger.info("tokenized %s: complete, skipping", name)
            continue
        for p in paths:
            if not p.is_file():
                raise MegasynthError(f"{p}: input of source {name!r} not found (run the earlier stages first)")
        stats = preprocess_jsonl(paths, prefix, tokenizer, json_key="text", append_eod=True, name=name)
        write_json(stats_path, {"source": name, "kind": kind, **stats})
        mark_done(prefix, {"tokens": stats["tokens"], "documents": stats["documents"]})
