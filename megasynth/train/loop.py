"""The training loop on megatron-core: one run per mixture (the ``train`` stage).

Per run (``runs/<mix>/``), following Megatron-LM's ``pretrain_gpt.py`` with megatron-core parts:

1. data: the mixture's blend (``mixtures/<mix>.json``) → :func:`megasynth.data.datasets.build_gpt_datasets`
   with ``train_iters * global_batch_size`` samples; each eval set (``tokenized/<name>_text_document``)
   → ``eval_iters * micro_batch_size * dp`` fixed samples.
2. model: :func:`megasynth.model.builder.build_model` (local spec fp32 on CPU; TE spec bf16/fp8 on
   GPU), wrapped in ``Float16Module`` for bf16/fp16/fp8 and in megatron's ``DistributedDataParallel``.
3. steps: ``get_forward_backward_func()`` runs ``global_batch_size / (micro_batch_size * dp)`` micro
   batches per step (gradient accumulation), then megatron's optimizer (AdamW from
   ``get_megatron_optimizer``; decoupled weight decay on matrices only, gradient clipping at
   ``clip_grad``) and ``OptimizerParamScheduler`` (linear warmup over ``lr_warmup_iters`` steps, then
   ``lr_decay_style`` decay to ``min_lr`` at ``train_iters``).
4. every ``eval_interval`` steps and at the last step: validation loss on every eval set →
   ``evals.jsonl``; every step → ``metrics.jsonl``; TensorBoard in ``tb/``.
5. final checkpoint (``dist_checkpointing``), ``config.yaml``, ``summary.json`` then its completion
   marker ``summary.json.done``.

A run whose marker exists is skipped; a run directory without it (killed mid-run) is wiped and the run
restarts from scratch: seeds are fixed, so the rerun reproduces the same numbers.

Loss: mean token cross-entropy in nats over the tokens of the step (``loss_mask`` excludes padding).
Megatron tensors are sequence-first internally; the model takes ``tokens [b, s]`` and returns per-token
losses ``[b, s]`` when given ``labels``.
"""

from __future__ import annotations

