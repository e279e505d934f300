#!/usr/bin/env python
"""Generative MATH-500 / GSM8K error rates of a local Hugging Face model (see :mod:`megasynth.evaluation.math`;
``--help`` lists the flags; exit status 2 on bad input).

Examples::

    python tools/convert_checkpoint.py export --megatron-path studies/s/runs/synthllm33/checkpoints \\
        --preset llama3-tiny --tokenizer studies/s/tokenizer --hf-path /tmp/synthllm33-hf
    python tools/math_eval.py --hf-model /tmp/synthllm33-hf --tasks minerva_math_500 gsm8k --limit 50
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from megasynth.evaluation.math import main

    sys.exit(main())
