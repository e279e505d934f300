"""Llama-3 presets → megatron-core ``TransformerConfig`` + ``GPTModel`` (local or Transformer Engine spec).

The Llama-3 recipe on megatron-core (see Megatron-LM ``examples/llama`` and the Llama-3 paper,
Grattafiori et al. 2024, Table 3): RMSNorm (eps 1e-5), SwiGLU MLP (``gated_linear_unit=True``, SiLU),
rotary position embeddings with base 500,000, grouped-query attention (``num_query_groups``), no
linear biases, input/output embeddings untied or tied as the preset says (Llama-3.2-1B/3B tie them),
Llama-3.1/3.2 RoPE scaling where the preset has it, and a vocabulary padded to a multiple of 128
(Megatron's ``make_vocab_size_divisible_by``).

Layer specs: ``transformer_impl == "local"`` uses megatron-core's pure-PyTorch
``get_gpt_layer_local_spec`` (CPU or GPU without Transformer Engine; fp32 or bf16), with megatron's
``DotProductAttention`` or, under ``model.attention_backend: sdpa``, PyTorch's ``scaled_dot_product_attention``
(:mod:`megasynth.model.attention`) as core attention; ``"transformer_engine"`` uses
``get_gpt_layer_with_transformer_engine_spec`` (GPU; bf16, or fp8 with the ``hybrid`` format:
E4M3 forward, E5M2 backward).

Distributed state: :func:`init_parallel` initialises ``torch.distributed`` (gloo on CPU, NCCL on GPU;
a single process when no ``torchrun`` environment is set) and megatron's ``parallel_state``;
:func:`destroy_parallel` tears both down (tests call it between models).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from megasynth.model import cpu_compat
from megasynth.model.presets import VOCAB_DIVISIBLE_BY, LlamaShape, get_preset, padded_vocab_size  # noqa: F401
from megasynth.utils import MegasynthError

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import ModelConfig, ParallelConfig

logger = logging.getLogger("megasynth.model")

_TE_INSTALL = ("Transformer Engine is required for model.transformer_impl: transformer_engine "
               "(and fp8); install it with `pip install --no-build-isolation transformer_engine[pytorch]` "
               "or use the NGC PyTorch image (docker/Dockerfile)")


def _precision_kwargs(model_cfg: "ModelConfig") -> dict:
    precision, transformer_impl = model_cfg.precision, model_cfg.transformer_impl
    if precision == "fp32":
        return {"params_dtype": torch.float32, "pipeline_dtype": torch.float32}
    if precision == "bf16":
        return {"bf16": True, "params_dtype": torch.bfloat16, "pipeline_dtype": torch.bfloat16}
    if precision == "fp16":
        return {"fp16": True, "params_dtype": torch.float16, "pipeline_dtype": torch.float16}
    if precision == "fp8":
        if transformer_impl != "transformer_engine":
            raise MegasynthError("model.precision: fp8 needs model.transformer_impl: transformer_engine")
        # FP8 GEMMs (TE) with bf16 parameters/activations; hybrid = E4M3 forward, E5M2 gradients.
        # first_last_layers_bf16 keeps the first/last layers' GEMMs in bf16 (megatron-core's
        # get_fp8_context decides per layer).
        kw = {"bf16": True, "params_dtype": torch.bfloat16, "pipeline_dtype": torch.bfloat16,
              "fp8": model_cfg.fp8_format, "fp8_recipe": model_cfg.fp8_recipe}
        if model_cfg.first_last_layers_bf16:
            kw.update(first_last_layers_bf16=True, num_layers_at_start_in_bf16=model_cfg.num_layers_at_start_in_bf16,
                      num_layers_at_end_in_bf16=model_cfg.num_layers_at_end_in_bf16)
        return kw
    raise MegasynthError(f"model.precision: unknown precision {precision!r} (known: fp32, bf16, fp16, fp8)")


def transformer_config(model_cfg: "ModelConfig", shape: LlamaShape | None = None,
                       parallel: "ParallelConfig | None" = None):
    """The megatron-core ``TransformerConfig`` of a Llama-3 preset.

    Args:
        model_cfg: ``preset``, ``transformer_impl``, ``precision``, ``init_method_std``, fp8 options.
        shape: overrides the preset's shape (tests, benchmarks).
        parallel: the ``train.parallel`` section (default: one process): TP/PP/VPP sizes (must match
            :func:`init_parallel`), ``sequence_parallel``, ``recompute_granularity``/``recompute_method``/
            ``recompute_num_layers``.

    Returns:
        ``megatron.core.transformer.TransformerConfig`` (dropout 0, no fusions on CPU).

    Raises:
        MegasynthError: unknown preset or precision; fp8 without Transformer Engine; layers not divisible
            by the pipeline stages.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    tensor_model_parallel_size = parallel.tensor_model_parallel_size if parallel else 1
    pipeline_model_parallel_size = parallel.pipeline_model_parallel_size if parallel else 1
    vpp = parallel.virtual_pipeline_model_parallel_size if parallel else None
    shape = shape or get_preset(model_cfg.preset)
    on_gpu = torch.cuda.is_available()
    te = model_cfg.transformer_impl == "transformer_engine"
    if te:
        _require_te()
    if shape.num_attention_heads % shape.num_query_groups:
        raise MegasynthError(f"model.preset: num_attention_heads {shape.num_attention_heads} "
                             f"is not a multiple of num_query_groups {shape.num_query_groups}")
    stages = pipeline_model_parallel_size * (vpp or 1)
    if shape.num_layers % stages:
        raise MegasynthError(f"train.parallel.pipeline_model_parallel_size: {shape.num_layers} layers of "
                             f"{model_cfg.preset!r} do not split into pp * vpp = {stages} stages")
    if tensor_model_parallel_size > 1 and shape.num_query_groups % tensor_model_parallel_size:
        raise MegasynthError(f"train.parallel.tensor_model_parallel_size: {tensor_model_parallel_size} does not divide "
                             f"the {shape.num_query_groups} KV groups of {model_cfg.preset!r}")
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model_cfg.init_method_std,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        # Fused kernels exist only on GPU (TE / apex / megatron CUDA extensions).
        bias_activation_fusion=te and on_gpu,
        bias_dropout_fusion=te and on_gpu,
        masked_softmax_fusion=te and on_gpu,
        # TE's fused RoPE and fused weight-gradient accumulation into megatron DDP's main_grad buffers
        # (Megatron-LM's defaults on GPU).
        apply_rope_fusion=te and on_gpu,
        gradient_accumulation_fusion=te and on_gpu,
        persist_layer_norm=False,
        use_cpu_initialization=not on_gpu,
        attention_softmax_in_fp32=True,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=bool(parallel and parallel.sequence_parallel) and tensor_model_parallel_size > 1,
        recompute_granularity=parallel.recompute_granularity if parallel else None,
        recompute_method=parallel.recompute_method if parallel else None,
        recompute_num_layers=parallel.recompute_num_layers if parallel else None,
        **_precision_kwargs(model_cfg),
    )


