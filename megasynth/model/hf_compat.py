"""Hugging Face Llama ↔ megatron-core Llama-3 ``GPTModel``: configs and the weight mapping (its one home).

Used by the checkpoint converter (:mod:`megasynth.model.convert`), by tests that check the megatron
model *is* Llama-3 (identical logits after copying weights), and as the reference model in
``benchmarks/train_throughput.py``.

Weight layout (megatron-core local spec at TP = PP = 1; dist_checkpointing stores the same global
tensors, stacked over layers, whatever the TP/PP layout):

- ``linear_qkv.weight`` ``[(n_heads + 2·n_groups)·d, h]`` packs, per KV group ``g``, the ``n_heads/n_groups``
  query heads of the group, then its key head, then its value head (``d`` rows each); HF keeps separate
  ``q_proj`` ``[n_heads·d, h]``, ``k_proj``/``v_proj`` ``[n_groups·d, h]``.
- ``linear_fc1.weight`` ``[2·f, h]`` is ``[gate; up]`` (megatron's GLU applies SiLU to the first half);
  HF keeps ``gate_proj`` and ``up_proj``.
- RoPE: both rotate halves (``rotary_interleaved=False`` ↔ HF ``rotate_half``); Llama-3.1/3.2 frequency
  scaling is megatron's ``rope_scaling`` with ``rope_scaling_factor`` (see
  :data:`megasynth.model.presets.LLAMA3_ROPE_SCALING`).
- Tied embeddings (``tie_word_embeddings`` ↔ ``share_embeddings_and_output_weights``): megatron has no
  ``output_layer.weight``; HF's ``lm_head.weight`` is the embedding.
- Vocabulary: megatron pads the embedding rows to a multiple of 128·TP; HF keeps ``vocab_size`` rows.
  HF → megatron fills the padding rows with zeros; megatron → HF keeps the first ``vocab_size`` rows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

import torch

from megasynth.model.presets import LLAMA3_ROPE_SCALING, LlamaShape
from megasynth.utils import MegasynthError

HF_ARCHITECTURE = "LlamaForCausalLM"


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
def hf_config_dict(shape: LlamaShape, vocab_size: int, torch_dtype: str = "float32",
                   bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """``config.json`` of ``shape`` in the published Llama-3.x format (``rope_theta``/``rope_scaling`` keys).

    transformers 4 and 5 and vLLM read this format (transformers 5 converts it to ``rope_parameters``).
    ``vocab_size`` is the number of embedding rows written to the safetensors.
    """
    rope_theta = float(shape.rotary_base)
    d = {
        "architectures": [HF_ARCHITECTURE], "model_type": "llama",
        "vocab_size": int(vocab_size), "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size, "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads, "num_key_value_heads": shape.num_query_groups,
        "head_dim": shape.kv_channels, "hidden_act": "silu", "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.norm_epsilon, "rope_theta": rope_theta, "rope_scaling": None,
        "tie_word_embeddings": shape.tie_word_embeddings, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "torch_dtype": torch_dtype,
    }
    if shape.rope_scaling_factor is not None:
        d["rope_scaling"] = {"rope_type": "llama3", "factor": float(shape.rope_scaling_factor), **LLAMA3_ROPE_SCALING}
    return d


def hf_llama_config(shape: LlamaShape, vocab_size: int, max_position_embeddings: int | None = None):
    """``transformers.LlamaConfig`` of ``shape`` (no biases; RoPE base, scaling and tying as the shape)."""
    from transformers import LlamaConfig

    d = hf_config_dict(replace(shape, max_position_embeddings=max_position_embeddings or shape.max_position_embeddings),
                       vocab_size)
    for k in ("architectures", "model_type", "torch_dtype"):
        d.pop(k)
    d["pad_token_id"] = None
    return LlamaConfig(**d)


def _rope(cfg: Mapping, where: str) -> tuple[float, float | None]:
    """(rope_theta, llama3 scaling factor or None) from a transformers 4 or 5 style config."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "rope_type" in params:  # transformers 5
        theta, scaling = params.get("rope_theta", cfg.get("rope_theta", 10000.0)), params
        key = "rope_parameters"
    else:
        theta, scaling, key = cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling"), "rope_scaling"
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise MegasynthError(f"{where}: {key}.rope_type {rope_type!r} is not supported (known: default, llama3)")
    for k, v in LLAMA3_ROPE_SCALING.items():
        if float(scaling.get(k, v)) != float(v):
            raise MegasynthError(f"{where}: {key}.{k} = {scaling.get(k)} is not supported; megatron-core 0.16 "
                                 f"implements llama3 RoPE scaling only with {k} = {v}")
    if "factor" not in scaling:
        raise MegasynthError(f"{where}: {key}.factor: required for rope_type llama3")
    return float(theta), float(scaling["factor"])


