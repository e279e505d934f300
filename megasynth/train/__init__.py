"""The training loop on megatron-core: data, schedule, optimizer, eval, checkpoints, TensorBoard.

- :func:`run_train` (the ``train`` stage) and :func:`train_one` (one mixture's run): :mod:`.loop`.
- :class:`MetricsLogger` (``metrics.jsonl``, ``evals.jsonl``, TensorBoard, console): :mod:`.metrics`.
- :func:`save_checkpoint`, :func:`load_checkpoint` (megatron-core ``dist_checkpointing``; full, resumable,
  reshardable): :mod:`.checkpoint`.
- :func:`parallel_plan` and the ``torchrun`` entry point ``python -m megasynth.train.launch``: :mod:`.launch`.

Names are imported lazily so ``import megasynth.train`` does not import torch/megatron.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_train": "loop",
    "train_one": "loop",
    "read_mixture": "loop",
    "synthetic_ratio": "loop",
    "setup_model_and_optimizer": "loop",
    "train_step": "loop",
    "TrainingInterrupted": "loop",
    "parallel_plan": "launch",
    "peak_tflops": "metrics",
    "MetricsLogger": "metrics",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "read_common": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megasynth.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megasynth.train' has no attribute {name!r}")
