"""One optimizer step and one evaluation pass on megatron-core, and the model/optimizer they run on.

- :func:`loader`: a run's data in Megatron's order (global micro batch ``k`` covers samples
  ``[first + k·mbs·dp, first + (k+1)·mbs·dp)``; DP rank ``r`` takes its ``r``-th slice of ``mbs``).
- :func:`setup_model_and_optimizer`: :func:`megasynth.model.builder.build_model_chunks` (layout-independent
  initial weights), ``Float16Module`` for bf16/fp16/fp8, megatron's ``DistributedDataParallel``, AdamW from
  ``get_megatron_optimizer`` (decoupled weight decay on matrices only, clipping at ``clip_grad``) and
  ``OptimizerParamScheduler`` (linear warmup over ``lr_warmup_iters`` steps, then ``lr_decay_style`` decay
  to ``min_lr`` at ``train_iters``).
- :func:`train_step`: ``get_forward_backward_func()`` over ``global_batch_size / (micro_batch_size · dp)``
  micro batches (gradient accumulation), then the optimizer and the scheduler.
- :func:`eval_sums`: the same schedule, forward only: summed nats, tokens and the UTF-8 bytes of the
  predicted tokens (for bits per byte).

Loss: mean token cross-entropy in nats over the tokens of the step (``loss_mask`` excludes padding).
Megatron tensors are sequence-first internally; the model takes ``tokens [b, s]`` and returns per-token
losses ``[b, s]`` when given ``labels``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import ModelConfig, TrainConfig


def loader(dataset, micro_batch_size: int, first_sample: int, num_micro: int, dp_rank: int, dp_size: int,
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


def _eval_loss_func(loss_mask: torch.Tensor, byte_counts: torch.Tensor, output_tensor: torch.Tensor):
    """:func:`_loss_func` plus the UTF-8 bytes of the predicted tokens: the report is ``[Σ nats, tokens, bytes]``
    (float64; ``byte_counts [b, s]`` = bytes of each label token)."""
    loss, num_tokens, _ = _loss_func(loss_mask, output_tensor)
    nbytes = torch.sum(byte_counts.reshape(-1).double() * loss_mask.reshape(-1).double())
    report = torch.stack([loss.detach().double(), num_tokens.detach().double(), nbytes])
    return loss, num_tokens, {"eval sums": report}


def _eval_forward_step(token_bytes: torch.Tensor, data_iterator, model):
    """:func:`_forward_step` for :func:`eval_sums`: ``token_bytes [V]`` gives the bytes of each label."""
    batch = _to_device(next(data_iterator))
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    byte_counts = token_bytes.to(batch["labels"].device)[batch["labels"]]
    return output, partial(_eval_loss_func, batch["loss_mask"], byte_counts)


def _reduce_sums(outputs: list, key: str, width: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sum the schedule's ``{key: [width]}`` reports over micro batches and data-parallel ranks, in ``dtype``,
    known on every rank (the reports exist only on the last pipeline stage; broadcast over the pipeline)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    total = (torch.stack([o[key] for o in outputs]).sum(0).to(dtype) if (last and outputs)
             else torch.zeros(width, dtype=dtype))
    if torch.cuda.is_available():
        total = total.cuda()
    if last and ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(total, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(total, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
    return total.cpu()


def _reduce_loss(outputs: list) -> float:
    """Mean loss per token over micro batches and data-parallel ranks, known on every rank.

    ``outputs`` are the schedule's ``{"lm loss": [loss_sum, tokens]}`` (non-empty only on the last
    pipeline stage); the sums are all-reduced over DP in float32 there and broadcast over the pipeline group.
    """
    total = _reduce_sums(outputs, "lm loss", 2, dtype=torch.float32)
    return float(total[0] / torch.clamp(total[1], min=1))


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def setup_model_and_optimizer(model_cfg: "ModelConfig", train_cfg: "TrainConfig", vocab_size: int, shape=None):
    """Build this rank's model chunks, megatron DDP wrappers, optimizer and lr scheduler of a run.

    ``train_cfg`` gives ``seq_length``, ``seed``, ``train_iters`` and its ``parallel`` and ``optimizer``
    sections; ``shape`` overrides the preset's (benchmarks).

    Requires :func:`megasynth.model.builder.init_parallel` with the same TP/PP/VPP sizes. Weights are
    layout-independent (:func:`megasynth.model.builder.build_model_chunks`). bf16/fp16/fp8 models are
    wrapped in megatron's ``Float16Module`` (fp32 master weights in the optimizer), then each chunk in
    ``DistributedDataParallel`` (fp32 gradient buffers; ``overlap_grad_reduce`` overlaps the bucketed
    all-reduce — reduce-scatter with ``use_distributed_optimizer`` — with backward).

    Returns:
        ``(model_chunks, optimizer, scheduler)``: a list of DDP modules (one per virtual pipeline
        stage), megatron's AdamW optimizer (distributed or not), and the ``OptimizerParamScheduler``
        already at step 1 (step ``k`` trains with lr ``lr·k/lr_warmup_iters`` during warmup and reaches
        ``min_lr`` at ``train_iters``; ``train.optimizer`` fields).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.module import Float16Module

    from megasynth.model import builder, cpu_compat

    m, t = model_cfg, train_cfg
    p, o = t.parallel, t.optimizer
    chunks = builder.build_model_chunks(m, p, vocab_size, t.seq_length, t.seed, shape)
    config = chunks[0].config
    if m.precision in ("bf16", "fp16", "fp8"):
        chunks = [Float16Module(c.config, c) for c in chunks]
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=p.overlap_grad_reduce,
        use_distributed_optimizer=p.use_distributed_optimizer, overlap_param_gather=p.overlap_param_gather)
    with cpu_compat.cpu_device_mode():
        chunks = [DistributedDataParallel(c.config, ddp_cfg, c, disable_bucketing=i > 0)
                  for i, c in enumerate(chunks)]
    single = len(chunks) == 1
    config.no_sync_func = chunks[0].no_sync if single else [c.no_sync for c in chunks]
    if ddp_cfg.overlap_grad_reduce:
        config.grad_sync_func = chunks[0].start_grad_sync if single else [c.start_grad_sync for c in chunks]
    config.finalize_model_grads_func = finalize_model_grads
    opt_cfg = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        bf16=m.precision in ("bf16", "fp8"), fp16=m.precision == "fp16",
        params_dtype=config.params_dtype, use_distributed_optimizer=p.use_distributed_optimizer)
    with cpu_compat.cpu_device_mode():
        optimizer = get_megatron_optimizer(opt_cfg, chunks)
    scheduler = lr_scheduler(optimizer, t)
    scheduler.step(increment=1)
    return chunks, optimizer, scheduler


