"""A whole study (:class:`StudyConfig`) and one training run of it (:class:`RunConfig`); checks across sections."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from megasynth.config.data import (COLLAPSE_PREFIX, SYNTHLLM_LEVEL_SOURCES, CorporaConfig, DecontaminationConfig,
                                   GenerationConfig, MixtureConfig, TokenizerConfig)
from megasynth.config.evaluation import CollapseConfig, EvaluationConfig
from megasynth.config.loading import ConfigFile, flatten
from megasynth.config.sweep import NATURAL, SweepConfig
from megasynth.config.training import ModelConfig, TrainConfig
from megasynth.utils import MegasynthError

BASE_RUN_ID = "base"
"""Run id of a base model trained in the study (``base.mixture``): ``runs/base/``."""


@dataclass
class BaseConfig:
    """``base``: the pretrained model every run of the study continues from (continued pre-training, SynthLLM's
    setting: Qin et al. 2025 train Llama-3 checkpoints further on synthetic data). Every planned run (a sweep's
    WSD trunks; their branches inherit it) starts from its weights with a fresh optimizer and its own LR schedule
    (``train.init_from`` is set to ``study:base``). Either:

    - ``mixture`` + ``train_iters``: the train stage first trains run ``base`` on that mixture from random init
      (``model.preset``, the study's ``train`` settings with ``train_iters`` steps; an ordinary run in results);
    - ``hf_model``: a local Hugging Face Llama directory, imported once by the train stage into
      ``base/megatron/`` (:func:`megasynth.model.convert.import_hf`; its shapes must be ``model.preset``'s).
    """

    mixture: Optional[str] = None
    """A mixture of ``mixtures:`` to train the base model on (natural text)."""
    train_iters: Optional[int] = None
    """Steps of the base run (with ``mixture``)."""
    hf_model: Optional[str] = None
    """A local HF Llama directory (``config.json``, safetensors); checked when the train stage imports it."""
    lr: Optional[float] = None
    """Peak LR of the base run (``None``: ``train.optimizer.lr``, which the continued-training runs use)."""
    min_lr: Optional[float] = None
    """Final LR of the base run (``None``: ``train.optimizer.min_lr``)."""

    def validate(self, where: str = "base") -> None:
        """Exactly one of ``mixture`` and ``hf_model``; ``train_iters`` >= 1 with ``mixture`` only."""
        if (self.mixture is None) == (self.hf_model is None):
            raise MegasynthError(f"{where}: give either mixture (with train_iters) or hf_model")
        if self.mixture is not None and (isinstance(self.train_iters, bool) or not isinstance(self.train_iters, int)
                                         or self.train_iters < 1):
            raise MegasynthError(f"{where}.train_iters: must be an integer >= 1 with {where}.mixture, "
                                 f"got {self.train_iters!r}")
        for f in ("train_iters", "lr", "min_lr"):
            if self.hf_model is not None and getattr(self, f) is not None:
                raise MegasynthError(f"{where}.{f}: only with {where}.mixture (an imported hf_model is not trained)")
        for f in ("lr", "min_lr"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise MegasynthError(f"{where}.{f}: must be a number >= 0, got {v!r}")


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
    schedule_complete_only: bool = True
    """Fit only the evaluations at the end of a run's schedule (``schedule_complete`` in ``results.csv``): a
    budget point where the LR had not yet decayed overstates the loss of a run of that budget (Hoffmann et al.
    2022 §3; Hägele et al. 2024). ``false``: fit every evaluation."""
    plateau_gain: float = 0.01
    """Continued-training section (:mod:`megasynth.analysis.cpt_laws`): the predicted gain per doubling of D (in
    units of the metric: bits per byte, or error as a fraction) below which a fitted curve counts as on its
    plateau; the section reports the tokens at which each law gets there."""

    def validate(self, where: str = "report") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        if self.bootstrap < 0:
            raise MegasynthError(f"{where}.bootstrap: must be >= 0")
        if not 0 < self.ci_level < 1:
            raise MegasynthError(f"{where}.ci_level: must be in (0, 1), got {self.ci_level}")
        if self.huber_delta <= 0:
            raise MegasynthError(f"{where}.huber_delta: must be > 0")
        if isinstance(self.plateau_gain, bool) or not isinstance(self.plateau_gain, (int, float)) \
                or not self.plateau_gain > 0:
            raise MegasynthError(f"{where}.plateau_gain: must be > 0, got {self.plateau_gain!r}")


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
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mixtures: list[MixtureConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    sweep: Optional[SweepConfig] = None
    """The experiment grid (presets × budgets × mixtures × seeds, :mod:`megasynth.config.sweep`); ``None``: one
    run per mixture with the study's ``model`` and ``train``."""
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    base: Optional[BaseConfig] = None
    """The pretrained model every run continues from (:class:`BaseConfig`); ``None``: runs start from random init
    (or ``train.init_from``)."""

    # ------------------------------------------------------------------ derived
    @property
    def generation_source(self) -> str:
        return self.generation.source or (self.corpora.train[0].name if self.corpora.train else "")

    @property
    def natural_sources(self) -> list[str]:
        return [c.name for c in self.corpora.train]

    @property
    def synthetic_sources(self) -> list[str]:
        """Synthetic source names: every style × generator (``hq``, or ``hq@<generator>`` with several
        generators; :meth:`GenerationConfig.style_sources`), then ``synthllm`` if enabled."""
        if not self.generation.enabled:
            return []
        s = self.generation.synthllm
        return ([name for name, _, _ in self.generation.style_sources()]
                + (["synthllm"] if s.enabled else []) + (list(SYNTHLLM_LEVEL_SOURCES) if s.enabled and s.level_sources
                                                         else []))

    @property
    def training_sources(self) -> list[str]:
        """Every source a mixture may train on: natural corpora, then synthetic sources."""
        return self.natural_sources + self.synthetic_sources

    @property
    def decontaminates(self) -> bool:
        """Whether training sources are decontaminated against the eval sets (the ``decontaminate`` stage)."""
        return self.decontamination.enabled and bool(self.eval_sets)

    @property
    def eval_sets(self) -> list[str]:
        return [c.name for c in self.corpora.eval]

    def mixture(self, name: str) -> MixtureConfig:
        """The mixture named ``name`` (of ``mixtures:`` or of the sweep's ratio grids).

        Raises:
            MegasynthError: no such mixture.
        """
        for m in self.all_mixtures:
            if m.name == name:
                return m
        raise MegasynthError(f"mixtures: unknown mixture {name!r} (known: "
                             f"{', '.join(m.name for m in self.all_mixtures)})")

    def natural_shares(self) -> dict[str, float]:
        """Shares of the natural corpora in all-natural text: the mixture named ``natural`` if the study has
        one, else all of the one natural corpus.

        Raises:
            MegasynthError: several natural corpora and no ``natural`` mixture to give their shares.
        """
        for m in self.mixtures:
            if m.name == NATURAL:
                return dict(m.sources)
        if len(self.natural_sources) == 1:
            return {self.natural_sources[0]: 1.0}
        raise MegasynthError(f"sweep.ratios: the study has several natural corpora ({', '.join(self.natural_sources)}): "
                             f"add a mixture named {NATURAL!r} to give their shares in the natural part")

    @property
    def grid_mixtures(self) -> list[MixtureConfig]:
        """The mixtures of the sweep's ratio grids (``<source>@<ratio>``, ``natural``); ``[]`` without a sweep."""
        if self.sweep is None or not self.sweep.ratios:
            return []
        return self.sweep.ratio_mixtures(self.natural_shares())

    @property
    def all_mixtures(self) -> list[MixtureConfig]:
        """``mixtures:`` then the ratio-grid mixtures they do not already hold (by name)."""
        named = {m.name for m in self.mixtures}
        return [*self.mixtures, *(m for m in self.grid_mixtures if m.name not in named)]

    @property
    def run_mixtures(self) -> list[MixtureConfig]:
        """The mixtures the study trains (and the ``mix`` stage writes): every one of ``mixtures:`` without a
        sweep, or a sweep without ratios and named mixtures; else the sweep's named mixtures and ratio grids."""
        if self.sweep is None or not (self.sweep.ratios or self.sweep.mixtures):
            return list(self.mixtures)
        chosen = [self.mixture(n) for n in self.sweep.mixtures]
        seen = {m.name for m in chosen}
        return chosen + [self.mixture(m.name) for m in self.grid_mixtures if m.name not in seen]

    @property
    def written_mixtures(self) -> list[MixtureConfig]:
        """The mixtures the ``mix`` stage writes: :attr:`run_mixtures`, and the base run's (``base.mixture``)."""
        out = self.run_mixtures
        if self.base is not None and self.base.mixture and self.base.mixture not in {m.name for m in out}:
            out.append(self.mixture(self.base.mixture))
        return out

    def mixture_train_samples(self, name: str) -> int:
        """The most training samples any run of mixture ``name`` reads (a WSD trunk's, or the largest budget's)."""
        base = (self.base.train_iters * self.train.global_batch_size
                if self.base is not None and self.base.mixture == name else 0)
        if self.sweep is None:
            return max(self.train.train_samples, base)
        if self.sweep.ratios or self.sweep.mixtures:
            if name not in {m.name for m in [*map(self.mixture, self.sweep.mixtures), *self.grid_mixtures]}:
                return base or self.train.train_samples  # only the base run reads it
        return max(base, max(b.train_iters for p in (self.sweep.presets or [self.model.preset])
                             for b in self.sweep.budgets.for_preset(p, self.train)) * self.train.global_batch_size)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Each section validates itself; then the checks across sections. Raises :class:`MegasynthError`
        naming the dotted field."""
        self.corpora.validate("corpora")
        self.generation.validate("generation")
        self.decontamination.validate("decontamination")
        self.tokenizer.validate("tokenizer")
        self.model.validate("model")
        self.train.validate("train")
        self.evaluation.validate("evaluation", self.eval_sets)
        _check_in_loop(self.evaluation, self.train)
        self.report.validate("report")
        self.collapse.validate("collapse")
        if self.generation.enabled and self.generation_source not in self.natural_sources:
            raise MegasynthError(f"generation.source: {self.generation_source!r} is not a corpora.train name")
        named: dict[str, str] = {}
        for kind, names in (("corpora", self.natural_sources + self.eval_sets),
                            ("generation", self.synthetic_sources)):
            for n in names:
                if n in named:
                    raise MegasynthError(f"{kind}: source name {n!r} used twice (also in {named[n]})")
                named[n] = kind
        known_sources = set(self.natural_sources) | set(self.synthetic_sources)
        aliases = self.generation.source_aliases() if self.generation.enabled else {}
        seen = set()
        for i, m in enumerate(self.mixtures):
            if m.name in seen:
                raise MegasynthError(f"mixtures[{i}].name: duplicate mixture name {m.name!r}")
            seen.add(m.name)
            if any(a in m.sources for a in aliases):  # hq@<the one generator> is the source hq
                renamed: dict[str, float] = {}
                for src, r in m.sources.items():
                    key = aliases.get(src, src)
                    if key in renamed:
                        raise MegasynthError(f"mixtures[{i}].sources.{src}: the same source as {key!r}, listed twice")
                    renamed[key] = r
                m.sources = renamed
            if m.name.startswith(COLLAPSE_PREFIX):
                raise MegasynthError(f"mixtures[{i}].name: names starting with {COLLAPSE_PREFIX!r} are the "
                                     "recursive loop's (collapse)")
            m.validate(f"mixtures[{i}]", known_sources)
        if self.sweep is not None:
            self.sweep.validate("sweep", synthetic=self.synthetic_sources, natural=self.natural_sources,
                                mixtures=[m.name for m in self.mixtures], default_preset=self.model.preset,
                                train=self.train)
            named = {m.name: m for m in self.mixtures}
            for m in self.grid_mixtures:
                m.validate(f"sweep.ratios ({m.name})", known_sources)
                if m.name in named and dict(named[m.name].sources) != dict(m.sources):
                    raise MegasynthError(f"sweep.ratios: the grid's mixture {m.name!r} {m.sources} differs from "
                                         f"mixtures: {m.name} {named[m.name].sources}")
        if self.base is not None:
            self._check_base()
        if self.evaluation.math_tasks:
            self._check_vllm_servable("evaluation.math_tasks: the evaluate stage samples each final checkpoint "
                                      "with vLLM")
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


    def _check_base(self) -> None:
        """``base``: valid, a named mixture, no ``train.init_from`` of its own, one preset (the base's)."""
        b = self.base
        b.validate("base")
        if self.train.init_from is not None:
            raise MegasynthError("train.init_from: set by the base section (study:base); remove one of them")
        if b.mixture is not None:
            if b.mixture not in {m.name for m in self.mixtures}:
                raise MegasynthError(f"base.mixture: unknown mixture {b.mixture!r} (known: "
                                     f"{', '.join(m.name for m in self.mixtures)})")
            if self.train.optimizer.lr_warmup_iters >= b.train_iters:
                raise MegasynthError(f"base.train_iters: must exceed train.optimizer.lr_warmup_iters "
                                     f"({self.train.optimizer.lr_warmup_iters})")
        for i, p in enumerate(self.sweep.presets if self.sweep is not None else []):
            if p != self.model.preset:
                raise MegasynthError(f"sweep.presets[{i}]: {p!r}, but every run continues from the base model, a "
                                     f"{self.model.preset!r} (model.preset)")

    def _check_vllm_servable(self, why: str) -> None:
        """Every preset of the study (``model.preset``, ``sweep.presets``) has a head size vLLM serves, and the
        tokenizer is an HF directory an exported model can carry (``bpe`` or ``huggingface``)."""
        from megasynth.model.presets import check_vllm_head_dim

        check_vllm_head_dim(self.model.preset, "model.preset", why)
        for i, p in enumerate(self.sweep.presets if self.sweep is not None else []):
            check_vllm_head_dim(p, f"sweep.presets[{i}]", why)
        if self.tokenizer.type == "llama3" and not (self.base is not None and self.base.hf_model):
            raise MegasynthError(f"tokenizer.type: llama3 (tiktoken) is no HF tokenizer directory for vLLM; use bpe or "
                                 f"huggingface, or a base.hf_model whose tokenizer files the exports carry ({why})")


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
    def schedule(self) -> str:
        """The LR schedule's name in results (``cosine``, ``linear``, ``constant``, ``wsd``)."""
        return self.train.optimizer.lr_decay_style.lower()

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
