#!/usr/bin/env python
"""Convert Hugging Face Llama checkpoints to megatron-core dist_checkpointing checkpoints and back (see
:mod:`megasynth.model.convert`; ``--help`` lists the flags; exit status 2 on bad input).

Examples::

    python tools/convert_checkpoint.py import --hf-model /models/Llama-3.2-1B --megatron-path ckpt/llama3-1b
    python tools/convert_checkpoint.py export --megatron-path ckpt/llama3-1b --hf-path /models/llama3-1b-cpt
    python tools/convert_checkpoint.py export --megatron-path studies/q/runs/natural/checkpoints \\
        --preset llama3-tiny --tokenizer studies/q/tokenizer --hf-path /tmp/natural-hf
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from megasynth.model.convert import main

    sys.exit(main())
