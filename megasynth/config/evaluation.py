"""Configs of what a study measures beyond the training loss: ``evaluation`` (downstream tasks, bits per byte,
per-token losses) and ``collapse`` (the recursive train → generate → train loop). Each ``validate(where)``
names its dotted fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megasynth.config.data import COLLAPSE_PREFIX, STYLES
from megasynth.utils import MegasynthError

DEFAULT_MAX_BATCH_TOKENS = 16_384
"""Tokens per forward pass of the evaluation scorer (rows × padded length)."""


@dataclass
class EvaluationConfig:
    """``evaluation``: downstream tasks and held-out evaluation by documents.

    Held-out sets (``corpora.eval``) are evaluated every ``train.eval_interval`` steps on a sample
    (``train.eval_iters`` micro batches) or on every document (``train.eval_iters: all``), in nats per token
    and bits per byte. The downstream ``tasks`` are evaluated on each run's final checkpoint by the
    ``evaluate`` stage (``megasynth evaluate STUDY.yaml --tasks ...``) and, with ``in_loop``, also every
    ``train.eval_interval`` steps during training (as OLMo-core's in-loop ``DownstreamEvaluator``).
    """

    tasks: list[str] = field(default_factory=list)
    """Downstream task names (``arc_easy``, ``hellaswag``, ``piqa``, ``gsm8k_bpb``, ``mmlu``, ... or any
    olmo_eval label; :data:`megasynth.evaluation.catalog.TASKS`); empty = none."""
    limit: Optional[int] = None
    """At most this many instances (questions, all their answer choices included) per task; ``None`` = all."""
    in_loop: bool = False
    """Also evaluate ``tasks`` every ``train.eval_interval`` steps and at the last step of training (keep
    ``limit`` small: it runs on the training ranks, with training paused)."""
    token_losses: bool = True
    """At the final evaluation score every document of each held-out set (the first ``max_documents``) and
    save the loss of every token with its id to ``runs/<run_id>/token_losses/<eval_set>.npy`` (the report's
    rare-unigram analysis reads them). Needs ``train.parallel.pipeline_model_parallel_size: 1`` and no
    ``sequence_parallel``; skipped with a warning otherwise."""
    max_documents: Optional[int] = None
    """Documents per held-out set in a document evaluation (``train.eval_iters: all`` and the token-loss
    pass): the first this many; ``None`` = all."""
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    """Tokens per forward pass of the scorer (rows × padded length); changes speed and memory, not results
    (beyond float rounding)."""
    math_tasks: list[str] = field(default_factory=list)
    """Generative math tasks (``minerva_math_500``, ``gsm8k``: :data:`megasynth.evaluation.math.MATH_TASKS`) that
    the ``evaluate`` stage runs on each finished run's final checkpoint, exported to HF and sampled with vLLM:
    rows ``math_error`` / ``gsm8k_error`` in ``results.csv`` (MATH also per level, ``minerva_math_500_level<k>``).
    Never in the training loop. Empty = none."""
    math_limit: Optional[int] = None
    """The first this many problems of each math task (``None``: all; 500 MATH, 1,319 GSM8K)."""
    math_max_new_tokens: Optional[int] = None
    """Cap on generated tokens per problem (``None``: the task's, 1,024 MATH / 512 GSM8K)."""
    math_max_model_len: int = 4096
    """vLLM ``max_model_len`` (prompt + generated tokens), capped at the preset's ``max_position_embeddings``."""
    math_dtype: str = "float32"
    """dtype of the exported HF weights and of the vLLM engine (``float32``, ``bfloat16``, ``float16``)."""

    def validate(self, where: str = "evaluation", eval_sets: tuple[str, ...] | list[str] = ()) -> None:
        """Known, distinct task names that are not also held-out set names; positive limits.

        Raises:
            MegasynthError: ``evaluation.tasks[2]: unknown task 'arcx' (known: ...)``, and the like.
        """
        from megasynth.evaluation.catalog import resolve_task  # torch-free catalog of task names

        if not isinstance(self.tasks, (list, tuple)):
            raise MegasynthError(f"{where}.tasks: must be a list of task names")
        seen = set()
        for i, name in enumerate(self.tasks):
            resolve_task(name, f"{where}.tasks[{i}]")
            if name in seen:
                raise MegasynthError(f"{where}.tasks[{i}]: duplicate task {name!r}")
            if name in eval_sets:
                raise MegasynthError(f"{where}.tasks[{i}]: {name!r} is also the name of a held-out set "
                                     "(corpora.eval); results.csv names both in its eval_set column")
            seen.add(name)
        for fname in ("limit", "max_documents"):
            v = getattr(self, fname)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise MegasynthError(f"{where}.{fname}: must be an integer >= 1 or null, got {v!r}")
        if isinstance(self.max_batch_tokens, bool) or not isinstance(self.max_batch_tokens, int) \
                or self.max_batch_tokens < 1:
            raise MegasynthError(f"{where}.max_batch_tokens: must be an integer >= 1, got {self.max_batch_tokens!r}")
        from megasynth.evaluation.math import MATH_TASKS  # torch-free

        if not isinstance(self.math_tasks, (list, tuple)):
            raise MegasynthError(f"{where}.math_tasks: must be a list of task names")
        for i, name in enumerate(self.math_tasks):
            if name not in MATH_TASKS:
                raise MegasynthError(f"{where}.math_tasks[{i}]: unknown math task {name!r} "
                                     f"(known: {', '.join(sorted(MATH_TASKS))})")
            if name in self.math_tasks[:i]:
                raise MegasynthError(f"{where}.math_tasks[{i}]: duplicate task {name!r}")
            if name in eval_sets:
                raise MegasynthError(f"{where}.math_tasks[{i}]: {name!r} is also the name of a held-out set "
                                     "(corpora.eval); results.csv names both in its eval_set column")
        for fname in ("math_limit", "math_max_new_tokens"):
            v = getattr(self, fname)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise MegasynthError(f"{where}.{fname}: must be an integer >= 1 or null, got {v!r}")
        if self.math_dtype not in ("float32", "bfloat16", "float16"):
            raise MegasynthError(f"{where}.math_dtype: must be float32, bfloat16 or float16, got {self.math_dtype!r}")
        v = self.math_max_model_len
        if isinstance(v, bool) or not isinstance(v, int) or v < 64:
            raise MegasynthError(f"{where}.math_max_model_len: must be an integer >= 64, got {v!r}")

    def for_run(self) -> "EvaluationConfig":
        """The part a training run evaluates (its ``run.yaml``): the tasks and ``limit`` only ``in_loop``, so
        evaluating other tasks after training never changes a run's identity."""
        return EvaluationConfig(tasks=list(self.tasks) if self.in_loop else [],
                                limit=self.limit if self.in_loop else None, in_loop=self.in_loop,
                                token_losses=self.token_losses, max_documents=self.max_documents,
                                max_batch_tokens=self.max_batch_tokens)


@dataclass
class CollapseConfig:
    """``collapse``: the recursive loop of model-collapse studies (Shumailov et al. 2024, "AI models collapse
    when trained on recursively generated data"): train on natural text → generate with the trained model →
    train on that → generate with that model → ...

    Generation ``k`` (1..``generations``) exports the final checkpoint of generation ``k − 1`` (generation 0:
    the run of ``base_mixture``) to a HF Llama directory, writes ``num_documents`` ``style`` records with it
    through the generate stage's machinery (its ``generation`` settings otherwise), tokenizes them as source
    ``collapse-g<k>`` and trains run ``collapse-g<k>`` on them (with ``natural_share`` of the base mixture's
    natural sources) with the study's ``model`` and ``train`` settings. Its rows join ``results.csv`` and the
    report's model-collapse section.
    """

    generations: int = 0
    """Rounds of the loop; 0 = off."""
    base_mixture: str = "natural"
    """The mixture whose trained run is generation 0 (an all-natural one)."""
    style: str = "hq"
    """The prompt style each generation's model writes in (``generation.prompts`` applies)."""
    num_documents: int = 24
    """Seed excerpts (requests) per generation."""
    natural_share: float = 0.0
    """Share of each generation's training tokens from the base mixture's sources (0: fully recursive)."""

    def validate(self, where: str = "collapse") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        if self.generations < 0:
            raise MegasynthError(f"{where}.generations: must be >= 0")
        if self.style not in STYLES:
            raise MegasynthError(f"{where}.style: unknown style {self.style!r} (known: {', '.join(STYLES)})")
        if self.num_documents <= 0:
            raise MegasynthError(f"{where}.num_documents: must be > 0")
        if not 0 <= self.natural_share < 1:
            raise MegasynthError(f"{where}.natural_share: must be in [0, 1), got {self.natural_share}")

    @staticmethod
    def name(k: int) -> str:
        """``collapse-g<k>``: the run, mixture and source of generation ``k``."""
        return f"{COLLAPSE_PREFIX}{k}"
