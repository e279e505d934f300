"""Hugging Face ``LlamaForCausalLM`` of the same shape as a megatron-core Llama-3 ``GPTModel``.

Used to check that the megatron model *is* Llama-3 (identical logits after copying weights) and as the
reference in ``benchmarks/train_throughput.py``. Weight layout differences (megatron-core local spec,
TP = PP = 1):

- ``linear_qkv.weight`` ``[(n_heads + 2·n_groups)·d, h]`` packs, per KV group ``g``, the ``n_heads/n_groups``
  query heads of the group, then its key head, then its value head (``d`` rows each); HF keeps separate
  ``q_proj`` ``[n_heads·d, h]``, ``k_proj``/``v_proj`` ``[n_groups·d, h]``.
- ``linear_fc1.weight`` ``[2·f, h]`` is ``[gate; up]`` (megatron's GLU applies SiLU to the first half);
  HF keeps ``gate_proj`` and ``up_proj``.
- RoPE: both rotate halves (``rotary_interleaved=False`` ↔ HF ``rotate_half``).
"""

from __future__ import annotations

import torch

from megasynth.model.presets import LlamaShape


def hf_llama_config(shape: LlamaShape, vocab_size: int, max_position_embeddings: int | None = None):
    """``transformers.LlamaConfig`` of ``shape`` (untied embeddings, no biases, RoPE base as the preset)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_query_groups, head_dim=shape.kv_channels, hidden_act="silu",
        max_position_embeddings=max_position_embeddings or shape.max_position_embeddings,
        rms_norm_eps=shape.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(shape.rotary_base)},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)


@torch.no_grad()
def megatron_to_hf_state_dict(model: torch.nn.Module, shape: LlamaShape) -> dict[str, torch.Tensor]:
    """HF ``LlamaForCausalLM`` state dict from a single-rank megatron ``GPTModel`` (local spec)."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    h, d = shape.hidden_size, shape.kv_channels
    n_h, n_g = shape.num_attention_heads, shape.num_query_groups
    per = n_h // n_g
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"],
           "lm_head.weight": sd["output_layer.weight"]}
    for i in range(shape.num_layers):
        p, q = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[p + "self_attention.linear_qkv.weight"].view(n_g, per + 2, d, h)
        out[q + "self_attn.q_proj.weight"] = qkv[:, :per].reshape(n_h * d, h)
        out[q + "self_attn.k_proj.weight"] = qkv[:, per].reshape(n_g * d, h)
        out[q + "self_attn.v_proj.weight"] = qkv[:, per + 1].reshape(n_g * d, h)
        out[q + "self_attn.o_proj.weight"] = sd[p + "self_attention.linear_proj.weight"]
        gate, up = torch.chunk(sd[p + "mlp.linear_fc1.weight"], 2, dim=0)
        out[q + "mlp.gate_proj.weight"], out[q + "mlp.up_proj.weight"] = gate, up
        out[q + "mlp.down_proj.weight"] = sd[p + "mlp.linear_fc2.weight"]
        out[q + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "pre_mlp_layernorm.weight"]
    return {k: v.clone() for k, v in out.items()}


def to_hf_llama(model: torch.nn.Module, shape: LlamaShape, vocab_size: int):
    """A ``LlamaForCausalLM`` (fp32, eval mode) with the weights of megatron ``model``.

    ``vocab_size`` is the model's (padded) embedding rows.
    """
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(hf_llama_config(shape, vocab_size))
    hf.load_state_dict(megatron_to_hf_state_dict(model, shape), strict=True)
    return hf.eval()
