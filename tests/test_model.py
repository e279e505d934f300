"""Llama-3 on megatron-core: shapes, parameter counts, spec choices, HF parity (CPU, llama3-micro)."""

from __future__ import annotations

import pytest
import torch

from megasynth.config import ModelConfig
from megasynth.model import builder, cpu_compat
from megasynth.model.presets import PRESETS, get_preset
from megasynth.utils import MegasynthError

VOCAB = 500  # tokenizer ids; the model pads to 512


@pytest.fixture(scope="module")
def parallel():
    builder.init_parallel(1, 1, seed=1234)
    yield
    builder.destroy_parallel()


@pytest.fixture(scope="module")
def micro(parallel):
    cpu_compat.manual_seed(1234)
    return builder.build_model(ModelConfig(preset="llama3-micro"), VOCAB, seq_length=64)


def test_padded_vocab_size():
    assert builder.padded_vocab_size(500) == 512
    assert builder.padded_vocab_size(8192) == 8192
    assert builder.padded_vocab_size(128_256) == 128_256
    assert builder.padded_vocab_size(8193, tp=2) == 8448
    with pytest.raises(MegasynthError, match="vocab_size"):
        builder.padded_vocab_size(0)


def test_param_counts_match_preset(micro):
    shape = get_preset("llama3-micro")
    total, non_emb = builder.count_params(micro)
    assert total == shape.total_params(512)
    assert non_emb == shape.non_embedding_params()


def test_llama3_spec_choices(micro):
    shape = get_preset("llama3-micro")
    cfg = micro.config
    assert not [n for n, _ in micro.named_parameters() if n.endswith("bias")]  # no linear biases
    norms = [m for m in micro.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * shape.num_layers + 1
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in micro.modules())
    assert cfg.gated_linear_unit and cfg.activation_func is torch.nn.functional.silu
    assert cfg.num_query_groups == shape.num_query_groups < shape.num_attention_heads  # GQA
    qkv = micro.decoder.layers[0].self_attention.linear_qkv.weight
    assert qkv.shape == ((shape.num_attention_heads + 2 * shape.num_query_groups) * shape.kv_channels,
                         shape.hidden_size)
    assert micro.decoder.layers[0].mlp.linear_fc1.weight.shape == (2 * shape.ffn_hidden_size, shape.hidden_size)
    assert micro.rotary_pos_emb.inv_freq[1].item() == pytest.approx(500_000 ** (-2 / shape.kv_channels))
    assert micro.output_layer.weight.data_ptr() != micro.embedding.word_embeddings.weight.data_ptr()
    assert not micro.share_embeddings_and_output_weights


def test_forward_shapes(micro):
    b, s = 3, 16
    tokens = torch.randint(0, VOCAB, (b, s))
    pos = torch.arange(s).unsqueeze(0).expand(b, -1)
    with torch.no_grad():
        logits = micro(tokens, pos, None)
        losses = micro(tokens, pos, None, labels=tokens)
    assert logits.shape == (b, s, 512)
    assert losses.shape == (b, s)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), tokens.reshape(-1), reduction="none")
    torch.testing.assert_close(losses.reshape(-1), ref, rtol=1e-4, atol=1e-4)


def test_matches_hf_llama(micro):
    """Same weights in transformers' LlamaForCausalLM give the same logits: the model is Llama-3."""
    from megasynth.model.hf_compat import to_hf_llama

    shape = get_preset("llama3-micro")
    # Non-trivial norm weights so a swapped norm would show.
    with torch.no_grad():
        for m in micro.modules():
            if isinstance(m, torch.nn.RMSNorm):
                m.weight.uniform_(0.5, 1.5)
    hf = to_hf_llama(micro, shape, 512)
    b, s = 2, 24
    tokens = torch.randint(0, VOCAB, (b, s))
    pos = torch.arange(s).unsqueeze(0).expand(b, -1)
    with torch.no_grad():
        ours = micro(tokens, pos, None)
        theirs = hf(input_ids=tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_bad_inputs(parallel):
    with pytest.raises(MegasynthError, match="seq_length"):
        builder.build_model(ModelConfig(preset="llama3-micro"), VOCAB, seq_length=PRESETS["llama3-micro"]
                            .max_position_embeddings + 1)
    with pytest.raises(MegasynthError, match="preset"):
        builder.build_model(ModelConfig(preset="nope"), VOCAB, seq_length=16)
    if not torch.cuda.is_available():
        with pytest.raises(MegasynthError, match="pip install"):
            builder.build_model(ModelConfig(preset="llama3-micro", transformer_impl="transformer_engine",
                                            precision="bf16"), VOCAB, seq_length=16)


def test_transformer_config_precision():
    cfg = builder.transformer_config(ModelConfig(preset="llama3-tiny", precision="bf16"))
    assert cfg.bf16 and cfg.params_dtype == torch.bfloat16
    cfg = builder.transformer_config(ModelConfig(preset="llama3-8b"))
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_query_groups) == (32, 4096, 8)
    assert cfg.params_dtype == torch.float32 and cfg.normalization == "RMSNorm" and not cfg.add_bias_linear
    with pytest.raises(MegasynthError, match="fp8"):
        builder.transformer_config(ModelConfig(preset="llama3-tiny", precision="fp8"))
