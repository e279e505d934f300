"""Llama-3 presets → megatron-core ``TransformerConfig`` + ``GPTModel`` (local or Transformer Engine spec).

The Llama-3 recipe on megatron-core (see Megatron-LM ``examples/llama`` and the Llama-3 paper,
Grattafiori et al. 2024, Table 3): RMSNorm (eps 1e-5), SwiGLU MLP (``gated_linear_unit=True``, SiLU),
rotary position embeddings with base 500,000, grouped-query attention (``num_query_groups``), no
linear biases, untied input/output embeddings, and a vocabulary padded to a multiple of 128
(Megatron's ``make_vocab_size_divisible_by``).

Layer specs: ``transformer_impl == "local"`` uses megatron-core's pure-PyTorch
``get_gpt_layer_local_spec`` (CPU, fp32); ``"transformer_engine"`` uses
``get_gpt_layer_with_transformer_engine_spec`` (GPU; bf16, or fp8 with the ``hybrid`` format:
E4M3 forward, E5M2 backward).

Distributed state: :func:`init_parallel` initialises ``torch.distributed`` (gloo on CPU, NCCL on GPU;
a single process when no ``torchrun`` environment is set) and megatron's ``parallel_state``;
:func:`destroy_parallel` tears both down (tests call it between models).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from megasynth.model import cpu_compat
from megasynth.model.presets import LlamaShape, get_preset
from megasynth.utils import MegasynthError

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import ModelConfig

logger = logging.getLogger("megasynth.model")

VOCAB_DIVISIBLE_BY = 128
"""Padding multiple of the embedding rows (Megatron's ``--make-vocab-size-divisible-by``)."""

_TE_INSTALL = ("Transformer Engine is required for model.transformer_impl: transformer_engine "
               "(and fp8); install it with `pip install --no-build-isolation transformer_engine[pytorch]` "
               "or use the NGC PyTorch image (docker/Dockerfile)")


def padded_vocab_size(vocab_size: int, tp: int = 1, divisible_by: int = VOCAB_DIVISIBLE_BY) -> int:
    """Tokenizer vocabulary padded up to a multiple of ``divisible_by * tp`` (Megatron's rule).

    Raises:
        MegasynthError: ``vocab_size`` is not positive.
    """
    if vocab_size <= 0:
        raise MegasynthError(f"vocab_size: must be > 0, got {vocab_size}")
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def _precision_kwargs(precision: str, transformer_impl: str) -> dict:
    if precision == "fp32":
        return {"params_dtype": torch.float32}
    if precision == "bf16":
        return {"bf16": True, "params_dtype": torch.bfloat16, "pipeline_dtype": torch.bfloat16}
    if precision == "fp16":
        return {"fp16": True, "params_dtype": torch.float16, "pipeline_dtype": torch.float16}
    if precision == "fp8":
        if transformer_impl != "transformer_engine":
            raise MegasynthError("model.precision: fp8 needs model.transformer_impl: transformer_engine")
        # FP8 compute with bf16 parameters/activations; hybrid = E4M3 forward, E5M2 gradients.
        return {"bf16": True, "params_dtype": torch.bfloat16, "pipeline_dtype": torch.bfloat16,
                "fp8": "hybrid", "fp8_recipe": "delayed"}
    raise MegasynthError(f"model.precision: unknown precision {precision!r} (known: fp32, bf16, fp16, fp8)")


def transformer_config(model_cfg: "ModelConfig", shape: LlamaShape | None = None,
                       tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1):
    """The megatron-core ``TransformerConfig`` of a Llama-3 preset.

    Args:
        model_cfg: ``preset``, ``transformer_impl``, ``precision``, ``init_method_std``.
        shape: overrides the preset's shape (tests, benchmarks).
        tensor_model_parallel_size / pipeline_model_parallel_size: must match :func:`init_parallel`.

    Returns:
        ``megatron.core.transformer.TransformerConfig`` (dropout 0, no fusions on CPU).

    Raises:
        MegasynthError: unknown preset or precision; fp8 without Transformer Engine.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    shape = shape or get_preset(model_cfg.preset)
    on_gpu = torch.cuda.is_available()
    te = model_cfg.transformer_impl == "transformer_engine"
    if te:
        _require_te()
    if shape.num_attention_heads % shape.num_query_groups:
        raise MegasynthError(f"model.preset: num_attention_heads {shape.num_attention_heads} "
                             f"is not a multiple of num_query_groups {shape.num_query_groups}")
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
        sequence_parallel=False,
        # Fused kernels exist only on GPU (TE / apex / megatron CUDA extensions).
        bias_activation_fusion=te and on_gpu,
        bias_dropout_fusion=te and on_gpu,
        masked_softmax_fusion=te and on_gpu,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        use_cpu_initialization=not on_gpu,
        attention_softmax_in_fp32=True,
        **_precision_kwargs(model_cfg.precision, model_cfg.transformer_impl),
    )


def _require_te() -> None:
    try:
        import transformer_engine  # noqa: F401  # type: ignore[import-not-found]
    except ImportError:
        raise MegasynthError(_TE_INSTALL) from None


def layer_spec(model_cfg: "ModelConfig"):
    """megatron-core layer spec for ``model_cfg.transformer_impl`` (``local`` or ``transformer_engine``)."""
    from megatron.core.models.gpt import gpt_layer_specs

    if model_cfg.transformer_impl == "local":
        return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    if model_cfg.transformer_impl == "transformer_engine":
        _require_te()
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    raise MegasynthError(f"model.transformer_impl: unknown {model_cfg.transformer_impl!r} "
                         "(known: local, transformer_engine)")


def build_model(model_cfg: "ModelConfig", vocab_size: int, seq_length: int, shape: LlamaShape | None = None,
                tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1):
    """Build the Llama-3 ``GPTModel`` of ``model_cfg.preset`` on megatron-core.

    Requires :func:`init_parallel` first (megatron's ``parallel_state``). Weights are initialised from
    torch's default generator (seed it with :func:`megasynth.model.cpu_compat.manual_seed`).

    Args:
        vocab_size: tokenizer vocabulary (ids); the embedding has :func:`padded_vocab_size` rows.
        seq_length: longest sequence in tokens (RoPE table length); at most the preset's
            ``max_position_embeddings``.

    Returns:
        ``GPTModel``; ``model(input_ids [b, s], position_ids [b, s], attention_mask=None)`` returns
        logits ``[b, s, V_padded]``, or per-token losses ``[b, s]`` when ``labels [b, s]`` is given.

    Raises:
        MegasynthError: ``seq_length`` beyond the preset, bad preset/precision/impl, TE missing.
    """
    from megatron.core.models.gpt import GPTModel

    shape = shape or get_preset(model_cfg.preset)
    if seq_length <= 0 or seq_length > shape.max_position_embeddings:
        raise MegasynthError(f"train.seq_length: must be in [1, {shape.max_position_embeddings}] for preset "
                             f"{model_cfg.preset!r}, got {seq_length}")
    cpu_compat.enable()
    config = transformer_config(model_cfg, shape, tensor_model_parallel_size, pipeline_model_parallel_size)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model_cfg),
        vocab_size=padded_vocab_size(vocab_size, tensor_model_parallel_size),
        max_sequence_length=seq_length,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=shape.rotary_base,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


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
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_parallel(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                  seed: int = 1234) -> None:
    """Initialise ``torch.distributed`` and megatron's ``parallel_state``, and seed the RNGs.

    Uses the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``) when present, else a single process on a free local port. Backend: NCCL on GPU,
    gloo on CPU. Idempotent for the same sizes; re-initialises megatron's groups otherwise.

    Raises:
        MegasynthError: the world size is not divisible by ``tp * pp``.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    cpu_compat.enable()
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(_free_port())
            rank, world = 0, 1
        else:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, rank=rank, world_size=world)
    world = dist.get_world_size()
    if world % (tensor_model_parallel_size * pipeline_model_parallel_size):
        raise MegasynthError(f"train.tensor_model_parallel_size * pipeline_model_parallel_size "
                             f"({tensor_model_parallel_size}x{pipeline_model_parallel_size}) must divide "
                             f"the world size {world}")
    if parallel_state.model_parallel_is_initialized():
        if (parallel_state.get_tensor_model_parallel_world_size() != tensor_model_parallel_size
                or parallel_state.get_pipeline_model_parallel_world_size() != pipeline_model_parallel_size):
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size, pipeline_model_parallel_size)
    cpu_compat.manual_seed(seed)


def destroy_parallel() -> None:
    """Destroy megatron's ``parallel_state`` groups and the default process group (if any)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