def shape_from_hf_config(cfg: Mapping, where: str = "config.json") -> LlamaShape:
    """The :class:`LlamaShape` of a HF Llama ``config.json`` (dict), any size.

    Args:
        cfg: the parsed ``config.json`` (transformers 4 ``rope_scaling`` or 5 ``rope_parameters`` style).
        where: file name used in error messages.

    Returns:
        The shape, with ``vocab_size`` = the config's ``vocab_size`` and ``hf_model`` = its ``_name_or_path``.

    Raises:
        MegasynthError: not a Llama config (``model_type``/``architectures``), a missing field, biases, an
            activation other than SiLU, ``head_dim`` other than ``hidden_size / num_attention_heads``,
            RoPE scaling other than Llama-3's (naming the field).
    """
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or [HF_ARCHITECTURE]
    if model_type != "llama":
        raise MegasynthError(f"{where}: model_type is {model_type!r}, not 'llama' (only Llama checkpoints convert)")
    if HF_ARCHITECTURE not in archs:
        raise MegasynthError(f"{where}: architectures {archs} do not include {HF_ARCHITECTURE}")
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    for k in need:
        if not isinstance(cfg.get(k), int) or cfg[k] <= 0:
            raise MegasynthError(f"{where}: {k}: required positive integer, got {cfg.get(k)!r}")
    heads = cfg["num_attention_heads"]
    groups = cfg.get("num_key_value_heads") or heads
    if heads % groups:
        raise MegasynthError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {groups}")
    if cfg["hidden_size"] % heads:
        raise MegasynthError(f"{where}: hidden_size {cfg['hidden_size']} is not a multiple of num_attention_heads {heads}")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    if head_dim != cfg["hidden_size"] // heads:
        raise MegasynthError(f"{where}: head_dim {head_dim} != hidden_size / num_attention_heads "
                             f"= {cfg['hidden_size'] // heads} is not supported")
    for k in ("attention_bias", "mlp_bias"):
        if cfg.get(k):
            raise MegasynthError(f"{where}: {k}: true is not supported (Llama-3 has no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise MegasynthError(f"{where}: hidden_act {cfg.get('hidden_act')!r} is not supported (Llama uses silu)")
    theta, factor = _rope(cfg, where)
    return LlamaShape(
        num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"], ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=heads, num_query_groups=groups,
        rotary_base=int(theta) if float(theta).is_integer() else theta,  # type: ignore[arg-type]
        vocab_size=cfg["vocab_size"], max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)), tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling_factor=factor, hf_model=cfg.get("_name_or_path") or None)


def read_hf_config(model_dir: str | Path) -> tuple[dict, LlamaShape]:
    """``(config dict, shape)`` of a local HF model directory (its ``config.json``).

    Raises:
        MegasynthError: no directory or ``config.json``, invalid JSON (``file:line``), not a Llama config.
    """
    from megasynth.utils import read_json

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MegasynthError(f"{model_dir}: HF model directory not found")
    path = model_dir / "config.json"
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise MegasynthError(f"{path}: expected a JSON object")
    return cfg, shape_from_hf_config(cfg, str(path))


