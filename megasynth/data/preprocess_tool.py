"""Drop-in for Megatron-LM's ``tools/preprocess_data.py``: same flags, same output bytes, faster.

Usage (also ``python tools/preprocess_data.py ...``)::

    python -m megasynth.data.preprocess_tool --input corpus.jsonl --output-prefix out/corpus \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model ./llama3-hf --append-eod --workers 2

Writes ``{prefix}_{key}_{document|sentence}.bin/.idx`` per ``--json-keys`` key (Megatron's names) and
``{prefix}_{key}_{level}.stats.json`` (documents, empty documents, sentences, tokens, bytes, blank
lines, skipped lines by reason, rates). Inputs: JSONL (plain/.gz/.zst), Parquet, HF ``datasets``
directories, directories and globs of those. Sharded mode (``--output-per-input``): one output per
input file, ``{prefix}_{stem}_{key}_{level}``, finished shards skipped on rerun; ``--shard-index`` /
``--num-shards`` take every n-th input (a SLURM array); ``--merge`` then concatenates the shards
(megatron-core ``IndexedDatasetBuilder.add_index``) into ``{prefix}_{key}_{level}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from megasynth.utils import MegasynthError, cli_error, read_json, write_json

logger = logging.getLogger("megasynth.data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="preprocess_data", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True, help="JSONL/.gz/.zst/Parquet files, directories, globs, "
                   "HF datasets directories; read in the order given")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys (columns) to extract; one output each")
    g.add_argument("--split-sentences", action="store_true", help="split documents into sentences (nltk punkt)")
    g.add_argument("--keep-newlines", action="store_true", help="keep newlines between sentences when splitting")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, help="HuggingFaceTokenizer, Llama3Tokenizer (tiktoken), "
                   "or megasynth's llama3 / huggingface / bpe")
    g.add_argument("--tokenizer-model", default=None, help="HF tokenizer directory, or Llama-3 tokenizer.model")
    g.add_argument("--tokenizer-hf-no-include-special-tokens", action="store_true",
                   help="HuggingFaceTokenizer: do not add the post-processor's special tokens (Megatron-LM flag)")
    g.add_argument("--vocab-file", default=None, help=argparse.SUPPRESS)
    g.add_argument("--merge-file", default=None, help=argparse.SUPPRESS)
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    g.add_argument("--lang", default="english", help="nltk punkt language for --split-sentences")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="outputs are {prefix}_{key}_{document|sentence}.bin/.idx")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    g.add_argument("--partitions", type=int, default=1, help="Megatron's partitions: round-robin document "
                   "order unless --keep-sequential-samples (output bytes as Megatron-LM writes them)")
    g.add_argument("--keep-sequential-samples", action="store_true", help="keep input order with --partitions > 1")
    g.add_argument("--log-interval", type=int, default=1000, help="log progress every this many documents")
    g = p.add_argument_group("megasynth extensions")
    g.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of stopping")
    g.add_argument("--empty", choices=("megatron", "skip"), default="megatron",
                   help="documents without tokens: written with zero sequences (Megatron) or dropped")
    g.add_argument("--output-per-input", action="store_true", help="one output per input file (sharded job)")
    g.add_argument("--shard-index", type=int, default=0, help="with --num-shards: process inputs[i::n]")
    g.add_argument("--num-shards", type=int, default=1)
    g.add_argument("--merge", action="store_true", help="merge the per-input outputs into one dataset")
    return p


def merge_datasets(prefixes: Sequence[str | os.PathLike], output_prefix: str | os.PathLike) -> dict:
    """Concatenate indexed datasets (in order) with megatron-core ``IndexedDatasetBuilder.add_index``.

    Writes ``output_prefix.{bin,idx}`` under temporary names, renamed when complete.

    Raises:
        MegasynthError: no prefixes, a missing ``.idx``/``.bin``, or mixed token dtypes.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder, _IndexReader

    from megasynth.data.engine import clean_stale_tmp, tmp_prefix

    if not prefixes:
        raise MegasynthError("merge: no datasets to merge")
    for p in prefixes:
        for suf in (".bin", ".idx"):
            if not Path(f"{p}{suf}").exists():
                raise MegasynthError(f"{p}{suf}: not found (shard not finished)")
    dtypes = {_IndexReader(f"{p}.idx", False).dtype for p in prefixes}
    if len(dtypes) != 1:
        raise MegasynthError(f"merge: datasets have different token dtypes {sorted(map(str, dtypes))}")
    out = Path(output_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)
    tmp = tmp_prefix(out)
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtypes.pop())
    try:
        for p in prefixes:
            builder.add_index(str(p))
        builder.finalize(f"{tmp}.idx")
        os.replace(f"{tmp}.bin", f"{out}.bin")
        os.replace(f"{tmp}.idx", f"{out}.idx")
    except BaseException:
        builder.data_file.close()
        for suf in (".bin", ".idx"):
            Path(f"{tmp}{suf}").unlink(missing_ok=True)
        raise
    return {"documents": len(builder.document_indices) - 1, "sequences": len(builder.sequence_lengths)}


