#!/usr/bin/env python
"""Megatron-LM ``tools/preprocess_data.py`` drop-in: same flags and output bytes (see
:mod:`megasynth.data.preprocess_tool`).

Examples::

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix out/corpus \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model ./llama3-hf --append-eod --workers 2
    python tools/preprocess_data.py --input 'shards/*.jsonl.gz' --output-prefix out/web --output-per-input \\
        --tokenizer-type llama3 --append-eod --merge
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from megasynth.data.preprocess_tool import main

    sys.exit(main())
