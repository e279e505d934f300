#!/usr/bin/env python
"""Tokenize JSONL into Megatron indexed datasets, with Megatron-LM's ``tools/preprocess_data.py`` flags.

Writes ``{output_prefix}_{key}_document.{bin,idx}`` per ``--json-keys`` key (one document per
record, ``eod`` appended with ``--append-eod``) and ``{output_prefix}_{key}_document.stats.json``.

Examples::

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix out/corpus \\
        --tokenizer-type llama3 --append-eod --workers 2
    python tools/preprocess_data.py --input a.jsonl b.jsonl --output-prefix out/ab \\
        --tokenizer-type huggingface --tokenizer-model studies/quickstart/tokenizer --append-eod
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from pathlib import Path

TOKENIZER_TYPES = {"llama3": "llama3", "Llama3Tokenizer": "llama3", "TikTokenizer": "llama3",
                   "huggingface": "huggingface", "HuggingFaceTokenizer": "huggingface", "bpe": "huggingface"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True,
                   help="JSONL file(s) or glob(s), one document per line, read in the order given")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract from each record")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=sorted(TOKENIZER_TYPES),
                   help="llama3 (tiktoken, from PyPI llama-models) or huggingface/bpe (a local tokenizer dir)")
    g.add_argument("--tokenizer-model", default=None,
                   help="tokenizer directory (huggingface/bpe) or tokenizer.model file (llama3; default: llama-models')")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="path prefix; outputs are {prefix}_{key}_document.{bin,idx}")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all available CPUs)")
    g.add_argument("--log-interval", type=int, default=1000, help="log progress every this many documents")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None:
        if args.workers < 1:
            print("preprocess_data: error: --workers: must be >= 1", file=sys.stderr)
            return 2
        os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # before HF tokenizers starts its pool
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from megasynth.data.preprocess import preprocess_jsonl
    from megasynth.data.tokenizer import TiktokenTokenizer, load_tokenizer_dir
    from megasynth.utils import MegasynthError, setup_logging, write_json

    setup_logging(logging.INFO)
    try:
        inputs: list[str] = []
        for pattern in args.input:
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise MegasynthError(f"--input: no file matches {pattern}")
            inputs.extend(matches)
        kind = TOKENIZER_TYPES[args.tokenizer_type]
        if kind == "llama3":
            tokenizer = TiktokenTokenizer(args.tokenizer_model)
        else:
            if not args.tokenizer_model:
                raise MegasynthError(f"--tokenizer-model: required for --tokenizer-type {args.tokenizer_type}")
            tokenizer = load_tokenizer_dir(args.tokenizer_model)
        tokenizer.num_threads = args.workers
        for key in args.json_keys:
            prefix = f"{args.output_prefix}_{key}_document"
            stats = preprocess_jsonl(inputs, prefix, tokenizer, json_key=key, append_eod=args.append_eod,
                                     log_interval=args.log_interval)
            write_json(f"{prefix}.stats.json", stats)
            print(f"{prefix}: {stats['documents']} documents, {stats['tokens']} tokens, "
                  f"{stats['tokens_per_s']:.0f} tokens/s")
    except MegasynthError as e:
        print(f"preprocess_data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
