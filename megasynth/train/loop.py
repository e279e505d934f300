"""The training loop on megatron-core: one run per mixture (the ``train`` stage).

Per run (``runs/<mix>/``), following Megatron-LM's ``pretrain_gpt.py`` with megatron-core parts:

1. data: the mixture's blend (``mixtures/<mix>.json``) → :func:`megasynth.data.datasets.build_gpt_datasets`
   with ``train_iters * global_batch_size`` samples; each eval set (``tokenized/<name>_text_document``)
   → ``eval_iters * micro_batch_size`` fixed samples (the same set at any DP size: each DP rank
   evaluates ``eval_iters / dp`` micro batches of it).
2. model: :func:`megasynth.model.builder.build_model` (local spec fp32 on CPU; TE spec bf16/fp8 on
   GPU), wrapped in ``Float16Module`` for bf16/fp16/fp8 and in megatron's ``DistributedDataParallel``.
3. steps: ``get_forward_backward_func()`` runs ``global_batch_size / (micro_batch_size * dp)`` micro
   batches per step (gradient accumulation), then megatron's optimizer (AdamW from
   ``get_megatron_optimizer``; decoupled weight decay on matrices only, gradient clipping at
   ``clip_grad``) and ``OptimizerParamScheduler`` (linear warmup over ``lr_warmup_iters`` steps, then
   ``lr_decay_style`` decay to ``min_lr`` at ``train_iters``).
4. every ``eval_interval`` steps and at the last step: validation loss on every eval set →
   ``evals.jsonl``; every step → ``metrics.jsonl``; TensorBoard in ``tb/``.
5. checkpoints (``dist_checkpointing``: model, optimizer, LR schedule, RNG, consumed samples) every
   ``save_interval`` steps, on SIGTERM/SIGUSR1 (``exit_signal_handler``) and at the end; then
   ``config.yaml``, ``summary.json`` and its completion marker ``summary.json.done``.

Parallelism (all megatron-core): ``init_parallel`` builds TP x PP x DP groups from the world size
(``data_parallel_size = world_size / (tp * pp)``); the model is this rank's pipeline stage, in
``virtual_pipeline_model_parallel_size`` chunks for the interleaved schedule; DDP overlaps the gradient
all-reduce (or reduce-scatter with the distributed optimizer) with backward when asked. Initial weights
do not depend on the layout (:func:`megasynth.model.builder.layout_independent_init_`), so DP=2, TP=2 and
PP=2 runs follow the one-process loss curve up to float reduction order.

Resume: a run whose marker exists is skipped; a run directory without it but with a checkpoint resumes
from its newest readable checkpoint (any TP/PP layout; bitwise the same losses on CPU with an unchanged
layout; damaged newer ones are skipped with a WARNING and moved to ``.attempt-N/``); one that never
recorded a checkpoint restarts from scratch with its old contents moved to ``.attempt-N/``; one whose
recorded checkpoints are all unreadable stops with an error (:func:`megasynth.train.checkpoint.resume_or_restart`).

Loss: mean token cross-entropy in nats over the tokens of the step (``loss_mask`` excludes padding).
Megatron tensors are sequence-first internally; the model takes ``tokens [b, s]`` and returns per-token
losses ``[b, s]`` when given ``labels``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from megasynth.utils import MegasynthError, atomic_path, is_done, mark_done, read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import StudyConfig
    from megasynth.study.layout import StudyLayout

logger = logging.getLogger("megasynth.train")


# --------------------------------------------------------------------------------------------------
# Mixture files
# --------------------------------------------------------------------------------------------------
def read_mixture(layout: "StudyLayout", name: str) -> dict:
    """Read ``mixtures/<name>.json`` (written by the ``mix`` stage) and check its blend.

    Returns:
        The mixture record with ``blend`` as Megatron's ``(prefixes, weights)`` under ``"_blend"``.

    Raises:
        MegasynthError: file missing or incomplete (no marker), malformed ``blend``.
    """
    path = layout.mixture(name)
    if not path.is_file() or not is_done(path):
        raise MegasynthError(f"{path}: mixture not found or incomplete (run the mix stage first)")
    rec = read_json(path)
    blend = rec.get("blend")
    if not isinstance(blend, list) or not blend:
        raise MegasynthError(f"{path}: 'blend' must be a non-empty list of [weight, prefix]")
    prefixes, weights = [], []
    for i, item in enumerate(blend):
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], (int, float))
                or not isinstance(item[1], str)):
            raise MegasynthError(f"{path}: blend[{i}] must be [weight, prefix], got {item!r}")
        weights.append(float(item[0]))
        prefixes.append(item[1])
    rec["_blend"] = (prefixes, weights)
    return rec


def synthetic_ratio(sources: dict[str, float], synthetic: list[str]) -> float:
    """Share of a mixture's tokens from synthetic styles (sum of their requested ratios)."""
    total = sum(sources.values())
    return sum(r for s, r in sources.items() if s in synthetic) / total if total else 0.0