def lr_scheduler(optimizer, train_cfg: "TrainConfig"):
    """megatron-core's ``OptimizerParamScheduler`` of a run at step 0 (``train.optimizer`` fields).

    Linear warmup from 0 over ``lr_warmup_iters`` steps, then ``lr_decay_style`` from ``lr`` to ``min_lr`` at
    ``train_iters``; ``WSD`` holds ``lr`` until the last ``lr_wsd_decay_iters`` steps and decays over those
    (``lr_wsd_decay_style``). Weight decay is constant. ``optimizer`` needs only ``param_groups`` (a list of
    dicts, whose ``lr`` and ``weight_decay`` the scheduler sets), so the schedule can be evaluated without a
    model (:func:`lr_schedule`).
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    t, o = train_cfg, train_cfg.optimizer
    wsd = o.lr_decay_style == "WSD"
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=o.lr_warmup_iters,
        lr_decay_steps=t.train_iters, lr_decay_style=o.lr_decay_style, start_wd=o.weight_decay,
        end_wd=o.weight_decay, wd_incr_steps=t.train_iters, wd_incr_style="constant",
        wsd_decay_steps=o.lr_wsd_decay_iters if wsd else None, lr_wsd_decay_style=o.lr_wsd_decay_style if wsd else None)


def lr_schedule(train_cfg: "TrainConfig", steps: int) -> list[float]:
    """The learning rate of steps ``1..steps`` of a run (the value :func:`train_step` uses at each), from the
    same megatron-core scheduler the run builds."""
    from types import SimpleNamespace

    group: dict = {}
    scheduler = lr_scheduler(SimpleNamespace(param_groups=[group]), train_cfg)
    out = []
    for _ in range(steps):
        scheduler.step(increment=1)
        out.append(group["lr"])
    return out


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


def _forward_only(model, forward_step_func, data_iterator, num_microbatches: int, seq_length: int,
                  micro_batch_size: int) -> list:
    """The pipeline schedule's outputs of a forward-only pass (model chunks in eval mode for it, train mode after)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megasynth.model import cpu_compat

    chunks = _as_list(model)
    for c in chunks:
        c.eval()
    try:
        with cpu_compat.cpu_device_mode():
            return get_forward_backward_func()(
                forward_step_func=forward_step_func, data_iterator=data_iterator, model=chunks,
                num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
                forward_only=True)
    finally:
        for c in chunks:
            c.train()


@torch.no_grad()
def eval_sums(model, data_iterator, num_microbatches: int, seq_length: int, micro_batch_size: int,
              token_bytes: torch.Tensor) -> tuple[float, int, int]:
    """``(Σ nats, tokens, UTF-8 bytes)`` of the predicted tokens of ``num_microbatches`` micro batches, forward
    only, summed over data-parallel ranks and known on every rank.

    ``token_bytes [V]``: the UTF-8 bytes each id stands for (:meth:`MegasynthTokenizer.token_bytes`, 0 for
    ``eod``); a sample's bytes are those of its label tokens under the loss mask, so
    ``Σ nats / (ln 2 · bytes)`` is the bits per byte of exactly the text the sampled tokens spell.
    ``model`` and ``data_iterator`` as in :func:`train_step`.
    """
    outputs = _forward_only(model, partial(_eval_forward_step, token_bytes), data_iterator, num_microbatches,
                            seq_length, micro_batch_size)
    nats, tokens, nbytes = _reduce_sums(outputs, "eval sums", 3).tolist()
    return nats, int(round(tokens)), int(round(nbytes))
