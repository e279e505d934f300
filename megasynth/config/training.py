"""Configs of a training run by role (after torchtitan's ``config/configs.py``): the model, and ``train`` with
its ``optimizer``, ``parallel`` and ``checkpoint`` sections. Each section's ``validate(where)`` names its dotted
fields; a component receives its own section (``model/builder.py`` the parallel one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from megasynth.utils import MegasynthError

BASE_INIT = "study:base"
"""``train.init_from`` of every run of a study with a ``base:`` section: the study's base model, resolved when the
run starts (:meth:`megasynth.layout.StudyLayout.base_checkpoint`), so that run files name no absolute path."""


@dataclass
class ModelConfig:
    preset: str = "llama3-tiny"
    """Named shape from :mod:`megasynth.model.presets` (``llama3-tiny``, ``llama3-100m`` … ``llama3-8b``)."""
    transformer_impl: Literal["local", "transformer_engine"] = "local"
    """megatron-core layer spec: ``local`` (pure PyTorch, CPU) or ``transformer_engine`` (GPU)."""
    precision: Literal["fp32", "bf16", "fp16", "fp8"] = "fp32"
    attention_backend: Literal["local", "sdpa"] = "local"
    """Core attention of the ``local`` spec: ``local`` is megatron-core's ``DotProductAttention`` (Q·Kᵀ scores,
    softmax and context as separate ops; ``[b, n, s, s]`` tensors kept for backward), ``sdpa`` is PyTorch's
    ``scaled_dot_product_attention`` (flash attention on GPU; :class:`megasynth.model.attention.SDPAttention`).
    The Transformer Engine spec picks its own fused attention, so ``sdpa`` needs ``transformer_impl: local``."""
    init_method_std: float = 0.02
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"
    """FP8 format through Transformer Engine (``hybrid``: E4M3 forward, E5M2 gradients); precision fp8 only."""
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"
    """FP8 scaling recipe (Megatron's ``--fp8-recipe``; ``tensorwise`` = current scaling; what TE offers)."""
    first_last_layers_bf16: bool = False
    """Keep the first and last ``num_layers_at_start_in_bf16``/``..._end_in_bf16`` layers in bf16 under fp8."""
    num_layers_at_start_in_bf16: int = 1
    num_layers_at_end_in_bf16: int = 1

    def validate(self, where: str = "model") -> None:
        """Known preset; fp8 only with Transformer Engine; raise :class:`MegasynthError` naming the field."""
        from megasynth.model.presets import PRESETS  # local import: presets import torch-free code only

        if self.preset not in PRESETS:
            raise MegasynthError(f"{where}.preset: unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        if self.attention_backend not in ("local", "sdpa"):
            raise MegasynthError(f"{where}.attention_backend: unknown {self.attention_backend!r} (known: local, sdpa)")
        if self.attention_backend == "sdpa" and self.transformer_impl != "local":
            raise MegasynthError(f"{where}.attention_backend: sdpa needs {where}.transformer_impl: local "
                                 "(Transformer Engine chooses its own fused attention)")
        if self.transformer_impl == "local" and self.precision == "fp8":
            raise MegasynthError(f"{where}.precision: fp8 needs {where}.transformer_impl: transformer_engine")
        if self.precision == "fp8" and self.first_last_layers_bf16 and self.fp8_recipe == "delayed":
            raise MegasynthError(f"{where}.first_last_layers_bf16: not supported with fp8_recipe: delayed "
                                 "(use tensorwise, mxfp8 or blockwise)")


@dataclass
class OptimizerConfig:
    """``train.optimizer``: megatron-core's AdamW and its ``OptimizerParamScheduler`` (learning-rate schedule)."""

    lr: float = 3e-3
    """Peak learning rate (reached after ``lr_warmup_iters`` steps)."""
    min_lr: float = 3e-4
    """Learning rate at ``train.train_iters`` after the decay."""
    lr_warmup_iters: int = 10
    """Steps of linear warmup from 0 to ``lr``."""
    lr_decay_style: Literal["cosine", "linear", "constant", "WSD"] = "cosine"
    """Decay from ``lr`` to ``min_lr`` after the warmup, ending at ``train.train_iters`` (megatron-core's
    ``OptimizerParamScheduler``). ``WSD`` (warmup-stable-decay, Hägele et al. 2024, arXiv 2405.18392): ``lr``
    until the last ``lr_wsd_decay_iters`` steps, then ``lr_wsd_decay_style`` down to ``min_lr``."""
    lr_wsd_decay_iters: Optional[int] = None
    """``WSD`` only: steps of the final decay (Megatron-LM's ``--lr-wsd-decay-iters``)."""
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "minus_sqrt"
    """``WSD`` only: shape of the final decay (Megatron-LM's ``--lr-wsd-decay-style``); ``minus_sqrt`` is the
    (1 − sqrt) cooldown that Hägele et al. 2024 (§3, Fig. 4) found best."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (not on norms)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Gradient clipping at this global L2 norm."""

    def validate(self, where: str = "train.optimizer") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise MegasynthError(f"{where}.min_lr: must satisfy 0 <= min_lr <= lr and lr > 0")
        if self.lr_warmup_iters < 0:
            raise MegasynthError(f"{where}.lr_warmup_iters: must be >= 0")
        if self.lr_decay_style == "WSD" and (self.lr_wsd_decay_iters is None or self.lr_wsd_decay_iters < 1):
            raise MegasynthError(f"{where}.lr_wsd_decay_iters: lr_decay_style WSD needs a decay of >= 1 steps")


@dataclass
class ParallelConfig:
    """``train.parallel``: how a run is laid out over devices (megatron-core parallel_state, DDP, memory).

    Nothing here changes the loss curve beyond float reduction order, so it may change between attempts of
    a run (``dist_checkpointing`` reshards on resume).
    """

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    """Model chunks per pipeline rank (interleaved 1F1B); layers must divide by pp * vpp."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state and fp32 master weights over data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient all-reduce/reduce-scatter with the backward pass."""
    overlap_param_gather: bool = False
    """With the distributed optimizer: overlap the parameter all-gather with the next forward."""
    sequence_parallel: bool = False
    """Shard norms/dropout activations along the sequence over TP ranks (needs tensor_model_parallel_size > 1)."""
    recompute_granularity: Optional[Literal["full", "selective"]] = None
    """Activation recomputation: ``selective`` (core attention) or ``full`` (whole layers); ``None`` off."""
    recompute_method: Optional[Literal["uniform", "block"]] = None
    """For ``full``: ``uniform`` (chunks of ``recompute_num_layers``) or ``block`` (first N layers per stage)."""
    recompute_num_layers: Optional[int] = None

    def validate(self, where: str = "train.parallel") -> None:
        """Range and compatibility checks; raise :class:`MegasynthError` naming the dotted field."""
        for fname in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, fname) <= 0:
                raise MegasynthError(f"{where}.{fname}: must be > 0")
        if self.virtual_pipeline_model_parallel_size is not None and (
                self.virtual_pipeline_model_parallel_size < 1 or self.pipeline_model_parallel_size < 2):
            raise MegasynthError(f"{where}.virtual_pipeline_model_parallel_size: must be >= 1 and needs "
                                 "pipeline_model_parallel_size >= 2")
        if self.sequence_parallel and self.tensor_model_parallel_size < 2:
            raise MegasynthError(f"{where}.sequence_parallel: needs tensor_model_parallel_size >= 2")
        if self.recompute_granularity == "full" and (self.recompute_method is None or not self.recompute_num_layers):
            raise MegasynthError(f"{where}.recompute_method: full recomputation needs recompute_method and "
                                 "recompute_num_layers")
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise MegasynthError(f"{where}.overlap_param_gather: needs use_distributed_optimizer: true")

    @property
    def model_parallel_size(self) -> int:
        """``tp * pp``: processes holding one copy of the model (the data-parallel size is world / this)."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size


@dataclass
class CheckpointConfig:
    """``train.checkpoint``: when a run saves ``dist_checkpointing`` checkpoints."""

    save_interval: Optional[int] = None
    """Steps between checkpoints; ``None`` saves only the final one."""
    keep_last_checkpoints: Optional[int] = None
    """After each save, delete the ``iter_*`` checkpoints older than the newest this many (>= 1); ``None``
    keeps all. The checkpoint ``latest_checkpointed_iteration.txt`` names and the newest readable one are
    never deleted (``megasynth.train.checkpoint.prune_checkpoints``)."""
    exit_signal_handler: bool = True
    """On SIGTERM/SIGUSR1, save a checkpoint after the current step and stop (SLURM preemption/time limit)."""
    save_steps: list[int] = field(default_factory=list)
    """Steps after which a checkpoint is also saved and then kept: ``keep_last_checkpoints`` never deletes
    them (the branch points of a WSD trunk, from which the sweep's cooldown branches start)."""

    def validate(self, where: str = "train.checkpoint") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        if self.save_interval is not None and self.save_interval <= 0:
            raise MegasynthError(f"{where}.save_interval: must be > 0 (null saves only the final checkpoint)")
        if any(s < 1 for s in self.save_steps):
            raise MegasynthError(f"{where}.save_steps: steps must be >= 1, got {self.save_steps}")
        if self.keep_last_checkpoints is not None and self.keep_last_checkpoints < 1:
            raise MegasynthError(f"{where}.keep_last_checkpoints: must be >= 1 (or null to keep all)")


@dataclass
class BranchConfig:
    """``train.branch_from``: start from another run's checkpoint rather than from step 0."""

    run_id: str
    """The run (in the same study) whose checkpoint this run starts from: ``runs/<run_id>/checkpoints/``."""
    step: int
    """Its checkpoint after this many steps (``iter_NNNNNNN``): the full state (model, optimizer, RNG,
    consumed samples) is loaded and training continues at step ``step + 1`` with this run's own LR schedule."""


@dataclass
class TrainConfig:
    """``train``: batch, budget and evaluation of a run, with its ``optimizer``, ``parallel`` and
    ``checkpoint`` sections."""

    seq_length: int = 256
    """Tokens per sample."""
    micro_batch_size: int = 4
    """Samples per micro batch per data-parallel rank."""
    global_batch_size: int = 16
    """Samples per optimizer step across data-parallel ranks (gradient accumulation fills the gap)."""
    train_iters: int = 100
    """Optimizer steps."""
    eval_interval: int = 25
    """Evaluate every this many steps (and at the last step); each evaluation is one budget row."""
    eval_iters: Union[int, Literal["all"]] = 8
    """Held-out data per evaluation per eval set: an integer = that many micro batches of ``seq_length``-token
    samples (the same fixed samples at every evaluation); ``all`` = every document of the set once
    (``evaluation.max_documents`` caps them), each scored in windows of ``seq_length`` tokens
    (:mod:`megasynth.evaluation.heldout`; needs ``parallel.pipeline_model_parallel_size: 1`` and no
    ``sequence_parallel``)."""
    log_interval: int = 5
    """Console line every this many steps (``metrics.jsonl`` gets every step)."""
    seed: int = 1234
    """Seed of the initial weights, data order and RNG states."""
    num_workers: int = 0
    """DataLoader workers."""
    peak_tflops: Optional[float] = None
    """Peak dense TFLOP/s per device for MFU; ``None`` looks the GPU up (H100/H200/A100), no MFU on CPU."""
    init_from: Optional[str] = None
    """Continued pre-training: a megatron checkpoint (a root with ``latest_checkpointed_iteration.txt`` or an
    ``iter_NNNNNNN`` directory, e.g. from ``tools/convert_checkpoint.py import``) whose model weights start
    the run, at any TP/PP. Only the weights are read: the optimizer state is fresh and the LR schedule
    (``optimizer.lr``, ``optimizer.lr_warmup_iters``, decay) starts at step 0. Its architecture and tensor
    shapes must match ``model.preset`` and its vocabulary the tokenizer. ``None``: layout-independent random
    init. ``study:base`` (set by a study's ``base:`` section, not by hand): the study's base model."""
    data_samples: Optional[int] = None
    """Samples the training dataset is built for (megatron-core's shuffle depends on it); the run reads its
    first ``train_iters · global_batch_size``. ``None``: exactly those. A WSD branch sets its trunk's count,
    so it reads the trunk's data in the trunk's order."""
    branch_from: Optional[BranchConfig] = None
    """Start from step ``branch_from.step`` of run ``branch_from.run_id`` (full state) instead of step 0: a WSD
    cooldown branch. Before that step, that run's LR schedule must equal this run's (checked when it starts)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self, where: str = "train") -> None:
        """Check this section and its sections; raise :class:`MegasynthError` naming the dotted field."""
        for fname in ("seq_length", "micro_batch_size", "global_batch_size", "train_iters", "eval_interval",
                      "log_interval"):
            if getattr(self, fname) <= 0:
                raise MegasynthError(f"{where}.{fname}: must be > 0")
        if self.eval_iters != "all" and (isinstance(self.eval_iters, bool) or not isinstance(self.eval_iters, int)
                                         or self.eval_iters <= 0):
            raise MegasynthError(f"{where}.eval_iters: must be an integer > 0 or 'all', got {self.eval_iters!r}")
        if self.eval_documents and (self.parallel.pipeline_model_parallel_size > 1 or self.parallel.sequence_parallel):
            raise MegasynthError(f"{where}.eval_iters: 'all' (documents) needs {where}.parallel."
                                 "pipeline_model_parallel_size 1 and no sequence_parallel (the document scorer)")
        if self.global_batch_size % self.micro_batch_size:
            raise MegasynthError(f"{where}.global_batch_size: must be a multiple of {where}.micro_batch_size")
        if self.num_workers < 0:
            raise MegasynthError(f"{where}.num_workers: must be >= 0")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise MegasynthError(f"{where}.peak_tflops: must be > 0")
        if self.init_from is not None and self.init_from != BASE_INIT and not Path(self.init_from).is_dir():
            raise MegasynthError(f"{where}.init_from: checkpoint directory not found: {self.init_from}")
        self.optimizer.validate(f"{where}.optimizer")
        self.parallel.validate(f"{where}.parallel")
        self.checkpoint.validate(f"{where}.checkpoint")
        if self.optimizer.lr_warmup_iters >= self.train_iters:
            raise MegasynthError(f"{where}.optimizer.lr_warmup_iters: must be in [0, {where}.train_iters)")
        o = self.optimizer
        if o.lr_decay_style == "WSD" and o.lr_wsd_decay_iters > self.train_iters - o.lr_warmup_iters:
            raise MegasynthError(f"{where}.optimizer.lr_wsd_decay_iters: {o.lr_wsd_decay_iters} is longer than "
                                 f"train_iters - lr_warmup_iters = {self.train_iters - o.lr_warmup_iters}")
        if self.data_samples is not None and self.data_samples < self.train_samples:
            raise MegasynthError(f"{where}.data_samples: {self.data_samples} is fewer than the run's "
                                 f"train_iters * global_batch_size = {self.train_samples} samples")
        if self.branch_from is not None:
            b = self.branch_from
            if not b.run_id or "/" in b.run_id or b.run_id in (".", ".."):
                raise MegasynthError(f"{where}.branch_from.run_id: {b.run_id!r} is not a run id")
            if not 1 <= b.step < self.train_iters:
                raise MegasynthError(f"{where}.branch_from.step: must be in [1, {where}.train_iters), got {b.step}")
            if self.init_from is not None:
                raise MegasynthError(f"{where}.branch_from: a branch cannot also have {where}.init_from")
        if any(s >= self.train_iters for s in self.checkpoint.save_steps):
            raise MegasynthError(f"{where}.checkpoint.save_steps: steps must be < train_iters ({self.train_iters}); "
                                 "the final checkpoint is always saved")

    @property
    def eval_documents(self) -> bool:
        """Whether evaluations score every held-out document (``eval_iters: all``) rather than a sample."""
        return self.eval_iters == "all"

    @property
    def tokens_per_step(self) -> int:
        """Training tokens per optimizer step (``global_batch_size * seq_length``)."""
        return self.global_batch_size * self.seq_length

    @property
    def train_samples(self) -> int:
        """Training samples of the whole run (``train_iters * global_batch_size``)."""
        return self.train_iters * self.global_batch_size

    @property
    def dataset_samples(self) -> int:
        """Samples the training dataset is built for: ``data_samples`` or ``train_samples``."""
        return self.train_samples if self.data_samples is None else self.data_samples

    @property
    def train_tokens(self) -> int:
        """Training tokens of the whole run (D of the scaling laws)."""
        return self.train_iters * self.tokens_per_step
