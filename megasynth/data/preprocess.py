"""JSONL → Megatron indexed datasets (``.bin``/``.idx``), and the ``preprocess`` stage.

One JSONL record is one document: its text is tokenized (no special tokens), ``eod`` is appended,
and the ids are written as one document of one sequence — the bytes megatron-core's
``IndexedDatasetBuilder`` writes when driven as Megatron-LM's ``tools/preprocess_data.py`` drives it
without sentence splitting (see :mod:`megasynth.data.engine`; the Megatron-flag tool is
:mod:`megasynth.data.preprocess_tool`). Token dtype follows megatron-core ``DType.optimal_dtype(vocab_size)``: uint16
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

from megasynth.data.tokenizer import MegasynthTokenizer, load_tokenizer, train_bpe_tokenizer
from megasynth.utils import MegasynthError, is_done, mark_done, read_json, read_jsonl, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import StudyConfig
    from megasynth.layout import StudyLayout

logger = logging.getLogger("megasynth.data")

BATCH_DOCUMENTS = 1000
"""Documents tokenized per ``tokenize_batch`` call."""


def preprocess_jsonl(paths: Iterable[str | os.PathLike], output_prefix: str | os.PathLike,
                     tokenizer: MegasynthTokenizer, json_key: str = "text", append_eod: bool = True,
                     batch_size: int = BATCH_DOCUMENTS, log_interval: int = 0, name: str | None = None) -> dict:
    """Tokenize the JSONL files ``paths`` (in order) into ``output_prefix.{bin,idx}``.

    Runs :func:`megasynth.data.engine.run_engine` in this process (the tokenizer's own threads do the
    parallel work), with ``empty="skip"``: records whose text yields no ids are not written.

    Args:
        paths: JSONL files (plain, ``.gz``, ``.zst``), one document per record (blank lines ignored).
        output_prefix: Megatron data prefix (path without ``.bin``/``.idx``); parent dirs are created.
        tokenizer: encodes ``record[json_key]``; its ``eod`` ends every document if ``append_eod``.
        batch_size: unused (work items are ~4 MB blocks of lines); kept for compatibility.
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
    from megasynth.data.encode import EncodeSpec
    from megasynth.data.engine import run_engine
    from megasynth.data.indexed import optimal_dtype

    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise MegasynthError(f"{p}: input file not found")
    output_prefix = Path(output_prefix)
    label = name or output_prefix.name
    dtype = optimal_dtype(tokenizer.vocab_size)
    spec = EncodeSpec(tokenize_batch=tokenizer.tokenize_batch, eod=tokenizer.eod, dtype=dtype, keys=(json_key,),
                      append_eod=append_eod, empty="skip")
    st = run_engine(paths, {json_key: output_prefix}, spec, workers=1, log_every_docs=log_interval,
                    label=f"tokenize {label}")
    ks = st["keys"][json_key]
    stats = {"documents": ks["documents"], "empty_documents": ks["empty_documents"], "tokens": ks["tokens"],
             "bytes": ks["text_bytes"], "tokenizer": tokenizer.name,
             "tokenizer_sha": tokenizer.unique_identifiers.get("sha"), "vocab_size": tokenizer.vocab_size,
             "dtype": dtype.name, "append_eod": append_eod, "inputs": [str(p) for p in paths],
             "wall_s": st["wall_s"], "tokens_per_s": st["tokens_per_s"]}
    logger.info("tokenized %s: %d docs (%d empty), %d tokens, %.0f tokens/s -> %s", label, stats["documents"],
                stats["empty_documents"], stats["tokens"], stats["tokens_per_s"], output_prefix)
    if stats["documents"] == 0:
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
    if tc.type == "bpe" and not is_done(layout.tokenizer_file):
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
        manifest = layout.synthetic_manifest(style)
        if not manifest.exists():
            raise MegasynthError(f"{manifest}: synthetic style {style!r} not generated yet "
                                 "(run `megasynth generate` first)")
        out.append((style, "synthetic", sorted(layout.synthetic_dir(style).glob("shard-*.jsonl"))))
    for name in cfg.eval_sets:
        out.append((name, "eval", [layout.corpus(name)]))
    return out


def _qa_format(cfg: "StudyConfig", name: str) -> str | None:
    """The question–answer prompt format of source ``name`` (``synthllm``: loss on answers only), else ``None``."""
    return cfg.generation.synthllm.qa_prompt_format if name == "synthllm" else None