# --------------------------------------------------------------------------------------------------
# Weights (one layer at a time, so large checkpoints stream)
# --------------------------------------------------------------------------------------------------
def hf_layer_names(i: int) -> list[str]:
    """HF tensor names of decoder layer ``i``."""
    q = f"model.layers.{i}."
    return [q + n for n in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                            "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                            "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight")]


def hf_tensor_shapes(shape: LlamaShape, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Expected shape of every HF tensor of ``shape`` (``lm_head.weight`` only when untied)."""
    h, f, d = shape.hidden_size, shape.ffn_hidden_size, shape.kv_channels
    n_h, n_g = shape.num_attention_heads, shape.num_query_groups
    out = {"model.embed_tokens.weight": (vocab_size, h), "model.norm.weight": (h,)}
    if not shape.tie_word_embeddings:
        out["lm_head.weight"] = (vocab_size, h)
    per = [(n_h * d, h), (n_g * d, h), (n_g * d, h), (h, n_h * d), (f, h), (f, h), (h, f), (h,), (h,)]
    for i in range(shape.num_layers):
        out.update(zip(hf_layer_names(i), per))
    return out


def megatron_layer_to_hf(get: Callable[[str], torch.Tensor], i: int, shape: LlamaShape) -> dict[str, torch.Tensor]:
    """HF tensors of decoder layer ``i`` from megatron's (local-spec, TP=1 names) ``get("decoder.layers.{i}.…")``."""
    h, d = shape.hidden_size, shape.kv_channels
    n_h, n_g = shape.num_attention_heads, shape.num_query_groups
    per = n_h // n_g
    p, q = f"decoder.layers.{i}.", f"model.layers.{i}."
    qkv = get(p + "self_attention.linear_qkv.weight").reshape(n_g, per + 2, d, h)
    gate, up = torch.chunk(get(p + "mlp.linear_fc1.weight"), 2, dim=0)
    return {q + "self_attn.q_proj.weight": qkv[:, :per].reshape(n_h * d, h),
            q + "self_attn.k_proj.weight": qkv[:, per].reshape(n_g * d, h),
            q + "self_attn.v_proj.weight": qkv[:, per + 1].reshape(n_g * d, h),
            q + "self_attn.o_proj.weight": get(p + "self_attention.linear_proj.weight"),
            q + "mlp.gate_proj.weight": gate, q + "mlp.up_proj.weight": up,
            q + "mlp.down_proj.weight": get(p + "mlp.linear_fc2.weight"),
            q + "input_layernorm.weight": get(p + "input_layernorm.weight"),
            q + "post_attention_layernorm.weight": get(p + "pre_mlp_layernorm.weight")}


def hf_layer_to_megatron(get: Callable[[str], torch.Tensor], i: int, shape: LlamaShape) -> dict[str, torch.Tensor]:
    """Megatron (local-spec, TP=1 names) tensors of decoder layer ``i`` from HF's ``get("model.layers.{i}.…")``."""
    h, d = shape.hidden_size, shape.kv_channels
    n_h, n_g = shape.num_attention_heads, shape.num_query_groups
    per = n_h // n_g
    p, q = f"decoder.layers.{i}.", f"model.layers.{i}."
    qkv = torch.cat([get(q + "self_attn.q_proj.weight").reshape(n_g, per, d, h),
                     get(q + "self_attn.k_proj.weight").reshape(n_g, 1, d, h),
                     get(q + "self_attn.v_proj.weight").reshape(n_g, 1, d, h)], dim=1)
    return {p + "self_attention.linear_qkv.weight": qkv.reshape((n_h + 2 * n_g) * d, h),
            p + "self_attention.linear_proj.weight": get(q + "self_attn.o_proj.weight"),
            p + "mlp.linear_fc1.weight": torch.cat([get(q + "mlp.gate_proj.weight"), get(q + "mlp.up_proj.weight")]),
            p + "mlp.linear_fc2.weight": get(q + "mlp.down_proj.weight"),
            p + "input_layernorm.weight": get(q + "input_layernorm.weight"),
            p + "pre_mlp_layernorm.weight": get(q + "post_attention_layernorm.weight")}


def pad_vocab_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight [V, h]`` with zero rows appended up to ``rows`` (megatron's padded vocabulary)."""
    if weight.shape[0] == rows:
        return weight
    if weight.shape[0] > rows:
        raise MegasynthError(f"vocabulary of {weight.shape[0]} rows does not fit {rows} padded rows")
    return torch.cat([weight, weight.new_zeros(rows - weight.shape[0], weight.shape[1])])


@torch.no_grad()
def megatron_to_hf_state_dict(model: torch.nn.Module | Mapping[str, torch.Tensor], shape: LlamaShape,
                              vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """HF ``LlamaForCausalLM`` state dict from a single-rank megatron ``GPTModel`` (local spec) or its state dict.

    ``vocab_size``: keep the first this many embedding rows (default: all, the padded vocabulary).
    Tensors are copies.
    """
    sd = model.state_dict() if isinstance(model, torch.nn.Module) else model
    sd = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
    v = vocab_size or sd["embedding.word_embeddings.weight"].shape[0]
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:v],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    if not shape.tie_word_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"][:v]
    for i in range(shape.num_layers):
        out.update(megatron_layer_to_hf(sd.__getitem__, i, shape))
    return {k: t.clone().contiguous() for k, t in out.items()}


@torch.no_grad()
def hf_to_megatron_state_dict(hf: Mapping[str, torch.Tensor], shape: LlamaShape,
                              padded_vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """Megatron ``GPTModel`` (local spec, TP = PP = 1) state dict from a HF Llama state dict.

    ``padded_vocab_size``: embedding rows of the megatron model (zero rows appended; default: HF's rows).
    """
    emb = hf["model.embed_tokens.weight"]
    rows = padded_vocab_size or emb.shape[0]
    out = {"embedding.word_embeddings.weight": pad_vocab_rows(emb, rows),
           "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    if not shape.tie_word_embeddings:
        out["output_layer.weight"] = pad_vocab_rows(hf["lm_head.weight"], rows)
    for i in range(shape.num_layers):
        out.update(hf_layer_to_megatron(hf.__getitem__, i, shape))
    return {k: t.clone().contiguous() for k, t in out.items()}


def to_hf_llama(model: torch.nn.Module, shape: LlamaShape, vocab_size: int):
    """A ``LlamaForCausalLM`` (fp32, eval mode) with the weights of megatron ``model``.

    ``vocab_size`` is the model's (padded) embedding rows.
    """
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(hf_llama_config(shape, vocab_size))
    hf.load_state_dict(megatron_to_hf_state_dict(model, shape), strict=not shape.tie_word_embeddings)
    if shape.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()