import logging
import math
import shutil
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
    """Mean loss per token over micro batches (and data-parallel ranks) from the schedule's outputs."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not outputs:  # not the last pipeline stage
        return float("nan")
    total = torch.stack([o["lm loss"] for o in outputs]).sum(0)
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return float(total[0] / torch.clamp(total[1], min=1))


def setup_model_and_optimizer(model_cfg, train_cfg, vocab_size: int):
    """Build the GPTModel, megatron DDP wrapper, AdamW optimizer and lr scheduler of a run.

    Requires :func:`megasynth.model.builder.init_parallel`. bf16/fp16/fp8 models are wrapped in
    megatron's ``Float16Module`` (fp32 master weights in the optimizer), then in
    ``DistributedDataParallel`` (fp32 gradient buffers, all-reduce after the last micro batch).

    Returns:
        ``(model, optimizer, scheduler)``; the scheduler is already at step 1 (step ``k`` trains with
        lr ``lr·k/lr_warmup_iters`` during warmup and reaches ``min_lr`` at ``train_iters``).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.transformer.module import Float16Module

    from megasynth.model import builder, cpu_compat

    m, t = model_cfg, train_cfg
    model = builder.build_model(m, vocab_size, t.seq_length, tensor_model_parallel_size=t.tensor_model_parallel_size,
                                pipeline_model_parallel_size=t.pipeline_model_parallel_size)
    config = model.config
    if m.precision in ("bf16", "fp16", "fp8"):
        model = Float16Module(config, model)
    with cpu_compat.cpu_device_mode():
        model = DistributedDataParallel(
            config, DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                  use_distributed_optimizer=False), model)
    config.no_sync_func = model.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    opt_cfg = OptimizerConfig(
        optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2, adam_eps=t.adam_eps, clip_grad=t.clip_grad,
        bf16=m.precision in ("bf16", "fp8"), fp16=m.precision == "fp16",
        params_dtype=config.params_dtype, use_distributed_optimizer=False)
    with cpu_compat.cpu_device_mode():
        optimizer = get_megatron_optimizer(opt_cfg, [model])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=t.lr, min_lr=t.min_lr, lr_warmup_steps=t.lr_warmup_iters,
        lr_decay_steps=t.train_iters, lr_decay_style=t.lr_decay_style, start_wd=t.weight_decay,
        end_wd=t.weight_decay, wd_incr_steps=t.train_iters, wd_incr_style="constant")
    scheduler.step(increment=1)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler, data_iterator, num_microbatches: int, seq_length: int,
               micro_batch_size: int) -> tuple[float, float | None, bool]:
    """One optimizer step over ``num_microbatches`` micro batches of ``data_iterator``.

    Batches are dicts of ``tokens``, ``labels``, ``position_ids``, ``loss_mask`` ``[b, s]``.

    Returns:
        ``(loss, grad_norm, ok)``: mean token loss (nats) of the step, gradient L2 norm before
        clipping, False if the optimizer skipped the step (non-finite gradients).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megasynth.model import cpu_compat

    model.train()
    with cpu_compat.cpu_device_mode():
        model.zero_grad_buffer()
        optimizer.zero_grad()
        outputs = get_forward_backward_func()(
            forward_step_func=_forward_step, data_iterator=data_iterator, model=[model],
            num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
            forward_only=False)
        ok, grad_norm, _ = optimizer.step()
    if ok:
        scheduler.step(increment=1)
    return _reduce_loss(outputs), (float(grad_norm) if grad_norm is not None else None), bool(ok)


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------
class _Run:
    """Model, optimizer, scheduler and data of one run (built by :func:`train_one`)."""

    def __init__(self, cfg: "StudyConfig", layout: "StudyLayout", name: str, tokenizer, blend, run_dir: Path):
        from megatron.core import parallel_state

        from megasynth.data.datasets import build_gpt_datasets
        from megasynth.model import builder, cpu_compat

        t, m = cfg.train, cfg.model
        self.cfg, self.name = cfg, name
        tp, pp = t.tensor_model_parallel_size, t.pipeline_model_parallel_size
        builder.init_parallel(tp, pp, seed=t.seed)
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        if t.global_batch_size % (t.micro_batch_size * self.dp_size):
            raise MegasynthError(f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
                                 f"micro_batch_size * data-parallel size = {t.micro_batch_size * self.dp_size}")
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp_size)
        self.tokens_per_step = t.global_batch_size * t.seq_length
        self._train_iter: Iterator[dict] | None = None

        # Data (built before the model so a bad prefix fails fast).
        cache = layout.root / "tokenized" / "cache"
        self.train_ds = build_gpt_datasets(blend, None, tokenizer, t.seq_length, t.train_iters * t.global_batch_size,
                                           t.seed, cache)
        self.eval_ds = {}
        n_eval = t.eval_iters * t.micro_batch_size * self.dp_size
        for ev in cfg.eval_sets:
            self.eval_ds[ev] = build_gpt_datasets(None, str(layout.tokenized_prefix(ev)), tokenizer, t.seq_length,
                                                  n_eval, t.seed, cache)

        # Model, optimizer, schedule.
        cpu_compat.manual_seed(t.seed)  # same initial weights for every run of the study
        self.model, self.optimizer, self.scheduler = setup_model_and_optimizer(cfg.model, t, tokenizer.vocab_size)
        self.shape = builder.get_preset(m.preset)
        self.padded_vocab = builder.padded_vocab_size(tokenizer.vocab_size, tp)
        if tp * pp == 1:
            self.n_params, self.n_params_non_embedding = builder.count_params(self.model)
        else:  # each rank holds a shard: count from the shape (same formula; tests check they agree)
            self.n_params = self.shape.total_params(self.padded_vocab)
            self.n_params_non_embedding = self.shape.non_embedding_params()

    def train_step(self, step: int) -> tuple[float, float | None]:
        """One optimizer step (``step`` from 0, called in order); returns ``(loss, grad_norm)``."""
        t = self.cfg.train
        if self._train_iter is None:  # one loader for the whole run (workers start once)
            self._train_iter = _loader(self.train_ds, t.micro_batch_size, step * t.global_batch_size,
                                       (t.train_iters - step) * self.num_micro, self.dp_rank, self.dp_size,
                                       t.num_workers)
        loss, grad_norm, ok = train_step(self.model, self.optimizer, self.scheduler, self._train_iter,
                                         self.num_micro, t.seq_length, t.micro_batch_size)
        if not ok:
            logger.warning("%s: step %d skipped (non-finite gradients)", self.name, step + 1)
        return loss, grad_norm

    @torch.no_grad()
    def evaluate(self, dataset) -> float:
        """Mean validation loss (nats/token) over ``eval_iters`` fixed micro batches of ``dataset``."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from megasynth.model import cpu_compat

        t = self.cfg.train
        it = _loader(dataset, t.micro_batch_size, 0, t.eval_iters, self.dp_rank, self.dp_size, 0)
        self.model.eval()
        with cpu_compat.cpu_device_mode():
            outputs = get_forward_backward_func()(
                forward_step_func=_forward_step, data_iterator=it, model=[self.model], num_microbatches=t.eval_iters,
                seq_length=t.seq_length, micro_batch_size=t.micro_batch_size, forward_only=True)
        self.model.train()
        return _reduce_loss(outputs)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def train_one(cfg: "StudyConfig", layout: "StudyLayout", mixture_name: str) -> dict:
    """Train (or skip, if complete) the run of mixture ``mixture_name``; return its summary.

    Writes ``runs/<mix>/{config.yaml, tb/, checkpoints/, metrics.jsonl, evals.jsonl, summary.json}`` and
    marks ``summary.json`` done last. A run directory without the marker is wiped first.

    Returns:
        The ``summary.json`` record: ``mixture``, ``preset``, ``n_params``, ``n_params_non_embedding``,
        ``vocab_size`` (tokenizer ids), ``train_tokens``, ``final_train_loss`` (nats/token),
        ``tokens_per_s`` (training tokens per second of optimizer steps), ``wall_s`` (whole run),
        ``synthetic_ratio``; plus ``padded_vocab_size``, ``train_iters``, ``final_eval_loss``
        (``{eval_set: loss}``).

    Raises:
        MegasynthError: unknown mixture, missing mixture/tokenized files, bad parallel sizes.
    """
    import torch.distributed as dist

    from megasynth.data.tokenizer import load_tokenizer
    from megasynth.train.checkpoint import save_checkpoint
    from megasynth.train.metrics import MetricsLogger

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
    if _rank0() and run_dir.exists():
        logger.info("%s: incomplete run directory, restarting from scratch", mixture_name)
        shutil.rmtree(run_dir)
    if dist.is_initialized():
        dist.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(cfg.tokenizer, layout)
    run = _Run(cfg, layout, mixture_name, tokenizer, mixture["_blend"], run_dir)
    logger.info("%s: %s, %d params (%d non-embedding), %d steps x %d tokens, %d micro batches/step",
                mixture_name, cfg.model.preset, run.n_params, run.n_params_non_embedding, t.train_iters,
                run.tokens_per_step, run.num_micro)
    metrics = MetricsLogger(run_dir, mixture_name, t.train_iters, t.log_interval, enabled=_rank0())
    loss, eval_losses = float("nan"), {}
    try:
        for step in range(1, t.train_iters + 1):
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
                save_checkpoint(run.model, run_dir / "checkpoints", step)
        save_checkpoint(run.model, run_dir / "checkpoints", t.train_iters)
    finally:
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
        "wall_s": round(time.monotonic() - start, 2),
        "synthetic_ratio": synthetic_ratio(mixes[mixture_name].sources, cfg.synthetic_sources),
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
