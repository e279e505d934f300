"""Training runs on megatron-core: data, schedule, optimizer, eval, checkpoints, TensorBoard.

- :func:`train_one` (one :class:`~megasynth.config.RunConfig`) and :func:`run_train` (the ``train`` stage over
  planned runs): :mod:`.run`; :func:`check_run_dir` (a run directory's identity and completion): :mod:`.record`.
- :func:`setup_model_and_optimizer`, :func:`train_step`: :mod:`.step` (and its forward-only :func:`~megasynth.train.step.eval_sums`).
- :class:`StopSignal`, :class:`TrainingInterrupted` (SIGTERM/SIGUSR1): :mod:`.signals`.
- :class:`MetricsLogger` (``metrics.jsonl``, ``evals.jsonl``, TensorBoard, console): :mod:`.metrics`.
- :func:`save_checkpoint`, :func:`load_checkpoint` (megatron-core ``dist_checkpointing``; full, resumable,
  reshardable): :mod:`.checkpoint`.
- :func:`parallel_plan` (layout arithmetic for ``--dry-run``): :mod:`.parallel`.

The ``torchrun`` entry point, which plans a study's runs, is one floor up: ``python -m megasynth.study.launch``.

Names are imported lazily so ``import megasynth.train`` does not import torch/megatron.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_train": "run",
    "train_one": "run",
    "check_run_dir": "record",
    "setup_model_and_optimizer": "step",
    "train_step": "step",
    "StopSignal": "signals",
    "TrainingInterrupted": "signals",
    "parallel_plan": "parallel",
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
