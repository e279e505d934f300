"""Llama-3 presets → megatron-core ``TransformerConfig`` + ``GPTModel`` (TE or local spec).

- :mod:`.presets`: named shapes (torch-free): :data:`PRESETS`, :class:`LlamaShape`, :func:`get_preset`.
- :mod:`.builder`: :func:`build_model`, :func:`build_model_chunks`, :func:`layout_independent_init_`, :func:`transformer_config`, :func:`padded_vocab_size`,
  :func:`count_params`, :func:`init_parallel`, :func:`destroy_parallel`.
- :mod:`.cpu_compat`: the CPU-only workarounds for megatron-core (no-ops with CUDA).

Names are imported lazily so importing the presets does not import torch/megatron.
"""

from __future__ import annotations

import importlib

from megasynth.model.presets import PRESETS, LlamaShape, get_preset

_EXPORTS = {
    "build_model": "builder",
    "build_model_chunks": "builder",
    "layout_independent_init_": "builder",
    "transformer_config": "builder",
    "layer_spec": "builder",
    "padded_vocab_size": "builder",
    "count_params": "builder",
    "init_parallel": "builder",
    "destroy_parallel": "builder",
}

__all__ = sorted([*_EXPORTS, "PRESETS", "LlamaShape", "get_preset"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megasynth.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megasynth.model' has no attribute {name!r}")
