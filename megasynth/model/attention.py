"""Core attention through PyTorch's ``scaled_dot_product_attention`` for megatron-core's local spec.

megatron-core's local spec (``get_gpt_layer_local_spec``) computes attention with ``DotProductAttention``:
``baddbmm`` of Q·Kᵀ into a ``[b·n, s, s]`` score tensor, a softmax (in fp32 under
``attention_softmax_in_fp32``; megatron's fused CUDA softmax kernels are not in its wheel), then ``bmm`` with V.
At ``s = 4096`` that materialises and keeps several ``[b, n, s, s]`` tensors per layer for backward. Without
Transformer Engine, neither megatron-core 0.16.1 nor 0.19.2 offers another core attention for GPT
models: ``AttnBackend`` only sets Transformer Engine's ``NVTE_*_ATTN`` variables, the ``flash_attn`` calls in
``transformer/attention.py`` serve inference (flash decoding with a KV cache), the "kitchen" attention
modules are stubs of an unreleased extension, and 0.19.2's ``MultiHeadAttentionWithSDPA`` is a standalone
module of the audio encoder with its own projections, not a ``core_attention`` submodule.

:class:`SDPAttention` is that ``core_attention`` submodule: the same constructor and ``forward`` as
``DotProductAttention`` (it subclasses it, so checkpoints and the ``softmax_offset`` sharding are unchanged;
it has no parameters of its own), with the score/softmax/context computation replaced by one
``torch.nn.functional.scaled_dot_product_attention`` call, which on CUDA runs a flash-attention kernel
(torch picks it for bf16/fp16 and head dims up to 256) and on CPU a fused or the math kernel. Grouped-query
attention goes to SDPA as ``enable_gqa=True`` (KV group ``g`` serves query heads ``g·n/ng … (g+1)·n/ng − 1``,
megatron's ``repeat_interleave`` order), as Hugging Face's ``sdpa_attention_forward`` does when no mask is
given; with an explicit mask the K/V heads are repeated first.

Selected by ``model.attention_backend: sdpa`` (:func:`megasynth.model.builder.layer_spec`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPAttention(DotProductAttention):
    """megatron-core core attention computed by ``torch.nn.functional.scaled_dot_product_attention``.

    Supports what the Llama-3 presets use: causal self-attention, grouped-query attention, any tensor-parallel
    size (heads are split by megatron's ``Attention`` before this module), dropout, the ``vanilla`` softmax,
    no sliding window, no packed sequences, no attention bias.

    Raises:
        ValueError: at construction, a config this module does not implement (``softmax_type`` other than
            ``vanilla``, ``window_size``, ``apply_query_key_layer_scaling``); at ``forward``, packed sequences
            or an attention bias.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.config
        if getattr(cfg, "softmax_type", "vanilla") != "vanilla":
            raise ValueError(f"SDPAttention: softmax_type {cfg.softmax_type!r} is not supported (vanilla only)")
        if cfg.window_size is not None:
            raise ValueError("SDPAttention: sliding-window attention (window_size) is not supported")
        if cfg.apply_query_key_layer_scaling:
            raise ValueError("SDPAttention: apply_query_key_layer_scaling is not supported")

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias: Optional[torch.Tensor] = None, packed_seq_params=None) -> torch.Tensor:
        """Attention context of ``query [sq, b, n/p, hn]``, ``key``/``value [sk, b, ng/p, hn]``.

        Args:
            attention_mask: ``None`` for the causal mask of the module's mask type (what GPTModel passes when
                called with ``attention_mask=None``), or megatron's boolean mask broadcastable to
                ``[b, n/p, sq, sk]`` with ``True`` = masked out, used instead of it (as ``DotProductAttention``
                does; a fully masked row gives NaN here, where megatron's ``-10000`` fill gives a uniform row).
            attn_mask_type: ignored, as by ``DotProductAttention``.

        Returns:
            Context ``[sq, b, hp]`` with ``hp = n/p · hn`` (the layout ``DotProductAttention`` returns).
        """
        if packed_seq_params is not None:
            raise ValueError("SDPAttention: packed sequences are not supported")
        if attention_bias is not None:
            raise ValueError("SDPAttention: attention_bias is not supported")
        # Like DotProductAttention (whose softmax reads the mask type it was built with, not this argument):
        # the causal mask only when no mask is given and sq > 1 (sq = 1 is one token against a KV cache).
        sq, b, n, hn = query.shape
        causal = self.attn_mask_type == AttnMaskType.causal and attention_mask is None and sq > 1
        # [s, b, heads, hn] -> [b, heads, s, hn] (views; the last dimension stays contiguous)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        groups = n // k.size(1)
        mask = None
        if attention_mask is not None:
            mask = ~attention_mask.bool()  # megatron: True = masked out; SDPA: True = attend
            if groups > 1:  # masked GQA falls back to the math kernel on CUDA; repeat the KV heads instead
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
                groups = 1
        dropout = self.attention_dropout.p if self.training else 0.0
        kwargs = {"enable_gqa": True} if groups > 1 else {}
        if dropout > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                         is_causal=causal, scale=self.softmax_scale, **kwargs)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                                     scale=self.softmax_scale, **kwargs)
        # [b, n, sq, hn] -> [sq, b, n * hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, n * hn)
