"""Tokenizers, JSONL → Megatron indexed datasets, mixtures → Megatron blends.

- :mod:`megasynth.data.tokenizer`: :class:`MegasynthTokenizer` (bpe / llama3 / huggingface),
  :func:`train_bpe_tokenizer`, :func:`load_tokenizer`.
- :mod:`megasynth.data.preprocess`: :func:`preprocess_jsonl`, the ``preprocess`` stage
  :func:`run_preprocess` and its completion :func:`preprocess_done`.
- :mod:`megasynth.data.mixtures`: :func:`mixture_to_blend`, the ``mix`` stage :func:`run_mix` and its completion
  :func:`mix_done`, :func:`read_mixture` (a mixture file with its prefixes resolved).
- :mod:`megasynth.data.datasets`: megatron-core GPT/blended datasets for training.
- :mod:`megasynth.data.clean`: the ``decontaminate`` stage :func:`run_decontaminate` (eval-set n-gram overlap,
  :mod:`megasynth.data.decontaminate`) and its completion :func:`decontaminate_done`.

Names are imported lazily so importing one submodule does not import the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MegasynthTokenizer": "tokenizer",
    "train_bpe_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "load_tokenizer_dir": "tokenizer",
    "preprocess_jsonl": "preprocess",
    "run_preprocess": "preprocess",
    "preprocess_done": "preprocess",
    "ensure_tokenizer": "preprocess",
    "tokenize_source": "preprocess",
    "write_mixture": "mixtures",
    "mixture_to_blend": "mixtures",
    "run_mix": "mixtures",
    "mix_done": "mixtures",
    "read_mixture": "mixtures",
    "run_decontaminate": "clean",
    "decontaminate_done": "clean",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megasynth.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megasynth.data' has no attribute {name!r}")
