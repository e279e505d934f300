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

from megasynth.config.data import synthllm_level
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

    The BPE is trained on the natural training corpora only (``corpora.train``, decontaminated when the study
    decontaminates; at most
    ``tokenizer.train_max_documents`` documents in all), never on eval sets or synthetic data.
    """
    tc = cfg.tokenizer
    if tc.type == "bpe" and not is_done(layout.tokenizer_file):
        from megasynth.data.clean import training_input

        paths = [p for n in cfg.natural_sources for p in training_input(cfg, layout, n, [layout.corpus(n)])]
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
    """(name, kind, input files) for every source: natural corpora, synthetic sources (the shards their manifest
    lists), eval sets; training sources come decontaminated when the study decontaminates
    (:func:`megasynth.data.clean.training_input`)."""
    from megasynth.data.clean import source_inputs, training_input

    out = [(name, kind, training_input(cfg, layout, name, files)) for name, kind, files in source_inputs(cfg, layout)]
    synthllm = next((files for name, _, files in out if name == "synthllm"), None)
    for name in cfg.synthetic_sources:
        if synthllm_level(name):  # synthllm-l<k>: the synthllm records of level k (split when tokenized)
            out.append((name, "synthetic", list(synthllm or [])))
    for name in cfg.eval_sets:
        out.append((name, "eval", [layout.corpus(name)]))
    return out


def _qa_format(cfg: "StudyConfig", name: str) -> str | None:
    """The question–answer prompt format of source ``name`` (``synthllm`` and ``synthllm-l<k>``: loss on answers
    only), else ``None``."""
    return cfg.generation.synthllm.qa_prompt_format if name == "synthllm" or synthllm_level(name) else None


def _inputs_id(paths: list[Path]) -> list:
    """Size and mtime of each input file (a changed input re-tokenizes its source)."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(p), None, None])
    return out


def _tokenized(layout: "StudyLayout", name: str, tokenizer: MegasynthTokenizer, paths: list[Path] | None = None,
               qa_format: str | None = None) -> bool:
    """Whether source ``name`` is tokenized (marker and stats) from ``paths`` as they are now (when given); raise if
    it was with another tokenizer (or, for a question–answer source, another ``qa_format``)."""
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
    if paths is not None and old.get("inputs_id") != _inputs_id(paths):
        return False
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
    try:
        sources = _sources(cfg, layout)
    except MegasynthError:  # a synthetic source not generated
        return False
    return all(_tokenized(layout, n, tokenizer, paths, _qa_format(cfg, n)) for n, _, paths in sources)


def run_preprocess(cfg: "StudyConfig", layout: "StudyLayout") -> None:
    """The ``preprocess`` stage: tokenizer, then ``tokenized/<name>_text_document.{bin,idx}`` per source.

    Sources: natural corpora (``corpora/<name>.jsonl``), synthetic sources (the shards their manifest lists;
    none if ``generation.enabled`` is false), both as ``decontaminated/<name>.jsonl`` when the study
    decontaminates, and eval sets. The
    ``synthllm`` source is question–answer data: :func:`megasynth.data.qa.preprocess_qa_jsonl` in
    ``generation.synthllm.qa_prompt_format``, with the ``_loss_mask`` companion (loss on answers only).
    Writes ``tokenized/<name>.stats.json`` (see :func:`preprocess_jsonl`, plus
    ``source``, ``kind``, ``inputs_id``: size and mtime of each input) and a completion marker on the prefix;
    complete sources whose inputs are unchanged are skipped on rerun.

    Raises:
        MegasynthError: a missing input, malformed JSONL (``file:line``), or a complete source that
            was tokenized with a different tokenizer than the current one.
    """
    from megasynth.data.clean import decontaminate_done

    sources = _sources(cfg, layout)  # raises for a synthetic source not generated yet
    if cfg.decontaminates and not decontaminate_done(cfg, layout):
        raise MegasynthError(f"{layout.decontaminated('*').parent}: the training sources are not decontaminated (or "
                             "their inputs changed since); run `megasynth decontaminate` first")
    tokenizer = ensure_tokenizer(cfg, layout)
    logger.info("tokenizer %s: vocab_size %d, eod %d", tokenizer.name, tokenizer.vocab_size, tokenizer.eod)
    for name, kind, paths in sources:
        tokenize_source(layout, name, kind, paths, tokenizer, qa_format=_qa_format(cfg, name))


def tokenize_source(layout: "StudyLayout", name: str, kind: str, paths: list[Path],
                    tokenizer: MegasynthTokenizer, *, qa_format: str | None = None) -> dict:
    """Tokenize source ``name`` (JSONL ``paths``) into ``tokenized/<name>_text_document`` with its stats file and
    marker, unless it is complete from ``paths`` as they are now; return its stats (``tokenized/<name>.stats.json``:
    ``source``, ``kind`` (``natural``/``synthetic``/``eval``), :func:`preprocess_jsonl`'s, ``inputs_id``).
    ``qa_format``: the records are question–answer pairs tokenized in that prompt format with a loss mask
    (:func:`megasynth.data.qa.preprocess_qa_jsonl`; loss on answer tokens only).

    Raises:
        MegasynthError: a missing input, malformed JSONL, a complete source tokenized with another tokenizer
            or ``qa_format``.
    """
    prefix = layout.tokenized_prefix(name)
    stats_path = layout.tokenized_stats(name)
    if _tokenized(layout, name, tokenizer, paths, qa_format):
        logger.info("tokenized %s: complete, skipping", name)
        return read_json(stats_path)
    for p in paths:
        if not p.is_file():
            raise MegasynthError(f"{p}: input of source {name!r} not found (run the earlier stages first)")
    inputs_id = _inputs_id(paths)
    if qa_format:  # question-answer records: the loss on answer tokens only (megasynth.data.qa)
        from megasynth.data.qa import preprocess_qa_jsonl

        produced = preprocess_qa_jsonl(paths, prefix, tokenizer, prompt_format=qa_format, level=synthllm_level(name))
    else:
        produced = preprocess_jsonl(paths, prefix, tokenizer, json_key="text", append_eod=True, name=name)
    stats = {"source": name, "kind": kind, **produced, "inputs_id": inputs_id}
    write_json(stats_path, stats)
    mark_done(prefix, {"tokens": stats["tokens"], "documents": stats["documents"]})
    return stats
