"""A whole study (:class:`StudyConfig`) and one training run of it (:class:`RunConfig`); checks across sections."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from megasynth.config.data import COLLAPSE_PREFIX, CorporaConfig, GenerationConfig, MixtureConfig, TokenizerConfig
from megasynth.config.evaluation import CollapseConfig, EvaluationConfig
from megasynth.config.loading import ConfigFile, flatten
from megasynth.config.training import ModelConfig, TrainConfig
from megasynth.utils import MegasynthError


@dataclass
class ReportConfig:
    fit_min_points: int = 3
    """Minimum budgets per (mixture, eval set) to fit the data law (at least 3)."""
    bootstrap: int = 200
    """Bootstrap resamples (of points) for each fit's confidence intervals."""
    ci_level: float = 0.95
    """Two-sided confidence level of the bootstrap percentile intervals."""
    fit_loss: Literal["huber", "linear"] = "huber"
    """Objective on log L: Huber (Hoffmann et al. 2022) or plain least squares."""
    huber_delta: float = 1e-3
    """Huber δ on log-loss residuals (Hoffmann et al. 2022 use 1e-3)."""

    def validate(self, where: str = "report") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        if self.bootstrap < 0:
            raise MegasynthError(f"{where}.bootstrap: must be >= 0")
        if not 0 < self.ci_level < 1:
            raise MegasynthError(f"{where}.ci_level: must be in (0, 1), got {self.ci_level}")
        if self.huber_delta <= 0:
            raise MegasynthError(f"{where}.huber_delta: must be > 0")


