"""The parallel layout of a run on a number of processes: pure arithmetic, no torch (``--dry-run``)."""

from __future__ import annotations

from megasynth.config import RunConfig
from megasynth.utils import MegasynthError


def parallel_plan(run: RunConfig, world_size: int) -> dict:
    """The parallel layout of ``run`` (its ``train.parallel`` section) on ``world_size`` processes.

    Returns:
        ``world_size``, ``tensor_model_parallel_size``, ``pipeline_model_parallel_size``,
        ``virtual_pipeline_model_parallel_size``, ``data_parallel_size`` (= world / (tp·pp)),
        ``num_microbatches`` per step per DP rank (gradient accumulation), ``layers_per_pipeline_chunk``,
        ``tokens_per_step``, ``train_tokens``, ``params`` and ``non_embedding_params`` (published vocab
        if the tokenizer is not known here), ``train_flops_per_token``, and the memory/communication options.

    Raises:
        MegasynthError: tp·pp does not divide the world size, global batch not divisible by
            micro batch x DP, layers not divisible by pp·vpp.
    """
    from megasynth.model.presets import get_preset

    t, p = run.train, run.train.parallel
    tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    if world_size <= 0 or world_size % (tp * pp):
        raise MegasynthError(f"train.parallel.tensor_model_parallel_size * pipeline_model_parallel_size ({tp}x{pp}) "
                             f"must divide the world size {world_size}")
    dp = world_size // (tp * pp)
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise MegasynthError(f"train.global_batch_size: {t.global_batch_size} is not a multiple of micro_batch_size "
                             f"* data-parallel size = {t.micro_batch_size * dp}")
    shape = get_preset(run.model.preset)
    chunks = pp * (vpp or 1)
    if shape.num_layers % chunks:
        raise MegasynthError(f"train.parallel.pipeline_model_parallel_size: {shape.num_layers} layers do not split "
                             f"into pp * vpp = {chunks} chunks")
    return {
        "world_size": world_size,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "virtual_pipeline_model_parallel_size": vpp,
        "data_parallel_size": dp,
        "num_microbatches": t.global_batch_size // (t.micro_batch_size * dp),
        "layers_per_pipeline_chunk": shape.num_layers // chunks,
        "tokens_per_step": t.tokens_per_step,
        "train_tokens": t.train_tokens,
        "params": shape.total_params(),
        "non_embedding_params": shape.non_embedding_params(),
        "train_flops_per_token": shape.train_flops_per_token(t.seq_length),
        "transformer_impl": run.model.transformer_impl,
        "precision": run.model.precision,
        "use_distributed_optimizer": p.use_distributed_optimizer,
        "overlap_grad_reduce": p.overlap_grad_reduce,
        "sequence_parallel": p.sequence_parallel,
        "recompute_granularity": p.recompute_granularity,
    }