def _tokenized(layout: "StudyLayout", name: str, tokenizer: MegasynthTokenizer, qa_format: str | None = None) -> bool:
    """Whether source ``name`` is tokenized (marker and stats); raise if it was with another tokenizer (or, for a
    question–answer source, another ``qa_format``)."""
    prefix, stats_path = layout.tokenized_prefix(name), layout.tokenized_stats(name)
    if not (is_done(prefix) and stats_path.exists()):
        return False
    old = read_json(stats_path)
    if old.get("tokenizer") != tokenizer.name or old.get("tokenizer_sha") != tokenizer.unique_identifiers.get("sha"):
        raise MegasynthError(
            f"{stats_path}: tokenized with {old.get('tokenizer')} but tokenizer is now {tokenizer.name}; "
            f"delete {prefix.parent} (or use a new study_dir) to re-tokenize")
    if qa_format is not None and old.get("prompt_format") != qa_format:
        raise MegasynthError(
            f"generation.synthllm.qa_prompt_format: {qa_format!r}, but {stats_path} was tokenized "
            f"{'as ' + repr(old['prompt_format']) + ' question-answer pairs' if old.get('prompt_format') else 'as plain text'}; "
            f"delete {prefix}.* and {stats_path} to re-tokenize")
    return True


def preprocess_done(cfg: "StudyConfig", layout: "StudyLayout") -> bool:
    """Whether every source of ``cfg`` is tokenized with the study's tokenizer (the stage's completion).

    Raises:
        MegasynthError: a source was tokenized with another tokenizer than the current one.
    """
    names = [*cfg.natural_sources, *cfg.synthetic_sources, *cfg.eval_sets]
    if cfg.tokenizer.type == "bpe" and not is_done(layout.tokenizer_file):
        return False
    if not all(is_done(layout.tokenized_prefix(n)) and layout.tokenized_stats(n).exists() for n in names):
        return False
    tokenizer = load_tokenizer(cfg.tokenizer, layout)
    return all(_tokenized(layout, n, tokenizer, _qa_format(cfg, n)) for n in names)


def run_preprocess(cfg: "StudyConfig", layout: "StudyLayout") -> None:
    """The ``preprocess`` stage: tokenizer, then ``tokenized/<name>_text_document.{bin,idx}`` per source.

    Sources: natural corpora (``corpora/<name>.jsonl``), synthetic styles (all
    ``synthetic/<style>/shard-*.jsonl``, sorted; none if ``generation.enabled`` is false), eval sets. The
    ``synthllm`` source is question–answer data: :func:`megasynth.data.qa.preprocess_qa_jsonl` in
    ``generation.synthllm.qa_prompt_format``, with the ``_loss_mask`` companion (loss on answers only).
    Writes ``tokenized/<name>.stats.json`` (see :func:`preprocess_jsonl`, plus ``source``, ``kind``)
    and a completion marker on the prefix; complete sources are skipped on rerun.

    Raises:
        MegasynthError: a missing input, malformed JSONL (``file:line``), or a complete source that
            was tokenized with a different tokenizer than the current one.
    """
    tokenizer = ensure_tokenizer(cfg, layout)
    logger.info("tokenizer %s: vocab_size %d, eod %d", tokenizer.name, tokenizer.vocab_size, tokenizer.eod)
    for name, kind, paths in _sources(cfg, layout):
        prefix = layout.tokenized_prefix(name)
        stats_path = layout.tokenized_stats(name)
        if _tokenized(layout, name, tokenizer, _qa_format(cfg, name)):
            logger.info("tokenized %s: complete, skipping", name)
            continue
        for p in paths:
            if not p.is_file():
                raise MegasynthError(f"{p}: input of source {name!r} not found (run the earlier stages first)")
        if _qa_format(cfg, name):  # question-answer records: the loss on answer tokens only (megasynth.data.qa)
            from megasynth.data.qa import preprocess_qa_jsonl

            stats = preprocess_qa_jsonl(paths, prefix, tokenizer, prompt_format=_qa_format(cfg, name))
        else:
            stats = preprocess_jsonl(paths, prefix, tokenizer, json_key="text", append_eod=True, name=name)
        write_json(stats_path, {"source": name, "kind": kind, **stats})
        mark_done(prefix, {"tokens": stats["tokens"], "documents": stats["documents"]})