def _require_te() -> None:
    try:
        import transformer_engine  # noqa: F401  # type: ignore[import-not-found]
    except ImportError:
        raise MegasynthError(_TE_INSTALL) from None
    except RuntimeError as e:  # a half-installed TE (e.g. no CUDA libraries) raises on import
        raise MegasynthError(f"model.transformer_impl: transformer_engine is installed but fails to import ({e}); "
                             + _TE_INSTALL) from None


def layer_spec(model_cfg: "ModelConfig"):
    """megatron-core layer spec for ``model_cfg.transformer_impl`` (``local`` or ``transformer_engine``).

    With ``local``, ``model_cfg.attention_backend`` picks the ``core_attention`` submodule: megatron-core's
    ``DotProductAttention`` (``local``) or :class:`megasynth.model.attention.SDPAttention` (``sdpa``); the rest
    of the spec (and so every parameter and checkpoint name) is the same.
    """
    from megatron.core.models.gpt import gpt_layer_specs

    if model_cfg.transformer_impl == "local":
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
        backend = getattr(model_cfg, "attention_backend", "local")
        if backend == "sdpa":
            from megasynth.model.attention import SDPAttention

            attn = spec.submodules.self_attention
            spec = replace(spec, submodules=replace(spec.submodules, self_attention=replace(
                attn, submodules=replace(attn.submodules, core_attention=SDPAttention))))
        elif backend != "local":
            raise MegasynthError(f"model.attention_backend: unknown {backend!r} (known: local, sdpa)")
        return spec
    if model_cfg.transformer_impl == "transformer_engine":
        _require_te()
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    raise MegasynthError(f"model.transformer_impl: unknown {model_cfg.transformer_impl!r} "
                         "(known: local, transformer_engine)")