def _settings(args) -> dict:
    return {"tokenizer_type": args.tokenizer_type, "tokenizer_model": args.tokenizer_model,
            "append_eod": args.append_eod, "split_sentences": args.split_sentences,
            "keep_newlines": args.keep_newlines, "lang": args.lang, "empty": args.empty,
            "include_special_tokens": not args.tokenizer_hf_no_include_special_tokens,
            "partitions": args.partitions, "keep_sequential_samples": args.keep_sequential_samples}


def run(args) -> list[dict]:
    """Run the tool for parsed ``args``; returns the stats written per output.

    Raises:
        MegasynthError: bad flags or inputs, or a malformed record (``file:line``) without ``--skip-bad``.
    """
    from megasynth.data.encode import EncodeSpec
    from megasynth.data.engine import run_engine
    from megasynth.data.indexed import optimal_dtype
    from megasynth.data.inputs import expand_inputs
    from megasynth.data.megatron_tokenizers import build_tool_tokenizer

    workers = args.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if workers < 1:
        raise MegasynthError("--workers: must be >= 1")
    if args.partitions < 1:
        raise MegasynthError("--partitions: must be >= 1")
    if not 0 <= args.shard_index < args.num_shards:
        raise MegasynthError("--shard-index: must be in [0, --num-shards)")
    inputs = expand_inputs(args.input)
    tok = build_tool_tokenizer(args.tokenizer_type, args.tokenizer_model,
                               not args.tokenizer_hf_no_include_special_tokens, workers)
    level = "sentence" if args.split_sentences else "document"
    make_splitter = None
    if args.split_sentences:
        from megasynth.data.punkt import megatron_sentence_splitter

        make_splitter = lambda: megatron_sentence_splitter(args.lang, args.keep_newlines)  # noqa: E731
        make_splitter()  # fail early (and write punkt_tab) in the parent
    dtype = optimal_dtype(tok.vocab_size)
    plain = tok.encode_plain is not None
    spec = EncodeSpec(tokenize_batch=tok.encode_plain if plain else tok.tokenize_batch, eod=tok.eod, dtype=dtype,
                      keys=tuple(args.json_keys), append_eod=args.append_eod, empty=args.empty,
                      skip_bad=args.skip_bad, make_splitter=make_splitter,
                      prefix=tok.prefix if plain else (), suffix=tok.suffix if plain else ())
    logger.info("tokenizer %s (%s path): vocab_size %d, eod %d, dtype %s; %d input(s), %d worker(s)",
                tok.name, tok.fast_path, tok.vocab_size, tok.eod, dtype.name, len(inputs), workers)
    settings = _settings(args)
    jobs: list[tuple[list[Path], str]] = []
    if args.output_per_input:
        mine = inputs[args.shard_index::args.num_shards]
        stems = [_stem(p) for p in inputs]
        if len(set(stems)) != len(stems):
            raise MegasynthError("--output-per-input: input file names are not unique")
        jobs = [([p], f"{args.output_prefix}_{_stem(p)}") for p in mine]
    else:
        jobs = [(inputs, args.output_prefix)]
    all_stats = []
    pool = None
    try:
        for files, prefix in jobs:
            prefixes = {k: Path(f"{prefix}_{k}_{level}") for k in args.json_keys}
            if args.output_per_input and all(_finished(p, settings) for p in prefixes.values()):
                logger.info("%s: finished earlier, skipping", prefix)
                continue
            if workers > 1 and pool is None:
                import gc

                from megasynth.data.encode import worker_pool

                gc.freeze()  # the tokenizer's objects: never scanned (nor their pages copied) in the workers
                pool = worker_pool(spec, workers)
            st = run_engine(files, prefixes, spec, workers=workers, partitions=args.partitions,
                            keep_sequential=args.keep_sequential_samples, log_every_docs=args.log_interval,
                            label=Path(prefix).name, pool=pool)
            for k, p in prefixes.items():
                ks = st["keys"][k]
                out = {"output": str(p), "inputs": [str(f) for f in files], "tokenizer": tok.name,
                       "tokenizer_path": tok.fast_path, "vocab_size": tok.vocab_size, "eod": tok.eod,
                       "dtype": dtype.name, "key": k, "level": level, "records": st["records"], **ks,
                       "bytes": ks["text_bytes"], "input_bytes": st["input_bytes"], "blank_lines": st["blank_lines"],
                       "skipped": st["skipped"], "wall_s": st["wall_s"], "docs_per_s": st["docs_per_s"],
                       "mb_per_s": st["mb_per_s"], "tokens_per_s": st["tokens_per_s"], "settings": settings,
                       "complete": True}
                write_json(f"{p}.stats.json", out)
                all_stats.append(out)
                print(f"{p}: {ks['documents']} documents ({ks['empty_documents']} empty), {ks['sentences']} "
                      f"sequences, {ks['tokens']} tokens, {st['tokens_per_s']:.0f} tokens/s")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if args.merge:
        if not args.output_per_input:
            raise MegasynthError("--merge: needs --output-per-input")
        for k in args.json_keys:
            parts = [f"{args.output_prefix}_{_stem(p)}_{k}_{level}" for p in inputs]
            missing = [q for q in parts if not _finished(Path(q), settings)]
            if missing:
                raise MegasynthError(f"--merge: {len(missing)} shard(s) not finished, e.g. {missing[0]}")
            final = f"{args.output_prefix}_{k}_{level}"
            m = merge_datasets(parts, final)
            tot = {f: sum(read_json(f"{q}.stats.json")[f] for q in parts)
                   for f in ("records", "documents", "empty_documents", "sentences", "tokens", "bytes", "blank_lines")}
            write_json(f"{final}.stats.json", {"output": final, "merged_from": parts, **tot, **m,
                                               "settings": settings, "complete": True})
            print(f"{final}: merged {len(parts)} shards, {m['documents']} documents")
    return all_stats


def _stem(p: Path) -> str:
    name = p.name
    for suf in (".gz", ".zst", ".jsonl", ".json", ".parquet"):
        if name.endswith(suf):
            name = name[: -len(suf)]
    return name


def _finished(prefix: Path, settings: dict) -> bool:
    st = Path(f"{prefix}.stats.json")
    if not (st.exists() and Path(f"{prefix}.bin").exists() and Path(f"{prefix}.idx").exists()):
        return False
    try:
        old = read_json(st)
    except Exception:  # noqa: BLE001 - unreadable stats: not finished
        return False
    return bool(old.get("complete")) and old.get("settings") == settings


def main(argv: Optional[list[str]] = None) -> int:
    from megasynth.utils import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO)
    try:
        run(args)
    except MegasynthError as e:
        return cli_error(e, "preprocess_data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
