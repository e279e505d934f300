"""One training run on megatron-core (:func:`train_one`), and the ``train`` stage over a list of runs.

A run is a :class:`~megasynth.config.RunConfig` (planned from a study by
:func:`megasynth.study.runs.plan_runs`); its files are ``runs/<run_id>/`` (:class:`~megasynth.layout.RunLayout`).
Following Megatron-LM's ``pretrain_gpt.py`` with megatron-core parts:

1. data: the mixture's blend (``mixtures/<mix>.json``) → :func:`megasynth.data.datasets.build_gpt_datasets`
   with ``train_iters * global_batch_size`` samples; each eval set (``tokenized/<name>_text_document``)
   → ``eval_iters * micro_batch_size`` fixed samples (the same set at any DP size: each DP rank
   evaluates ``eval_iters / dp`` micro batches of it), or its whole documents with ``eval_iters: all``.
2. model, optimizer, schedule and steps: :mod:`megasynth.train.step`.
3. every ``eval_interval`` steps and at the last step: held-out loss and bits per byte of every eval set, and
   the in-loop downstream tasks → ``evals.jsonl``; at the last step per-token losses → ``token_losses/``
   (the :class:`~megasynth.train.evaluator.EvaluatorCallback`, a hook of the loop); every step →
   ``metrics.jsonl``; TensorBoard in ``tb/`` (:mod:`megasynth.train.metrics`).
4. checkpoints (``dist_checkpointing``: model, optimizer, LR schedule, RNG, consumed samples) every
   ``train.checkpoint.save_interval`` steps, on SIGTERM/SIGUSR1 (``exit_signal_handler``,
   :mod:`megasynth.train.signals`) and at the end; then ``summary.json`` and its marker ``summary.json.done``.

Parallelism (all megatron-core): ``init_parallel`` builds TP x PP x DP groups from the world size
(``data_parallel_size = world_size / (tp * pp)``); the model is this rank's pipeline stage, in
``virtual_pipeline_model_parallel_size`` chunks for the interleaved schedule; DDP overlaps the gradient
all-reduce (or reduce-scatter with the distributed optimizer) with backward when asked. Initial weights
do not depend on the layout (:func:`megasynth.model.builder.layout_independent_init_`), so DP=2, TP=2 and
PP=2 runs follow the one-process loss curve up to float reduction order.

Identity: ``run.yaml`` is written when the run starts. A run directory whose ``run.yaml`` differs in a field
that changes the loss curve (:meth:`RunConfig.identity`) is refused with the field named, complete or not;
the parallel layout, checkpoint interval and logging may change between attempts.

Resume: a run whose marker exists is skipped; a run directory without it but with a checkpoint resumes
from its newest readable checkpoint (any TP/PP layout; bitwise the same losses on CPU with an unchanged
layout; damaged newer ones are skipped with a WARNING and moved to ``.attempt-N/``); one that never
recorded a checkpoint restarts from scratch with its old contents moved to ``.attempt-N/``; one whose
recorded checkpoints are all unreadable stops with an error (:func:`megasynth.train.checkpoint.resume_or_restart`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from megasynth.config import RunConfig
from megasynth.layout import StudyLayout
from megasynth.train.record import check_run_dir
from megasynth.train.signals import StopSignal, TrainingInterrupted
from megasynth.train.evaluator import EvaluatorCallback, check_eval_sets
from megasynth.train.step import eval_sums, loader, setup_model_and_optimizer, train_step
from megasynth.utils import MegasynthError, atomic_path, mark_done, read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.data.tokenizer import MegasynthTokenizer

logger = logging.getLogger("megasynth.train")


def _resume_key(run: RunConfig, vocab_size: int) -> dict:
    """Fields that must be unchanged for a checkpoint to resume the same run (layout may change)."""
    t, o, m = run.train, run.train.optimizer, run.model
    return {"model.preset": m.preset, "model.precision": m.precision, "vocab_size": vocab_size,
            **{f"train.{k}": getattr(t, k) for k in ("seq_length", "global_batch_size", "train_iters")},
            **{f"train.optimizer.{k}": getattr(o, k) for k in ("lr", "min_lr", "lr_warmup_iters", "lr_decay_style",
                                                                "weight_decay")},
            "train.seed": t.seed, "train.init_from": t.init_from}


class _Run:
    """Model chunks, optimizer, scheduler and data of one run (built by :func:`train_one`)."""

    def __init__(self, run: RunConfig, layout: StudyLayout, tokenizer: "MegasynthTokenizer", blend):
        import torch.distributed as dist
        from megatron.core import parallel_state

        from megasynth.data.datasets import build_gpt_datasets
        from megasynth.model import builder

        t, p = run.train, run.train.parallel
        self.run, self.name = run, run.run_id
        tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
        self.vpp = p.virtual_pipeline_model_parallel_size
        builder.init_parallel(tp, pp, seed=t.seed, virtual_pipeline_model_parallel_size=self.vpp)
        self.world_size = dist.get_world_size()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        if t.global_batch_size % (t.micro_batch_size * self.dp_size):
            raise MegasynthError(f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
                                 f"micro_batch_size * data-parallel size = {t.micro_batch_size * self.dp_size}")
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp_size)
        if self.vpp and self.num_micro % pp:
            raise MegasynthError(f"train.parallel.virtual_pipeline_model_parallel_size: the interleaved schedule "
                                 f"needs the {self.num_micro} micro batches per step to be a multiple of pp = {pp}")
        if not t.eval_documents and t.eval_iters % self.dp_size:
            raise MegasynthError(f"train.eval_iters: must be a multiple of the data-parallel size {self.dp_size}, "
                                 f"got {t.eval_iters}")
        self.eval_micro = 0 if t.eval_documents else t.eval_iters // self.dp_size
        if self.vpp and self.eval_micro % pp:
            raise MegasynthError(f"train.eval_iters: the interleaved schedule needs eval_iters / dp to be a multiple "
                                 f"of pp = {pp}, got {t.eval_iters} / {self.dp_size}")
        self.tokens_per_step = t.tokens_per_step
        self._train_iter = None
        self.vocab_size = tokenizer.vocab_size

        # Data (built before the model so a bad prefix fails fast).
        cache = layout.tokenized_cache
        self.train_ds = build_gpt_datasets(blend, None, tokenizer, t.seq_length, t.train_samples, t.seed, cache)
        check_eval_sets(run, layout)
        self.eval_ds = {}  # fixed samples of each eval set (none when evaluations score whole documents)
        for ev in ([] if t.eval_documents else run.eval_sets):
            self.eval_ds[ev] = build_gpt_datasets(None, str(layout.tokenized_prefix(ev)), tokenizer, t.seq_length,
                                                  t.eval_iters * t.micro_batch_size, t.seed, cache)

        # Model, optimizer, schedule (initial weights: the same for every run and every layout).
        self.model, self.optimizer, self.scheduler = setup_model_and_optimizer(run.model, t, tokenizer.vocab_size)
        self.shape = builder.get_preset(run.model.preset)
        self.padded_vocab = builder.padded_vocab_size(tokenizer.vocab_size, tp)
        if tp * pp == 1:
            self.n_params, self.n_params_non_embedding = builder.count_params(self.model[0])
        else:  # each rank holds a shard: count from the shape (same formula; tests check they agree)
            self.n_params = self.shape.total_params(self.padded_vocab)
            self.n_params_non_embedding = self.shape.non_embedding_params()
        self.flops_per_token = self.shape.train_flops_per_token(t.seq_length, self.padded_vocab)

    def _iterators(self, dataset, first_sample: int, num_micro: int, num_workers: int):
        its = [loader(dataset, self.run.train.micro_batch_size, first_sample, num_micro, self.dp_rank, self.dp_size,
                      num_workers) for _ in self.model]
        return its if len(its) > 1 else its[0]

    def train_step(self, step: int) -> tuple[float, float | None]:
        """One optimizer step (``step`` from 0, called in order); returns ``(loss, grad_norm)``."""
        t = self.run.train
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
        if self.run.train.parallel.overlap_param_gather:
            for c in self.model:
                c.disable_forward_pre_hook()

    def _resume_hooks(self) -> None:
        if self.run.train.parallel.overlap_param_gather:
            for c in self.model:
                c.enable_forward_pre_hook()

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Parameters gathered (overlapped all-gather finished) for the block's evaluations."""
        self._sync_params()
        try:
            yield
        finally:
            self._resume_hooks()

    def evaluate_sampled(self, dataset, token_bytes: torch.Tensor) -> tuple[float, int, int]:
        """``(Σ nats, tokens, UTF-8 bytes)`` of the predicted tokens of the ``eval_iters * micro_batch_size``
        fixed samples of ``dataset`` (:func:`megasynth.train.step.eval_sums`); call inside :meth:`eval_mode`."""
        t = self.run.train
        it = self._iterators(dataset, 0, self.eval_micro, 0)
        return eval_sums(self.model, it, self.eval_micro, t.seq_length, t.micro_batch_size, token_bytes)

    def save(self, root: Path, step: int) -> Path:
        """Full checkpoint after ``step`` optimizer steps (collective)."""
        from megasynth.train.checkpoint import save_checkpoint

        self._sync_params()
        try:
            return save_checkpoint(self.model, root, step, self.optimizer, self.scheduler, common={
                "consumed_samples": step * self.run.train.global_batch_size,
                "resume_key": _resume_key(self.run, self.vocab_size), "layout": self.layout},
                keep_last=self.run.train.checkpoint.keep_last_checkpoints)
        finally:
            self._resume_hooks()

    @property
    def layout(self) -> dict:
        p = self.run.train.parallel
        return {"tp": p.tensor_model_parallel_size, "pp": p.pipeline_model_parallel_size, "dp": self.dp_size,
                "vpp": self.vpp}

    def load(self, path: Path) -> int:
        """Restore model, optimizer, scheduler, RNG (same layout) from checkpoint directory ``path``; return its step.

        Raises:
            MegasynthError: the checkpoint belongs to a run with different data/schedule/model settings.
        """
        from megasynth.train.checkpoint import load_checkpoint, read_common

        common = read_common(path)
        want = _resume_key(self.run, self.vocab_size)
        saved = common.get("resume_key", {})
        diff = [k for k in want if saved.get(k) != want[k]]
        if diff:
            k = diff[0]
            raise MegasynthError(f"{path}: saved with {k}={saved.get(k)!r}, now {want[k]!r}; move "
                                 f"{path.parent.parent} away to restart this run")
        old = common.get("layout", {})
        same = (old.get("tp"), old.get("pp")) == (self.layout["tp"], self.layout["pp"])
        common = load_checkpoint(self.model, path, self.optimizer, self.scheduler, load_rng=same)
        step = int(common["iteration"])
        if int(common.get("consumed_samples", -1)) != step * self.run.train.global_batch_size:
            raise MegasynthError(f"{path}: consumed_samples {common.get('consumed_samples')} does not match "
                                 f"iteration {step} x global_batch_size")
        if not same:
            from megasynth.model import cpu_compat

            cpu_compat.manual_seed(self.run.train.seed + step)
            logger.info("%s: resharded %s -> %s; RNG re-seeded", self.name, old, self.layout)
        self._train_iter = None
        return step

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def train_one(run: RunConfig, layout: StudyLayout) -> dict:
    """Train (resume, or skip if complete) ``run``; return its summary.

    Writes ``runs/<run_id>/run.yaml`` when it starts, then ``tb/``, ``checkpoints/``, ``metrics.jsonl``,
    ``evals.jsonl`` and ``summary.json``, marking ``summary.json`` done last. A run directory without the
    marker resumes from its latest full checkpoint (rows of ``metrics.jsonl``/``evals.jsonl`` after it are
    dropped) or, without one, is wiped first. Call on every rank under ``torchrun``.

    Returns:
        The ``summary.json`` record: ``run_id``, ``mixture``, ``preset``, ``n_params``,
        ``n_params_non_embedding``, ``vocab_size`` (tokenizer ids), ``train_tokens``, ``final_train_loss``
        (nats/token), ``tokens_per_s`` (training tokens per second of optimizer steps), ``wall_s`` (this
        invocation plus the training seconds of steps before a resume), ``synthetic_ratio``; plus
        ``padded_vocab_size``, ``train_iters``, ``final_eval_loss`` (``{eval_set: loss}``), ``parallel``
        (tp/pp/dp/vpp), ``tflops_per_device``, ``mfu`` (None without a peak), ``resumed_from`` (step or None);
        from the evaluator: ``final_eval_bpb`` (``{eval_set: bits per byte}``), ``final_downstream``
        (``{task: {metric: value}}``, in-loop tasks only), ``token_losses`` (``{eval_set: {documents, tokens,
        bytes, nats_per_token, bits_per_byte, path}}`` of the final document pass) and ``eval_seconds``
        (``{heldout, token_losses, downstream}``: wall seconds of this invocation's evaluations).

    Raises:
        MegasynthError: a changed setting of an existing run (:func:`check_run_dir`), missing
            mixture/tokenized files, bad parallel sizes, a checkpoint of a run with different settings,
            recorded checkpoints none of which is readable.
        TrainingInterrupted: SIGTERM/SIGUSR1 arrived; a checkpoint was saved and a rerun resumes from it.
    """
    import torch.distributed as dist

    from megasynth.data.mixtures import read_mixture
    from megasynth.data.tokenizer import load_tokenizer
    from megasynth.train.checkpoint import resume_or_restart
    from megasynth.train.metrics import MetricsLogger, peak_tflops

    name = run.run_id
    files = layout.run(name)
    if check_run_dir(run, files):
        logger.info("%s: complete, skipping (%s)", name, files.summary)
        return read_json(files.summary)
    mixture = read_mixture(layout, run.mixture.name, run.mixture.sources)
    t = run.train
    start = time.monotonic()
    ckpt_root = files.checkpoints
    from megasynth.model import builder

    p = t.parallel
    builder.init_parallel(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=t.seed,
                          virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size)
    tokenizer = load_tokenizer(run.tokenizer, layout)
    state = _Run(run, layout, tokenizer, mixture["_blend"])
    # Newest readable checkpoint (older ones if newer are damaged, never deleting any), or a fresh start
    # with the old contents of the run directory moved to .attempt-N/ (megasynth.train.checkpoint).
    resumed = resume_or_restart(files.dir, state.load, name)
    resume, first = resumed is not None, resumed or 0
    files.dir.mkdir(parents=True, exist_ok=True)
    if _rank0():
        with atomic_path(files.config) as tmp:
            tmp.write_text(run.to_yaml())
    if dist.is_initialized():
        dist.barrier()
    if not resume and t.init_from:  # continued pre-training: weights only, fresh optimizer and LR schedule
        from megasynth.model.convert import load_pretrained

        load_pretrained(state.model, t.init_from, state.shape, tokenizer.vocab_size, state.optimizer,
                        preset=run.model.preset)
    if resume:
        logger.info("%s: resuming from step %d (%s)", name, first, ckpt_root)
    logger.info("%s: %s, %d params (%d non-embedding), %d steps x %d tokens, %d micro batches/step, "
                "tp %d pp %d dp %d vpp %s", name, run.model.preset, state.n_params, state.n_params_non_embedding,
                t.train_iters, state.tokens_per_step, state.num_micro, state.layout["tp"], state.layout["pp"],
                state.dp_size, state.vpp)
    metrics = MetricsLogger(files.dir, name, t.train_iters, t.log_interval, enabled=_rank0(),
                            flops_per_token=state.flops_per_token, num_devices=state.world_size,
                            peak_tflops=peak_tflops(t.peak_tflops), start_step=first)
    try:
        callbacks = [EvaluatorCallback(run, layout, tokenizer, state, metrics, rank0=_rank0())]
    except BaseException:
        metrics.close()
        raise
    save_interval = t.checkpoint.save_interval
    stop = StopSignal(enabled=t.checkpoint.exit_signal_handler)
    loss = metrics.last_loss
    saved_at = first if resume else None
    try:
        for step in range(first + 1, t.train_iters + 1):
            t0 = time.monotonic()
            lr = state.lr  # the lr this step uses
            loss, grad_norm = state.train_step(step - 1)
            if not math.isfinite(loss):
                raise MegasynthError(f"{name}: training loss is {loss} at step {step} "
                                     "(try a lower train.optimizer.lr)")
            consumed = step * state.tokens_per_step
            metrics.log_step(step, loss, lr, grad_norm, consumed, state.tokens_per_step, time.monotonic() - t0)
            for cb in callbacks:  # evaluation every eval_interval steps and at the last (EvaluatorCallback)
                cb.post_step(step)
            if save_interval and step % save_interval == 0 and step != t.train_iters:
                state.save(ckpt_root, step)
                saved_at = step
            signum = stop.received() if stop.enabled else None
            if signum and step != t.train_iters:
                if saved_at != step:
                    state.save(ckpt_root, step)
                metrics.close()
                raise TrainingInterrupted(f"{name}: stopped by {signal.Signals(signum).name} after step "
                                          f"{step}/{t.train_iters}; checkpoint saved, rerun to resume")
        if saved_at != t.train_iters:
            state.save(ckpt_root, t.train_iters)
    finally:
        stop.close()
        metrics.close()

    summary = {
        "run_id": name,
        "mixture": run.mixture.name,
        "preset": run.model.preset,
        "n_params": int(state.n_params),
        "n_params_non_embedding": int(state.n_params_non_embedding),
        "vocab_size": int(tokenizer.vocab_size),
        "padded_vocab_size": int(state.padded_vocab),
        "train_iters": t.train_iters,
        "train_tokens": t.train_tokens,
        "final_train_loss": loss,
        "final_eval_loss": metrics.last_eval_losses,
        "tokens_per_s": round(metrics.train_tokens_per_s, 1),
        "tflops_per_device": round(metrics.tflops_per_device, 4),
        "mfu": None if metrics.mfu is None else round(metrics.mfu, 4),
        "wall_s": round(time.monotonic() - start + metrics.resumed_train_s, 2),
        "synthetic_ratio": run.synthetic_ratio,
        "parallel": state.layout,
        "resumed_from": first if resume else None,
    }
    for cb in callbacks:
        summary.update(cb.summary())
    if _rank0():
        write_json(files.summary, summary)
        mark_done(files.summary)
    if dist.is_initialized():
        dist.barrier()
    logger.info("%s: done in %.0fs, final loss %.4f, %.0f tokens/s", name, summary["wall_s"], loss,
                summary["tokens_per_s"])
    return summary


def run_train(runs: list[RunConfig], layout: StudyLayout) -> None:
    """The ``train`` stage: :func:`train_one` for every planned run, in order (complete runs skipped).

    Raises:
        MegasynthError: no runs (no mixtures in the study), or as :func:`train_one`.
    """
    if not runs:
        raise MegasynthError("mixtures: no mixtures to train")
    for run in runs:
        train_one(run, layout)
