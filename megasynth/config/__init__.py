"""Dataclass configs for every stage of a study; YAML in, dotted overrides, validation (the base floor).

A study file is YAML whose top-level keys map to :class:`StudyConfig` fields. Unknown keys, wrong
types and out-of-range values raise :class:`~megasynth.utils.MegasynthError` with a one-line message
naming the dotted field, e.g. ``mixtures[2].sources.hq: ratio must be >= 0, got -0.1``.

Sections by role (after torchtitan's ``config/configs.py`` and OLMo-core's ``Config.validate``): each
section's ``validate(where)`` checks its own fields and names them by their dotted path;
:meth:`StudyConfig.validate` adds only the checks across sections. :class:`RunConfig` is one training
run, fully determined (what ``runs/<run_id>/run.yaml`` holds).

Example::

    cfg = StudyConfig.from_yaml("examples/quickstart.yaml", overrides=["train.train_iters=20"])
    cfg.train.optimizer.lr, cfg.train.parallel.tensor_model_parallel_size, cfg.train.checkpoint.save_interval

Modules: :mod:`.data` (corpora, generation, tokenizer, mixtures), :mod:`.training` (model, ``train`` and its
sections), :mod:`.sweep` (the ``sweep:`` grid and its executor; :mod:`.slurm` the SLURM executor's fields),
:mod:`.evaluation` (``evaluation``, ``collapse``), :mod:`.study` (:class:`StudyConfig`, :class:`RunConfig`),
:mod:`.loading` (YAML, overrides, typed build). Every name is importable from ``megasynth.config``.
"""

from megasynth.config.data import (COLLAPSE_PREFIX, GENERATOR_SEP, STYLES, SYNTHETIC_SOURCES, CorporaConfig,
                                   CorpusConfig, DecontaminationConfig, DedupConfig, GenerationConfig,
                                   GeneratorConfig, MixtureConfig, PromptConfig, SamplingConfig, ServerConfig,
                                   SynthLLMConfig, TokenizerConfig, is_synthetic_source, source_style)
from megasynth.config.evaluation import CollapseConfig, EvaluationConfig
from megasynth.config.loading import MOVED_KEYS, apply_override, read_yaml
from megasynth.config.slurm import SlurmExecutorConfig
from megasynth.config.study import BASE_RUN_ID, RUN_LAYOUT_FIELDS, BaseConfig, ReportConfig, RunConfig, StudyConfig
from megasynth.config.sweep import Budget, BudgetsConfig, ExecutorConfig, SweepConfig
from megasynth.config.training import (BASE_INIT, BranchConfig, CheckpointConfig, ModelConfig, OptimizerConfig,
                                       ParallelConfig, TrainConfig)

__all__ = ["STYLES", "SYNTHETIC_SOURCES", "GENERATOR_SEP", "COLLAPSE_PREFIX", "is_synthetic_source", "source_style",
           "EvaluationConfig", "CollapseConfig",
           "GeneratorConfig", "ServerConfig", "DedupConfig", "DecontaminationConfig", "CorpusConfig", "CorporaConfig", "SamplingConfig", "SynthLLMConfig",
           "GenerationConfig", "PromptConfig", "TokenizerConfig", "MixtureConfig", "ModelConfig", "OptimizerConfig", "ParallelConfig",
           "CheckpointConfig", "BranchConfig", "TrainConfig", "ReportConfig", "StudyConfig", "RunConfig", "BaseConfig",
           "BASE_RUN_ID", "BASE_INIT",
           "RUN_LAYOUT_FIELDS", "SweepConfig", "BudgetsConfig", "Budget", "ExecutorConfig", "SlurmExecutorConfig",
           "MOVED_KEYS", "apply_override", "read_yaml"]
