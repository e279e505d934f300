"""One training run on megatron-core (:func:`train_one`), and the ``train`` stage over a list of runs.

A run is a :class:`~megasynth.config.RunConfig` (planned from a study by
:func:`megasynth.study.runs.plan_runs`); its files are ``runs/<run_id>/`` (:class:`~megasynth.layout.RunLayout`).
Following Megatron-LM's ``pretrain_gpt.py`` with megatron-core parts:

1. data: the mixture's blend (``mixtures/<mix>.json``) → :func:`megasynth.data.datasets.build_gpt_datasets`
   with ``train.data_samples`` samples (default ``train_iters * global_batch_size``; the run reads that many
   from the start, or from its branch point); each eval set (``tokenized/<name>_text_document``)
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

Branches (``train.branch_from``, a WSD cooldown branch of a sweep): a run that has no checkpoint of its own
starts from the checkpoint of another run at ``branch_from.step`` (model, optimizer, RNG; consumed samples
checked) with its own LR schedule advanced to that step, after :func:`check_branch` found that it continues
that run (same model, data order, batch and optimizer; the same LR at every step up to the branch point).
Its ``metrics.jsonl`` and ``evals.jsonl`` start at ``branch_from.step + 1``; its later checkpoints are its own.

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
    """Fields that must be unchanged for a checkpoint to resume the same run (layout may change).

    The WSD fields and ``train.data_samples`` are part of it only when set, so checkpoints saved before they
    existed still resume.
    """
    t, o, m = run.train, run.train.optimizer, run.model
    key = {"model.preset": m.preset, "model.precision": m.precision, "vocab_size": vocab_size,
           **{f"train.{k}": getattr(t, k) for k in ("seq_length", "global_batch_size", "train_iters")},
           **{f"train.optimizer.{k}": getattr(o, k) for k in ("lr", "min_lr", "lr_warmup_iters", "lr_decay_style",
                                                               "weight_decay")},
           "train.seed": t.seed, "train.init_from": t.init_from}
    if o.lr_decay_style == "WSD":
        key.update({"train.optimizer.lr_wsd_decay_iters": o.lr_wsd_decay_iters,
                    "train.optimizer.lr_wsd_decay_style": o.lr_wsd_decay_style})
    if t.data_samples is not None:
        key["train.data_samples"] = t.data_samples
    return key


BRANCH_FREE = ("run_id", "mixture.name", "eval_sets", "train.train_iters", "train.eval_interval", "train.eval_iters",
               "train.data_samples", "train.branch_from", "train.optimizer.min_lr", "train.optimizer.lr_decay_style",
               "train.optimizer.lr_wsd_decay_iters", "train.optimizer.lr_wsd_decay_style", "evaluation.token_losses")
"""Identity fields in which a branch may differ from the run it starts from: its budget, evaluation and LR
schedule after the branch point (the schedules up to it must agree step by step: :func:`check_branch`)."""


def check_branch(run: RunConfig, source: RunConfig, where: str | Path) -> None:
    """Raise unless ``run`` can start from step ``run.train.branch_from.step`` of ``source`` and then continue as
    if it had been trained from step 0 itself: the same model, data (mixture, seed, data order), batch and
    optimizer; the same learning rate at every step up to the branch point (megatron-core's scheduler of both).

    Raises:
        MegasynthError: ``<where>: branch 'b' of run 'a': <field> is x there, y here``.
    """
    from megasynth.train.step import lr_schedule

    step = run.train.branch_from.step
    label = f"{where}: branch {run.run_id!r} of run {source.run_id!r}"
    mine, theirs = run.identity(), source.identity()
    for key in dict.fromkeys([*mine, *theirs]):
        if any(key == f or key.startswith(f + ".") for f in BRANCH_FREE):
            continue
        if mine.get(key) != theirs.get(key):
            raise MegasynthError(f"{label}: {key} is {theirs.get(key)!r} there, {mine.get(key)!r} here")
    if run.train.dataset_samples != source.train.dataset_samples:
        raise MegasynthError(f"{label}: train.data_samples must be its {source.train.dataset_samples} samples (its data "
                             f"order), got {run.train.dataset_samples}")
    if step >= source.train.train_iters:
        raise MegasynthError(f"{label}: train.branch_from.step {step} is not before its last step "
                             f"{source.train.train_iters}")
    ours, its = lr_schedule(run.train, step), lr_schedule(source.train, step)
    diff = next((i for i, (a, b) in enumerate(zip(ours, its)) if a != b), None)
    if diff is not None:
        raise MegasynthError(f"{label}: the learning rate of step {diff + 1} is {its[diff]!r} there, {ours[diff]!r} "
                             f"here (the schedules must agree up to train.branch_from.step={step})")


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
        self.train_ds = build_gpt_datasets(blend, None, tokenizer, t.seq_length, t.dataset_samples, t.seed, cache)
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
            ckpt = self.run.train.checkpoint
            return save_checkpoint(self.model, root, step, self.optimizer, self.scheduler, common={
                "consumed_samples": step * self.run.train.global_batch_size,
                "resume_key": _resume_key(self.run, self.vocab_size), "layout": self.layout},
                keep_last=ckpt.keep_last_checkpoints, keep_steps=ckpt.save_steps)
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
        common = self._read_checked(path, self.run, lambda k, old, new: (
            f"{path}: saved with {k}={old!r}, now {new!r}; move {path.parent.parent} away to restart this run"))
        step = int(common["iteration"])
        if int(common.get("consumed_samples", -1)) != step * self.run.train.global_batch_size:
            raise MegasynthError(f"{path}: consumed_samples {common.get('consumed_samples')} does not match "
                                 f"iteration {step} x global_batch_size")
        self._load_state(path, common, self.scheduler)
        return step

    def load_branch(self, path: Path, source: RunConfig) -> int:
        """Start this run from checkpoint directory ``path`` of run ``source`` (``train.branch_from``): model,
        optimizer and RNG (same layout) from there, the LR schedule this run's own at that step; return the step.

        Raises:
            MegasynthError: the checkpoint is not whole, is not at ``branch_from.step`` or was saved with other
                data/model settings (named).
        """
        from megasynth.train.checkpoint import check_checkpoint

        b = self.run.train.branch_from
        why = check_checkpoint(path)
        if why is not None:
            raise MegasynthError(f"{path}: cannot start branch {self.name!r} of run {b.run_id!r} from it: {why}")
        common = self._read_checked(path, source, lambda k, old, new: (
            f"{path}: saved with {k}={old!r}, but run {b.run_id!r} now has {new!r}; retrain it"))
        step = int(common["iteration"])
        if step != b.step or int(common.get("consumed_samples", -1)) != step * self.run.train.global_batch_size:
            raise MegasynthError(f"{path}: iteration {step} with {common.get('consumed_samples')} consumed samples, "
                                 f"not train.branch_from.step {b.step} x global_batch_size")
        self._load_state(path, common, None)
        # This run's schedule, advanced as the source's was (its saved step count: skipped steps do not count).
        self.scheduler.num_steps = 0
        self.scheduler.step(increment=int(common["opt_param_scheduler"]["num_steps"]))
        return step

    def _read_checked(self, path: Path, key_run: RunConfig, mismatch) -> dict:
        """The common state of checkpoint ``path``, after checking its resume key against ``key_run``'s.

        Raises:
            MegasynthError: ``mismatch(field, saved value, wanted value)`` for the first field that differs.
        """
        from megasynth.train.checkpoint import read_common

        common = read_common(path)
        saved, want = common.get("resume_key", {}), _resume_key(key_run, self.vocab_size)
        for k in want:
            if saved.get(k) != want[k]:
                raise MegasynthError(mismatch(k, saved.get(k), want[k]))
        return common

    def _load_state(self, path: Path, common: dict, scheduler) -> None:
        """Load model, optimizer, ``scheduler`` (``None``: not) and, when the checkpoint's TP/PP layout is this
        run's, the RNG state from ``path``; after a reshard the RNG is re-seeded from the seed and step."""
        from megasynth.train.checkpoint import load_checkpoint

        old = common.get("layout", {})
        same = (old.get("tp"), old.get("pp")) == (self.layout["tp"], self.layout["pp"])
        load_checkpoint(self.model, path, self.optimizer, scheduler, load_rng=same)
        if not same:
            from megasynth.model import cpu_compat

            cpu_compat.manual_seed(self.run.train.seed + int(common["iteration"]))
            logger.info("%s: resharded %s -> %s; RNG re-seeded", self.name, old, self.layout)
        self._train_iter = None

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
    dropped) or, without one, has its old outputs moved to ``.attempt-N/`` and starts from step 0, or from
    ``train.branch_from`` (another run's checkpoint). Call on every rank under ``torchrun``.

    Returns:
        The ``summary.json`` record: ``run_id``, ``mixture``, ``preset``, ``n_params``,
        ``n_params_non_embedding``, ``vocab_size`` (tokenizer ids), ``train_tokens``, ``final_train_loss``
        (nats/token), ``tokens_per_s`` (training tokens per second of optimizer steps), ``wall_s`` (this
        invocation plus the training seconds of steps before a resume), ``synthetic_ratio``; plus
        ``padded_vocab_size``, ``train_iters``, ``final_eval_loss`` (``{eval_set: loss}``), ``parallel``
        (tp/pp/dp/vpp), ``tflops_per_device``, ``mfu`` (None without a peak), ``resumed_from`` (step or None),
        ``branch_from`` (``{run_id, step}`` or None), ``seed``, ``schedule`` (``cosine`` … ``wsd``);
        from the evaluator: ``final_eval_bpb`` (``{eval_set: bits per byte}``), ``final_downstream``
        (``{task: {metric: value}}``, in-loop tasks only), ``token_losses`` (``{eval_set: {documents, tokens,
        bytes, nats_per_token, bits_per_byte, path}}`` of the final document pass) and ``eval_seconds``
        (``{heldout, token_losses, downstream}``: wall seconds of this invocation's evaluations).

    Raises:
        MegasynthError: a changed setting of an existing run (:func:`check_run_dir`), missing
            mixture/tokenized files, bad parallel sizes, a checkpoint of a run with different settings,
            recorded checkpoints none of which is readable, a branch that does not continue its source run
            (:func:`check_branch`) or whose source has no checkpoint at the branch step.
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
    branch = t.branch_from
    if not resume and branch is not None:  # a WSD cooldown branch: start from its trunk's checkpoint
        from megasynth.train.checkpoint import checkpoint_dir

        src_files = layout.run(branch.run_id)
        if not src_files.config.is_file():
            raise MegasynthError(f"train.branch_from.run_id: run {branch.run_id!r} has no {src_files.config} "
                                 "(train it first)")
        source = RunConfig.from_yaml(src_files.config)
        check_branch(run, source, files.config)
        path = checkpoint_dir(src_files.checkpoints, branch.step)
        if not path.is_dir():
            raise MegasynthError(f"train.branch_from: run {branch.run_id!r} has no checkpoint at step {branch.step} "
                                 f"({path} not found; train it with train.checkpoint.save_steps including "
                                 f"{branch.step})")
        first = state.load_branch(path, source)
        logger.info("%s: starting from step %d of run %s (%s)", name, first, branch.run_id, path)
    files.dir.mkdir(parents=True, exist_ok=True)
    if _rank0():
        with atomic_path(files.config) as tmp:
            tmp.write_text(run.to_yaml())
    if dist.is_initialized():
        dist.barrier()
    if not resume and t.init_from:  # continued pre-training: weights only, fresh optimizer and LR schedule
        from megasynth.model.convert import load_pretrained

        load_pretrained(state.model, init_source(t.init_from, layout), state.shape, tokenizer.vocab_size,
                        state.optimizer, preset=run.model.preset)
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
    save_interval, save_steps = t.checkpoint.save_interval, set(t.checkpoint.save_steps)
    stop = StopSignal(enabled=t.checkpoint.exit_signal_handler)
    loss = metrics.last_loss
    saved_at = first if resume or branch is not None else None
    try:
        signum = stop.received() if stop.enabled else None
        if signum:  # arrived while the run started: nothing new to save
            stop.consume()
            where = f"resumes from step {first}" if resume else "starts from step 0"
            raise TrainingInterrupted(f"{name}: stopped by {signal.Signals(signum).name} before step {first + 1}/"
                                      f"{t.train_iters}; nothing new to save, a rerun {where}")
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
            if ((save_interval and step % save_interval == 0) or step in save_steps) and step != t.train_iters:
                state.save(ckpt_root, step)
                saved_at = step
            signum = stop.received() if stop.enabled else None
            if signum and step != t.train_iters:
                if saved_at != step:
                    state.save(ckpt_root, step)
                stop.consume()
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
        "branch_from": None if branch is None else {"run_id": branch.run_id, "step": branch.step},
        "seed": t.seed,
        "schedule": run.schedule,
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


def init_source(init_from: str, layout: StudyLayout):
    """The checkpoint ``train.init_from`` names: the path itself, or for ``study:base`` the study's base model
    (``base/megatron/`` when ``base.hf_model`` was imported, else the final checkpoint of run ``base``).

    Raises:
        MegasynthError: ``study:base`` before the base model is imported or trained.
    """
    from megasynth.config import BASE_INIT, BASE_RUN_ID
    from megasynth.utils import is_done

    if init_from != BASE_INIT:
        return init_from
    if is_done(layout.base_import):
        return layout.base_import
    files = layout.run(BASE_RUN_ID)
    if is_done(files.summary):
        return files.checkpoints
    raise MegasynthError(f"train.init_from: {BASE_INIT}, but the study's base model is neither imported "
                         f"({layout.base_import}) nor trained ({files.dir}); run the train stage, which prepares it first")


def run_train(runs: list[RunConfig], layout: StudyLayout) -> None:
    """The ``train`` stage: :func:`train_one` for every planned run, in order (complete runs skipped).

    Raises:
        MegasynthError: no runs (no mixtures in the study), or as :func:`train_one`.
    """
    if not runs:
        raise MegasynthError("mixtures: no mixtures to train")
    for run in runs:
        train_one(run, layout)