# --------------------------------------------------------------------------------------------------
# Data iteration
# --------------------------------------------------------------------------------------------------
def _loader(dataset, micro_batch_size: int, first_sample: int, num_micro: int, dp_rank: int, dp_size: int,
            num_workers: int) -> Iterator[dict]:
    """Micro batches of ``dataset`` in Megatron's order: global micro batch ``k`` covers samples
    ``[first + k*mbs*dp, first + (k+1)*mbs*dp)``; rank ``r`` takes its ``r``-th slice of ``mbs``."""
    batches = []
    for k in range(num_micro):
        start = first_sample + k * micro_batch_size * dp_size + dp_rank * micro_batch_size
        batches.append(list(range(start, start + micro_batch_size)))
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                            persistent_workers=False))


def _to_device(batch: dict) -> dict:
    if torch.cuda.is_available():
        return {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of masked per-token losses, the token count, and a detached copy for logging.

    Returns ``(loss_sum, num_tokens, {"lm loss": [loss_sum, num_tokens]})``: megatron's schedule then
    divides ``loss_sum`` by ``num_tokens`` and by the number of micro batches *in place*, so the
    logged values are cloned first.
    """
    losses = output_tensor.float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses.view(-1) * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss.detach().clone(), num_tokens.detach().clone().float()])
    return loss, num_tokens, {"lm loss": report}


def _forward_step(data_iterator, model):
    """megatron-core ``forward_step_func``: ``tokens/labels/position_ids [b, s]`` → losses ``[b, s]``."""
    batch = _to_device(next(data_iterator))
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(_loss_func, batch["loss_mask"])



def _reduce_loss(outputs: list) -> float:
    """Mean loss per token over micro batches and data-parallel ranks, known on every rank.

    ``outputs`` are the schedule's ``{"lm loss": [loss_sum, tokens]}`` (non-empty only on the last
    pipeline stage); the sums are all-reduced over DP there and broadcast over the pipeline group.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    total = torch.stack([o["lm loss"] for o in outputs]).sum(0).float() if (last and outputs) else torch.zeros(2)
    if torch.cuda.is_available():
        total = total.cuda()
    if last and ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(total, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(total, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
    return float(total[0] / torch.clamp(total[1], min=1))


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def setup_model_and_optimizer(model_cfg, train_cfg, vocab_size: int, shape=None):
    """Build this rank's model chunks, megatron DDP wrappers, optimizer and lr scheduler of a run.

    Requires :func:`megasynth.model.builder.init_parallel` with the same TP/PP/VPP sizes. Weights are
    layout-independent (:func:`megasynth.model.builder.build_model_chunks`). bf16/fp16/fp8 models are
    wrapped in megatron's ``Float16Module`` (fp32 master weights in the optimizer), then each chunk in
    ``DistributedDataParallel`` (fp32 gradient buffers; ``overlap_grad_reduce`` overlaps the bucketed
    all-reduce — reduce-scatter with ``use_distributed_optimizer`` — with backward).

    Returns:
        ``(model_chunks, optimizer, scheduler)``: a list of DDP modules (one per virtual pipeline
        stage), megatron's AdamW optimizer (distributed or not), and the ``OptimizerParamScheduler``
        already at step 1 (step ``k`` trains with lr ``lr·k/lr_warmup_iters`` during warmup and reaches
        ``min_lr`` at ``train_iters``).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.transformer.module import Float16Module

    from megasynth.model import builder, cpu_compat

    m, t = model_cfg, train_cfg
    chunks = builder.build_model_chunks(m, t, vocab_size, shape)
    config = chunks[0].config
    if m.precision in ("bf16", "fp16", "fp8"):
        chunks = [Float16Module(c.config, c) for c in chunks]
    dist_opt = bool(getattr(t, "use_distributed_optimizer", False))
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=bool(getattr(t, "overlap_grad_reduce", False)),
        use_distributed_optimizer=dist_opt, overlap_param_gather=bool(getattr(t, "overlap_param_gather", False)))
    with cpu_compat.cpu_device_mode():
        chunks = [DistributedDataParallel(c.config, ddp_cfg, c, disable_bucketing=i > 0)
                  for i, c in enumerate(chunks)]
    single = len(chunks) == 1
    config.no_sync_func = chunks[0].no_sync if single else [c.no_sync for c in chunks]
    if ddp_cfg.overlap_grad_reduce:
        config.grad_sync_func = chunks[0].start_grad_sync if single else [c.start_grad_sync for c in chunks]
    config.finalize_model_grads_func = finalize_model_grads
    opt_cfg = OptimizerConfig(
        optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2, adam_eps=t.adam_eps, clip_grad=t.clip_grad,
        bf16=m.precision in ("bf16", "fp8"), fp16=m.precision == "fp16",
        params_dtype=config.params_dtype, use_distributed_optimizer=dist_opt)
    with cpu_compat.cpu_device_mode():
        optimizer = get_megatron_optimizer(opt_cfg, chunks)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=t.lr, min_lr=t.min_lr, lr_warmup_steps=t.lr_warmup_iters,
        lr_decay_steps=t.train_iters, lr_decay_style=t.lr_decay_style, start_wd=t.weight_decay,
        end_wd=t.weight_decay, wd_incr_steps=t.train_iters, wd_incr_style="constant")
    scheduler.step(increment=1)
    return chunks, optimizer, scheduler


def train_step(model, optimizer, scheduler, data_iterator, num_microbatches: int, seq_length: int,
               micro_batch_size: int) -> tuple[float, float | None, bool]:
    """One optimizer step over ``num_microbatches`` micro batches of ``data_iterator``.

    ``model`` is a module or the list of model chunks; with virtual pipelining ``data_iterator`` is a
    list (one iterator per chunk, same batches). Batches are dicts of ``tokens``, ``labels``,
    ``position_ids``, ``loss_mask`` ``[b, s]``.

    Returns:
        ``(loss, grad_norm, ok)``: mean token loss (nats) of the step (on every rank), gradient L2
        norm before clipping, False if the optimizer skipped the step (non-finite gradients).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megasynth.model import cpu_compat

    chunks = _as_list(model)
    for c in chunks:
        c.train()
    with cpu_compat.cpu_device_mode():
        for c in chunks:
            c.zero_grad_buffer()
        optimizer.zero_grad()
        outputs = get_forward_backward_func()(
            forward_step_func=_forward_step, data_iterator=data_iterator, model=chunks,
            num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
            forward_only=False)
        ok, grad_norm, _ = optimizer.step()
    if ok:
        scheduler.step(increment=1)
    return _reduce_loss(outputs), (float(grad_norm) if grad_norm is not None else None), bool(ok)


# --------------------------------------------------------------------------------------------------
# Signals (SLURM preemption / time limit)
# --------------------------------------------------------------------------------------------------
class TrainingInterrupted(MegasynthError):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint; rerunning resumes from it."""


class StopSignal:
    """Records SIGTERM/SIGUSR1 (Megatron-LM's ``--exit-signal-handler``) until :meth:`close`.

    :meth:`received` is collective (all ranks agree through an all-reduce), so every rank saves the
    checkpoint at the same step. Handlers are installed only in the main thread.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, enabled: bool = True):
        self.signum: int | None = None
        self.enabled = enabled
        self._previous: dict = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum
        logger.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

    def received(self) -> int | None:
        """The signal number if any rank got one (collective call), else None."""
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            if torch.cuda.is_available():
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def close(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous = {}


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------
def _resume_key(cfg: "StudyConfig", vocab_size: int) -> dict:
    """Fields that must be unchanged for a checkpoint to resume the same run (layout may change)."""
    t, m = cfg.train, cfg.model
    keys = ("seq_length", "global_batch_size", "train_iters", "lr", "min_lr", "lr_warmup_iters", "lr_decay_style",
            "weight_decay", "seed")
    return {"model.preset": m.preset, "model.precision": m.precision, "vocab_size": vocab_size,
            **{f"train.{k}": getattr(t, k) for k in keys}}


class _Run:
    """Model chunks, optimizer, scheduler and data of one run (built by :func:`train_one`)."""

    def __init__(self, cfg: "StudyConfig", layout: "StudyLayout", name: str, tokenizer, blend, run_dir: Path):
        import torch.distributed as dist
        from megatron.core import parallel_state

        from megasynth.data.datasets import build_gpt_datasets
        from megasynth.model import builder

        t, m = cfg.train, cfg.model
        self.cfg, self.name = cfg, name
        tp, pp = t.tensor_model_parallel_size, t.pipeline_model_parallel_size
        self.vpp = getattr(t, "virtual_pipeline_model_parallel_size", None)
        builder.init_parallel(tp, pp, seed=t.seed, virtual_pipeline_model_parallel_size=self.vpp)
        self.world_size = dist.get_world_size()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        if t.global_batch_size % (t.micro_batch_size * self.dp_size):
            raise MegasynthError(f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
                                 f"micro_batch_size * data-parallel size = {t.micro_batch_size * self.dp_size}")
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp_size)
        if self.vpp and self.num_micro % pp:
            raise MegasynthError(f"train.virtual_pipeline_model_parallel_size: the interleaved schedule needs the "
                                 f"{self.num_micro} micro batches per step to be a multiple of pp = {pp}")
        if t.eval_iters % self.dp_size:
            raise MegasynthError(f"train.eval_iters: must be a multiple of the data-parallel size {self.dp_size}, "
                                 f"got {t.eval_iters}")
        self.eval_micro = t.eval_iters // self.dp_size
        if self.vpp and self.eval_micro % pp:
            raise MegasynthError(f"train.eval_iters: the interleaved schedule needs eval_iters / dp to be a multiple "
                                 f"of pp = {pp}, got {t.eval_iters} / {self.dp_size}")
        self.tokens_per_step = t.global_batch_size * t.seq_length
        self._train_iter = None
        self.vocab_size = tokenizer.vocab_size

        # Data (built before the model so a bad prefix fails fast).
        cache = layout.root / "tokenized" / "cache"
        self.train_ds = build_gpt_datasets(blend, None, tokenizer, t.seq_length, t.train_iters * t.global_batch_size,
                                           t.seed, cache)
        self.eval_ds = {}
        n_eval = t.eval_iters * t.micro_batch_size
        for ev in cfg.eval_sets:
            self.eval_ds[ev] = build_gpt_datasets(None, str(layout.tokenized_prefix(ev)), tokenizer, t.seq_length,
                                                  n_eval, t.seed, cache)

        # Model, optimizer, schedule (initial weights: the same for every run and every layout).
        self.model, self.optimizer, self.scheduler = setup_model_and_optimizer(cfg.model, t, tokenizer.vocab_size)
        self.shape = builder.get_preset(m.preset)
        self.padded_vocab = builder.padded_vocab_size(tokenizer.vocab_size, tp)
        if tp * pp == 1:
            self.n_params, self.n_params_non_embedding = builder.count_params(self.model[0])
        else:  # each rank holds a shard: count from the shape (same formula; tests check they agree)
            self.n_params = self.shape.total_params(self.padded_vocab)
            self.n_params_non_embedding = self.shape.non_embedding_params()
        self.flops_per_token = self.shape.train_flops_per_token(t.seq_length, self.padded_vocab)

    def _iterators(self, dataset, first_sample: int, num_micro: int, num_workers: int):
        its = [_loader(dataset, self.cfg.train.micro_batch_size, first_sample, num_micro, self.dp_rank, self.dp_size,
                       num_workers) for _ in self.model]
        return its if len(its) > 1 else its[0]

    def train_step(self, step: int) -> tuple[float, float | None]:
        """One optimizer step (``step`` from 0, called in order); returns ``(loss, grad_norm)``."""
        t = self.cfg.train
        if self._train_iter is None:  # one loader for the whole run (workers start once)
            self._train_iter = self._iterators(self.train_ds, step * t.global_batch_size,
                                               (t.train_iters - step) * self.num_micro, t.num_workers)
        loss, grad_norm, ok = train_step(self.model, self.optimizer, self.scheduler, self._train_iter,
                                         self.num_micro, t.seq_length, t.micro_batch_size)
        if not ok:
            logger.warning("%s: step %d skipped (non-finite gradients)", self.name, step + 1)
        return loss, grad_norm

    def _sync_params(self) -> None:
        """With overlapped parameter all-gather, finish it before eval/save (Megatron-LM's pre-hook toggle)."""
        if getattr(self.cfg.train, "overlap_param_gather", False):
            for c in self.model:
                c.disable_forward_pre_hook()

    def _resume_hooks(self) -> None:
        if getattr(self.cfg.train, "overlap_param_gather", False):
            for c in self.model:
                c.enable_forward_pre_hook()

    @torch.no_grad()
    def evaluate(self, dataset) -> float:
        """Mean validation loss (nats/token) over the ``eval_iters * micro_batch_size`` fixed samples of ``dataset``."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from megasynth.model import cpu_compat

        t = self.cfg.train
        it = self._iterators(dataset, 0, self.eval_micro, 0)
        self._sync_params()
        for c in self.model:
            c.eval()
        try:
            with cpu_compat.cpu_device_mode():
                outputs = get_forward_backward_func()(
                    forward_step_func=_forward_step, data_iterator=it, model=self.model,
                    num_microbatches=self.eval_micro, seq_length=t.seq_length, micro_batch_size=t.micro_batch_size,
                    forward_only=True)
        finally:
            for c in self.model:
                c.train()
            self._resume_hooks()
        return _reduce_loss(outputs)

    def save(self, root: Path, step: int) -> Path:
        """Full checkpoint after ``step`` optimizer steps (collective)."""
        from megasynth.train.checkpoint import save_checkpoint

        t = self.cfg.train
        self._sync_params()
        try:
            return save_checkpoint(self.model, root, step, self.optimizer, self.scheduler, common={
                "consumed_samples": step * t.global_batch_size, "resume_key": _resume_key(self.cfg, self.vocab_size),
                "layout": self.layout}, keep_last=t.keep_last_checkpoints)
        finally:
            self._resume_hooks()

    @property
    def layout(self) -> dict:
        t = self.cfg.train
        return {"tp": t.tensor_model_parallel_size, "pp": t.pipeline_model_parallel_size, "dp": self.dp_size,
                "vpp": self.vpp}

    def load(self, path: Path) -> int:
        """Restore model, optimizer, scheduler, RNG (same layout) from checkpoint directory ``path``; return its step.

        Raises:
            MegasynthError: the checkpoint belongs to a run with different data/schedule/model settings.
        """
        from megasynth.train.checkpoint import load_checkpoint, read_common

        root = path.parent
        common = read_common(path)
        want = _resume_key(self.cfg, self.vocab_size)
        saved = common.get("resume_key", {})
        diff = [k for k in want if saved.get(k) != want[k]]
        if diff:
            k = diff[0]
            raise MegasynthError(f"{path}: saved with {k}={saved.get(k)!r}, now {want[k]!r}; delete "
                                 f"{root.parent} to restart this run")
        old = common.get("layout", {})
        same = (old.get("tp"), old.get("pp")) == (self.layout["tp"], self.layout["pp"])
        common = load_checkpoint(self.model, path, self.optimizer, self.scheduler, load_rng=same)
        step = int(common["iteration"])
        if int(common.get("consumed_samples", -1)) != step * self.cfg.train.global_batch_size:
            raise MegasynthError(f"{path}: consumed_samples {common.get('consumed_samples')} does not match "
                                 f"iteration {step} x global_batch_size")
        if not same:
            from megasynth.model import cpu_compat

            cpu_compat.manual_seed(self.cfg.train.seed + step)
            logger.info("%s: resharded %s -> %s; RNG re-seeded", self.name, old, self.layout)
        self._train_iter = None
        return step

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def train_one(cfg: "StudyConfig", layout: "StudyLayout", mixture_name: str) -> dict:
    """Train (resume, or skip if complete) the run of mixture ``mixture_name``; return its summary.

    Writes ``runs/<mix>/{config.yaml, tb/, checkpoints/, metrics.jsonl, evals.jsonl, summary.json}`` and
    marks ``summary.json`` done last. A run directory without the marker resumes from its newest readable
    full checkpoint (rows of ``metrics.jsonl``/``evals.jsonl`` after it are dropped) or, if it never
    recorded one, restarts with its old contents moved to ``.attempt-N/``; nothing is deleted
    (:func:`megasynth.train.checkpoint.resume_or_restart`). Call on every rank under ``torchrun``.

    Returns:
        The ``summary.json`` record: ``mixture``, ``preset``, ``n_params``, ``n_params_non_embedding``,
        ``vocab_size`` (tokenizer ids), ``train_tokens``, ``final_train_loss`` (nats/token),
        ``tokens_per_s`` (training tokens per second of optimizer steps), ``wall_s`` (this invocation plus
        the training seconds of steps before a resume), ``synthetic_ratio``; plus ``padded_vocab_size``,
        ``train_iters``, ``final_eval_loss`` (``{eval_set: loss}``), ``parallel`` (tp/pp/dp/vpp),
        ``tflops_per_device``, ``mfu`` (None without a peak), ``resumed_from`` (step or None).

    Raises:
        MegasynthError: unknown mixture, missing mixture/tokenized files, bad parallel sizes, a checkpoint
            of a run with different settings, recorded checkpoints none of which is readable.
        TrainingInterrupted: SIGTERM/SIGUSR1 arrived; a checkpoint was saved and a rerun resumes from it.
    """
    import torch.distributed as dist

    from megasynth.data.tokenizer import load_tokenizer
    from megasynth.train.checkpoint import resume_or_restart
    from megasynth.train.metrics import MetricsLogger, peak_tflops

    mixes = {mx.name: mx for mx in cfg.mixtures}
    if mixture_name not in mixes:
        raise MegasynthError(f"mixtures: unknown mixture {mixture_name!r} (known: {', '.join(mixes)})")
    run_dir = layout.run_dir(mixture_name)
    summary_path = run_dir / "summary.json"
    if is_done(summary_path):
        logger.info("%s: complete, skipping (%s)", mixture_name, summary_path)
        return read_json(summary_path)
    mixture = read_mixture(layout, mixture_name)
    t = cfg.train
    start = time.monotonic()
    ckpt_root = run_dir / "checkpoints"
    from megasynth.model import builder

    builder.init_parallel(t.tensor_model_parallel_size, t.pipeline_model_parallel_size, seed=t.seed,
                          virtual_pipeline_model_parallel_size=getattr(t, "virtual_pipeline_model_parallel_size", None))
    tokenizer = load_tokenizer(cfg.tokenizer, layout)
    run = _Run(cfg, layout, mixture_name, tokenizer, mixture["_blend"], run_dir)
    # Newest readable checkpoint (older ones if newer are damaged, never deleting any), or a fresh start
    # with the old contents of run_dir moved to run_dir/.attempt-N/ (megasynth.train.checkpoint).
    resumed = resume_or_restart(run_dir, run.load, mixture_name)
    resume, first = resumed is not None, resumed or 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        logger.info("%s: resuming from step %d (%s)", mixture_name, first, ckpt_root)
    logger.info("%s: %s, %d params (%d non-embedding), %d steps x %d tokens, %d micro batches/step, "
                "tp %d pp %d dp %d vpp %s", mixture_name, cfg.model.preset, run.n_params, run.n_params_non_embedding,
                t.train_iters, run.tokens_per_step, run.num_micro, run.layout["tp"], run.layout["pp"], run.dp_size,
                run.vpp)
    peak = peak_tflops(getattr(t, "peak_tflops", None))
    metrics = MetricsLogger(run_dir, mixture_name, t.train_iters, t.log_interval, enabled=_rank0(),
                            flops_per_token=run.flops_per_token, num_devices=run.world_size, peak_tflops=peak,
                            start_step=first)
    stop = StopSignal(enabled=getattr(t, "exit_signal_handler", True))
    loss, eval_losses = metrics.last_loss, metrics.last_eval_losses
    saved_at = first if resume else None
    try:
        for step in range(first + 1, t.train_iters + 1):
            t0 = time.monotonic()
            lr = run.lr  # the lr this step uses
            loss, grad_norm = run.train_step(step - 1)
            if not math.isfinite(loss):
                raise MegasynthError(f"{mixture_name}: training loss is {loss} at step {step} (try a lower train.lr)")
            consumed = step * run.tokens_per_step
            metrics.log_step(step, loss, lr, grad_norm, consumed, run.tokens_per_step, time.monotonic() - t0)
            if step % t.eval_interval == 0 or step == t.train_iters:
                for ev, ds in run.eval_ds.items():
                    eval_losses[ev] = run.evaluate(ds)
                    metrics.log_eval(step, consumed, ev, eval_losses[ev])
            if t.save_interval and step % t.save_interval == 0 and step != t.train_iters:
                run.save(ckpt_root, step)
                saved_at = step
            signum = stop.received() if stop.enabled else None
            if signum and step != t.train_iters:
                if saved_at != step:
                    run.save(ckpt_root, step)
                metrics.close()
                raise TrainingInterrupted(f"{mixture_name}: stopped by {signal.Signals(signum).name} after step "
                                          f"{step}/{t.train_iters}; checkpoint saved, rerun to resume")
        if saved_at != t.train_iters:
            run.save(ckpt_root, t.train_iters)
    finally:
        stop.close()
        metrics.close()

    summary = {
        "mixture": mixture_name,
        "preset": cfg.model.preset,
        "n_params": int(run.n_params),
        "n_params_non_embedding": int(run.n_params_non_embedding),
        "vocab_size": int(tokenizer.vocab_size),
        "padded_vocab_size": int(run.padded_vocab),
        "train_iters": t.train_iters,
        "train_tokens": t.train_iters * run.tokens_per_step,
        "final_train_loss": loss,
        "final_eval_loss": eval_losses,
        "tokens_per_s": round(metrics.train_tokens_per_s, 1),
        "tflops_per_device": round(metrics.tflops_per_device, 4),
        "mfu": None if metrics.mfu is None else round(metrics.mfu, 4),
        "wall_s": round(time.monotonic() - start + metrics.resumed_train_s, 2),
        "synthetic_ratio": synthetic_ratio(mixes[mixture_name].sources, cfg.synthetic_sources),
        "parallel": run.layout,
        "resumed_from": first if resume else None,
    }
    if _rank0():
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(cfg.to_yaml())
        write_json(summary_path, summary)
        mark_done(summary_path)
    if dist.is_initialized():
        dist.barrier()
    logger.info("%s: done in %.0fs, final loss %.4f, %.0f tokens/s", mixture_name, summary["wall_s"], loss,
                summary["tokens_per_s"])
    return summary


def run_train(cfg: "StudyConfig", layout: "StudyLayout") -> None:
    """The ``train`` stage: :func:`train_one` for every ``cfg.mixtures`` entry (complete runs skipped).

    Raises:
        MegasynthError: no mixtures, or as :func:`train_one`.
    """
    if not cfg.mixtures:
        raise MegasynthError("mixtures: no mixtures to train")
    for mx in cfg.mixtures:
        train_one(cfg, layout, mx.name)