def build_model(model_cfg: "ModelConfig", vocab_size: int, seq_length: int, shape: LlamaShape | None = None,
                parallel: "ParallelConfig | None" = None, vp_stage: int | None = None):
    """Build the Llama-3 ``GPTModel`` (this rank's pipeline stage) of ``model_cfg.preset`` on megatron-core.

    Requires :func:`init_parallel` first (megatron's ``parallel_state``). Weights are initialised from
    torch's default generator (seed it with :func:`megasynth.model.cpu_compat.manual_seed`); use
    :func:`build_model_chunks` for weights that do not depend on the parallel layout.

    Args:
        vocab_size: tokenizer vocabulary (ids); the embedding has :func:`padded_vocab_size` rows.
        seq_length: longest sequence in tokens (RoPE table length); at most the preset's
            ``max_position_embeddings``.
        parallel: the ``train.parallel`` section (see :func:`transformer_config`; default one process).
        vp_stage: virtual pipeline stage of this model chunk (``None`` without virtual pipelining).

    Returns:
        ``GPTModel``; on a single stage ``model(input_ids [b, s], position_ids [b, s], attention_mask=None)``
        returns logits ``[b, s, V_padded]`` (``V_padded / tp`` per TP rank), or per-token losses ``[b, s]``
        when ``labels [b, s]`` is given. Pipeline stages other than the first read their input
        ``[s, b, h]`` from ``set_input_tensor``; stages other than the last return hidden states ``[s, b, h]``.

    Raises:
        MegasynthError: ``seq_length`` beyond the preset, bad preset/precision/impl, TE missing.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    shape = shape or get_preset(model_cfg.preset)
    if seq_length <= 0 or seq_length > shape.max_position_embeddings:
        raise MegasynthError(f"train.seq_length: must be in [1, {shape.max_position_embeddings}] for preset "
                             f"{model_cfg.preset!r}, got {seq_length}")
    cpu_compat.enable()
    config = transformer_config(model_cfg, shape, parallel)
    vpp = config.virtual_pipeline_model_parallel_size
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vpp is None, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=vpp is None, vp_stage=vp_stage)
    kwargs = {"vp_stage": vp_stage} if vp_stage is not None else {}
    # cpu_device_mode: with tied embeddings and PP > 1, GPTModel copies the embedding to the last stage
    # through `weight.data.cuda()` + all-reduce (a no-op context on GPU).
    with cpu_compat.cpu_device_mode():
        model = GPTModel(
            config=config,
            transformer_layer_spec=layer_spec(model_cfg),
            vocab_size=padded_vocab_size(vocab_size, config.tensor_model_parallel_size),
            max_sequence_length=seq_length,
            pre_process=pre,
            post_process=post,
            parallel_output=True,
            share_embeddings_and_output_weights=shape.tie_word_embeddings,
            position_embedding_type="rope",
            rotary_base=shape.rotary_base,
            rope_scaling=shape.rope_scaling_factor is not None,  # Llama-3.1/3.2 frequency scaling
            rope_scaling_factor=shape.rope_scaling_factor or 8.0,
            **kwargs,
        )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def build_model_chunks(model_cfg: "ModelConfig", parallel: "ParallelConfig", vocab_size: int, seq_length: int,
                       seed: int, shape: LlamaShape | None = None) -> list:
    """This rank's model chunks (one per virtual pipeline stage) with layout-independent initial weights.

    Weights are set by :func:`layout_independent_init_` from ``seed`` (a run's ``train.seed``), so every
    TP/PP/VPP layout in ``parallel`` starts from the same model (what lets multi-process runs reproduce
    the one-process loss curve).

    Returns:
        ``[GPTModel, ...]`` of length ``virtual_pipeline_model_parallel_size or 1``.
    """
    vpp = parallel.virtual_pipeline_model_parallel_size
    chunks = [build_model(model_cfg, vocab_size, seq_length, shape, parallel, vp_stage)
              for vp_stage in (range(vpp) if vpp else [None])]
    layout_independent_init_(chunks, seed)
    return chunks


def _sharded_tensors(sharded: dict):
    """Every ``ShardedTensor`` of a sharded state dict (factories such as SwiGLU's fc1 are built)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    for v in nested_values(sharded):
        if isinstance(v, ShardedTensorFactory):
            built = v.build()
            yield from _sharded_tensors(built if isinstance(built, dict) else {"_": built})
        elif isinstance(v, ShardedTensor):
            yield v


@torch.no_grad()
def layout_independent_init_(chunks, seed: int) -> None:
    """Re-draw every weight matrix of ``chunks`` so its values depend only on ``seed`` and its global name.

    For each ``ShardedTensor`` of the model's ``sharded_state_dict()`` (key + layer index = the tensor's
    place in the *global* model, as ``dist_checkpointing`` names it), the full global matrix is drawn
    from ``N(0, σ²)`` with a generator seeded by ``(seed, key, layer)`` and this rank's shard is copied
    in. σ is megatron's: ``init_method_std`` for all matrices, ``init_method_std / sqrt(2·num_layers)`` for
    the output projections ``linear_proj`` and ``linear_fc2`` (Megatron's ``scaled_init_method_normal``;
    Shoeybi et al. 2019). 1-D tensors (RMSNorm weights, ones) are left as built. The result is the
    same at any TP/PP/VPP size. Cost: one full matrix per rank at a time (generated on the weight's device).
    """
    import math
    import zlib

    for chunk in chunks:
        inner = chunk
        while isinstance(getattr(inner, "module", None), torch.nn.Module):
            inner = inner.module
        cfg = inner.config
        for st in _sharded_tensors(inner.sharded_state_dict()):
            data = st.data
            if not torch.is_tensor(data) or not data.is_floating_point() or data.dim() < 2:
                continue
            k = st.prepend_axis_num
            std = cfg.init_method_std
            if st.key.endswith(("linear_proj.weight", "linear_fc2.weight")):
                std = std / math.sqrt(2.0 * cfg.num_layers)
            where = "/".join(str(o) for o in st.global_offset[:k])
            gen = torch.Generator(device=data.device).manual_seed(
                (seed * 1_000_003 + zlib.crc32(f"{st.key}@{where}".encode())) % (2**63 - 1))
            full = torch.randn(tuple(st.global_shape[k:]), generator=gen, device=data.device, dtype=torch.float32)
            index = tuple(slice(o, o + n) for o, n in zip(st.global_offset[k:], data.shape))
            data.copy_(full[index].mul_(std).to(data.dtype))
            del full


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """``(total, non_embedding)`` parameter counts of a (single-rank) GPTModel, wrapped or not.

    Non-embedding excludes the input embedding table and the output layer (Kaplan et al. 2020's N).
    """
    while isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP / Float16Module wrappers
        model = model.module
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters()
              if n.startswith("embedding.") or n.startswith("output_layer."))
    return total, total - emb


# --------------------------------------------------------------------------------------------------
# Distributed state
# --------------------------------------------------------------------------------------------------
def init_parallel(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                  seed: int = 1234, virtual_pipeline_model_parallel_size: int | None = None) -> None:
    """Initialise ``torch.distributed`` and megatron's ``parallel_state``, and seed the RNGs.

    Uses the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``) when present, else a single process with an in-memory store. Backend: NCCL on GPU,
    gloo on CPU. Idempotent for the same sizes; re-initialises megatron's groups otherwise. The
    data-parallel size is ``world_size / (tp * pp)``.

    Raises:
        MegasynthError: the world size is not divisible by ``tp * pp``.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    cpu_compat.enable()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "RANK" not in os.environ:  # one process: an in-memory store, no TCP port to race for
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    world = dist.get_world_size()
    if world % (tensor_model_parallel_size * pipeline_model_parallel_size):
        raise MegasynthError(f"train.parallel.tensor_model_parallel_size * pipeline_model_parallel_size "
                             f"({tensor_model_parallel_size}x{pipeline_model_parallel_size}) must divide "
                             f"the world size {world}")
    if parallel_state.model_parallel_is_initialized():
        if (parallel_state.get_tensor_model_parallel_world_size() != tensor_model_parallel_size
                or parallel_state.get_pipeline_model_parallel_world_size() != pipeline_model_parallel_size
                or parallel_state.get_virtual_pipeline_model_parallel_world_size()
                != virtual_pipeline_model_parallel_size):
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size, pipeline_model_parallel_size,
                                                 virtual_pipeline_model_parallel_size)
    cpu_compat.manual_seed(seed)


def destroy_parallel() -> None:
    """Destroy megatron's ``parallel_state`` groups and the default process group (if any)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