@dataclass
class StudyConfig(ConfigFile):
    """A whole study: corpora, generation, tokenizer, mixtures, and the model and training of its runs.

    ``StudyConfig.from_yaml(path, overrides)`` reads a study file (:class:`~megasynth.config.loading.ConfigFile`).
    """

    KIND = "study file"

    name: str = "study"
    study_dir: str = "studies/study"
    """Root directory of the study's outputs (relative paths are relative to the working directory)."""
    seed: int = 1234
    """Seed of excerpt sampling, SynthLLM combinations and bootstrap resampling (runs use ``train.seed``)."""
    corpora: CorporaConfig = field(default_factory=CorporaConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mixtures: list[MixtureConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)

    # ------------------------------------------------------------------ derived
    @property
    def generation_source(self) -> str:
        return self.generation.source or (self.corpora.train[0].name if self.corpora.train else "")

    @property
    def natural_sources(self) -> list[str]:
        return [c.name for c in self.corpora.train]

    @property
    def synthetic_sources(self) -> list[str]:
        if not self.generation.enabled:
            return []
        return list(self.generation.styles) + (["synthllm"] if self.generation.synthllm.enabled else [])

    @property
    def eval_sets(self) -> list[str]:
        return [c.name for c in self.corpora.eval]

    def mixture(self, name: str) -> MixtureConfig:
        """The mixture named ``name``.

        Raises:
            MegasynthError: no such mixture.
        """
        for m in self.mixtures:
            if m.name == name:
                return m
        raise MegasynthError(f"mixtures: unknown mixture {name!r} (known: {', '.join(m.name for m in self.mixtures)})")

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Each section validates itself; then the checks across sections. Raises :class:`MegasynthError`
        naming the dotted field."""
        self.corpora.validate("corpora")
        self.generation.validate("generation")
        self.tokenizer.validate("tokenizer")
        self.model.validate("model")
        self.train.validate("train")
        self.evaluation.validate("evaluation", self.eval_sets)
        _check_in_loop(self.evaluation, self.train)
        self.report.validate("report")
        self.collapse.validate("collapse")
        if self.generation.enabled and self.generation_source not in self.natural_sources:
            raise MegasynthError(f"generation.source: {self.generation_source!r} is not a corpora.train name")
        known_sources = set(self.natural_sources) | set(self.synthetic_sources)
        seen = set()
        for i, m in enumerate(self.mixtures):
            if m.name in seen:
                raise MegasynthError(f"mixtures[{i}].name: duplicate mixture name {m.name!r}")
            seen.add(m.name)
            if m.name.startswith(COLLAPSE_PREFIX):
                raise MegasynthError(f"mixtures[{i}].name: names starting with {COLLAPSE_PREFIX!r} are the "
                                     "recursive loop's (collapse)")
            m.validate(f"mixtures[{i}]", known_sources)
        if self.collapse.generations:
            base = next((m for m in self.mixtures if m.name == self.collapse.base_mixture), None)
            if base is None:
                raise MegasynthError(f"collapse.base_mixture: unknown mixture {self.collapse.base_mixture!r} "
                                     f"(known: {', '.join(m.name for m in self.mixtures)})")
            if base.synthetic_sources():
                raise MegasynthError(f"collapse.base_mixture: {base.name!r} has synthetic sources; generation 0 of "
                                     "the loop is trained on natural text")
            if self.tokenizer.type == "llama3":
                raise MegasynthError("collapse.generations: the loop exports each model with an HF tokenizer for "
                                     "vLLM; use tokenizer.type bpe or huggingface")


def _check_in_loop(evaluation: EvaluationConfig, train: TrainConfig) -> None:
    """Downstream tasks in the training loop run on the training ranks: the scorer's layouts only."""
    p = train.parallel
    if evaluation.in_loop and evaluation.tasks and (p.pipeline_model_parallel_size > 1 or p.sequence_parallel):
        raise MegasynthError("evaluation.in_loop: downstream tasks in the training loop need "
                             "train.parallel.pipeline_model_parallel_size 1 and no sequence_parallel (the scorer); "
                             "evaluate them after training (megasynth evaluate) instead")


RUN_LAYOUT_FIELDS = ("run_id", "mixture.name", "train.parallel", "train.checkpoint", "train.log_interval",
                     "train.num_workers", "train.peak_tflops", "evaluation.max_batch_tokens")
"""Fields of a :class:`RunConfig` that may change between attempts of a run: where it runs and what it
logs and saves, never its loss curve. Every other field is part of :meth:`RunConfig.identity`."""


@dataclass
class RunConfig(ConfigFile):
    """One training run, fully determined: everything :func:`megasynth.train.train_one` reads.

    Planned from a study by :func:`megasynth.study.runs.plan_runs`; written resolved to
    ``runs/<run_id>/run.yaml`` when the run starts; ``python -m megasynth.study.launch runs/<run_id>/run.yaml``
    trains exactly this run. A run directory whose ``run.yaml`` differs in an :meth:`identity` field is
    another run: :meth:`check_same_run` refuses it. ``RunConfig.from_yaml(path, overrides)`` reads a run file.
    """

    KIND = "run file"

    run_id: str
    """Directory name of the run (``runs/<run_id>/``); the mixture name for a study's default runs."""
    mixture: MixtureConfig
    """The data: named sources and their token shares (read from ``mixtures/<mixture.name>.json``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    eval_sets: list[str] = field(default_factory=list)
    """Held-out sets evaluated every ``train.eval_interval`` steps (``tokenized/<name>_text_document``)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """What the run evaluates besides the held-out loss (:meth:`EvaluationConfig.for_run`: downstream tasks
    only with ``in_loop``)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_study(cls, cfg: StudyConfig, mixture: str, run_id: Optional[str] = None) -> "RunConfig":
        """The run of mixture ``mixture`` with the study's model, train, tokenizer and eval sets (copies).

        Raises:
            MegasynthError: unknown mixture, or an invalid ``run_id``.
        """
        run = cls(run_id=run_id or mixture, mixture=copy.deepcopy(cfg.mixture(mixture)),
                  model=copy.deepcopy(cfg.model), train=copy.deepcopy(cfg.train),
                  tokenizer=copy.deepcopy(cfg.tokenizer), eval_sets=list(cfg.eval_sets),
                  evaluation=cfg.evaluation.for_run())
        run.validate()
        return run

    # ------------------------------------------------------------------ derived
    @property
    def synthetic_sources(self) -> list[str]:
        """Synthetic sources with a non-zero share in the mixture (results' ``synthetic_sources``)."""
        return self.mixture.synthetic_sources()

    @property
    def synthetic_ratio(self) -> float:
        """Share of the run's training tokens from synthetic sources (sum of their requested shares)."""
        total = sum(self.mixture.sources.values())
        return sum(self.mixture.sources[s] for s in self.synthetic_sources) / total if total else 0.0

    def identity(self) -> dict[str, Any]:
        """``{dotted field: value}`` of every field that determines the run's loss curve (all but
        :data:`RUN_LAYOUT_FIELDS`), in declaration order."""
        return {k: v for k, v in flatten(self, "").items()
                if not any(k == f or k.startswith(f + ".") for f in RUN_LAYOUT_FIELDS)}

    def check_same_run(self, saved: "RunConfig", where: str | Path) -> None:
        """Raise unless ``saved`` (the ``run.yaml`` at ``where``) describes this same run.

        Raises:
            MegasynthError: ``<where>: run 'x' was started with train.train_iters=100, now 200; ...``,
                naming the first :meth:`identity` field that differs.
        """
        old, new = saved.identity(), self.identity()
        for key in dict.fromkeys([*new, *old]):
            if old.get(key) != new.get(key):
                raise MegasynthError(
                    f"{where}: run {self.run_id!r} was started with {key}={old.get(key)!r}, now {new.get(key)!r}; "
                    f"give the new setting a new study_dir (or delete {Path(where).parent} to retrain)")

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Each section validates itself, plus the run id and the eval sets."""
        if not self.run_id or self.run_id in (".", "..") or "/" in self.run_id or "\\" in self.run_id:
            raise MegasynthError(f"run_id: {self.run_id!r} is not a directory name")
        self.mixture.validate("mixture")
        self.model.validate("model")
        self.train.validate("train")
        self.tokenizer.validate("tokenizer")
        if len(set(self.eval_sets)) != len(self.eval_sets):
            raise MegasynthError(f"eval_sets: duplicate name in {self.eval_sets}")
        self.evaluation.validate("evaluation", self.eval_sets)
        _check_in_loop(self.evaluation, self.train)
