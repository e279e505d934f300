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


def test_published_parameter_counts():
    """Hand-computed / published counts: Llama-3.1-8B has 8,030,261,248 parameters (untied embeddings);
    Llama-3.2-1B and -3B publish 1,235,814,400 and 3,212,749,824 (tied embeddings, as the presets)."""
    v = 128_256  # published vocabulary
    assert get_preset("llama3-1b").vocab_size == get_preset("llama3-8b").vocab_size == v
    b8 = get_preset("llama3-8b")
    assert b8.non_embedding_params() == 6_979_588_096
    assert b8.total_params() == 8_030_261_248
    assert get_preset("llama3-1b").total_params() == 1_235_814_400
    assert get_preset("llama3-3b").total_params() == 3_212_749_824
    # llama3-100m by hand: 12 x (2·768² + 2·768·4·64 + 3·768·2048 + 2·768) + 768
    assert get_preset("llama3-100m").non_embedding_params() == 12 * (1_179_648 + 393_216 + 4_718_592 + 1_536) + 768


def test_train_flops_per_token_by_hand():
    """6·(N_non_emb + V·h) + 6·n_layer·n_ctx·d_model (Kaplan et al. 2020, Table 1)."""
    b8 = get_preset("llama3-8b")
    assert b8.train_flops_per_token(8192) == 6 * (6_979_588_096 + 128_256 * 4096) + 6 * 32 * 8192 * 4096
    assert b8.train_flops_per_token(8192) == 51_471_998_976
    micro = get_preset("llama3-micro")
    assert micro.train_flops_per_token(64, 512) == 6 * (micro.non_embedding_params() + 512 * 64) + 6 * 2 * 64 * 64


def test_layout_independent_init(parallel):
    """Initial weights depend only on the seed and each tensor's global name, not on torch's RNG state."""
    import math
    import zlib

    from megasynth.config import ParallelConfig

    cpu_compat.manual_seed(1)
    a = builder.build_model_chunks(ModelConfig(preset="llama3-micro"), ParallelConfig(), VOCAB, seq_length=32, seed=5)
    cpu_compat.manual_seed(2)
    b = builder.build_model_chunks(ModelConfig(preset="llama3-micro"), ParallelConfig(), VOCAB, seq_length=32, seed=5)
    for (na, pa), (_, pb) in zip(a[0].named_parameters(), b[0].named_parameters()):
        assert torch.equal(pa, pb), na
    emb = a[0].embedding.word_embeddings.weight
    gen = torch.Generator().manual_seed((5 * 1_000_003 + zlib.crc32(b"embedding.word_embeddings.weight@")) % (2**63 - 1))
    assert torch.equal(emb, torch.randn(emb.shape, generator=gen) * 0.02)
    proj = a[0].decoder.layers[1].self_attention.linear_proj.weight
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)  # scaled output init
    assert torch.equal(a[0].decoder.final_layernorm.weight, torch.ones(64))


def test_parallel_options_reach_transformer_config():
    from megasynth.config import ParallelConfig

    p = ParallelConfig(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    cfg = builder.transformer_config(ModelConfig(preset="llama3-tiny"), parallel=p)
    assert (cfg.recompute_granularity, cfg.recompute_method, cfg.recompute_num_layers) == ("full", "uniform", 1)
    assert cfg.pipeline_dtype == torch.float32 and not cfg.sequence_parallel
    with pytest.raises(MegasynthError, match="pipeline_model_parallel_size"):
        builder.transformer_config(ModelConfig(preset="llama3-micro"),
                                   parallel=ParallelConfig(pipeline_model_parallel_size=4))
    with pytest.raises(MegasynthError, match="tensor_model_parallel_size"):
        builder.transformer_config(ModelConfig(preset="llama3-micro"),
                                   parallel=ParallelConfig(tensor_model_parallel_size=4))


def _te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _te_available(), reason="needs CUDA and Transformer Engine")
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_te_spec_trains_on_gpu(parallel, precision):
    """TE spec in bf16 and FP8 (hybrid format, current/tensorwise scaling, first/last layer in bf16): a few
    AdamW steps on one repeated batch lower the loss."""
    from megasynth.config import OptimizerConfig, TrainConfig
    from megasynth.train.step import setup_model_and_optimizer, train_step

    mcfg = ModelConfig(preset="llama3-tiny", transformer_impl="transformer_engine", precision=precision,
                       fp8_recipe="tensorwise", first_last_layers_bf16=precision == "fp8")
    t = TrainConfig(seq_length=128, micro_batch_size=4, global_batch_size=4, train_iters=20,
                    optimizer=OptimizerConfig(lr_warmup_iters=1, lr=1e-3))
    cfg = builder.transformer_config(mcfg, parallel=t.parallel)
    if precision == "fp8":
        assert cfg.fp8 == "hybrid" and cfg.fp8_recipe == "tensorwise" and cfg.first_last_layers_bf16
    model, opt, sched = setup_model_and_optimizer(mcfg, t, VOCAB)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (4, 129), generator=g)
    batch = {"tokens": x[:, :-1], "labels": x[:, 1:], "position_ids": torch.arange(128).expand(4, -1),
             "loss_mask": torch.ones(4, 128)}
    losses = [train_step(model, opt, sched, iter([batch]), 1, 128, 4)[0] for _ in range(8)]
    assert losses[-1] < losses[0] - 0.5, losses


def test_activation_recomputation_same_losses(parallel):
    """Selective (core attention) and full (uniform, 1 layer) recomputation train exactly like no recomputation."""
    from megasynth.config import OptimizerConfig, ParallelConfig, TrainConfig
    from megasynth.train.step import setup_model_and_optimizer, train_step

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (2, 33), generator=g)
    batch = {"tokens": x[:, :-1], "labels": x[:, 1:], "position_ids": torch.arange(32).expand(2, -1),
             "loss_mask": torch.ones(2, 32)}
    curves = {}
    for gran in (None, "selective", "full"):
        extra = {"recompute_method": "uniform", "recompute_num_layers": 1} if gran == "full" else {}
        t = TrainConfig(seq_length=32, micro_batch_size=2, global_batch_size=2, train_iters=10,
                        optimizer=OptimizerConfig(lr_warmup_iters=1),
                        parallel=ParallelConfig(recompute_granularity=gran, **extra))
        model, opt, sched = setup_model_and_optimizer(ModelConfig(preset="llama3-micro"), t, VOCAB)
        assert model[0].config.recompute_granularity == gran
        curves[gran] = [train_step(model, opt, sched, iter([batch]), 1, 32, 2)[0] for _ in range(3)]
    assert curves[None][-1] < curves[None][0]
    assert curves["selective"] == curves[None] and curves["full"] == curves[None]


def _chunks(backend: str, precision: str = "fp32", seq: int = 64):
    from megasynth.config import ParallelConfig

    mcfg = ModelConfig(preset="llama3-micro", attention_backend=backend, precision=precision)
    return builder.build_model_chunks(mcfg, ParallelConfig(), VOCAB, seq_length=seq, seed=3)[0]


def test_sdpa_attention_matches_dot_product_attention(parallel):
    """``model.attention_backend: sdpa`` (PyTorch SDPA, GQA with 4 heads over 2 KV groups) computes the same
    logits and gradients as megatron-core's DotProductAttention in fp32 (largest differences measured on CPU, with
    megatron-core 0.16.1 and 0.19.2: logits 4.8e-7 of at most 0.75, gradients 2.8e-9 of at most 3.3e-3)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megasynth.model.attention import SDPAttention

    local, sdpa = _chunks("local"), _chunks("sdpa")
    assert type(local.decoder.layers[0].self_attention.core_attention) is DotProductAttention
    assert type(sdpa.decoder.layers[0].self_attention.core_attention) is SDPAttention
    assert local.state_dict().keys() == sdpa.state_dict().keys()  # same parameters, same checkpoint names
    for (n, a), (_, b) in zip(local.named_parameters(), sdpa.named_parameters()):
        assert torch.equal(a, b), n
    with torch.no_grad():
        for m in (local, sdpa):  # attention far from uniform, so a wrong head grouping or scale would show
            for layer in m.decoder.layers:
                layer.self_attention.linear_qkv.weight.mul_(10)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (3, 64), generator=g)
    pos = torch.arange(64).unsqueeze(0).expand(3, -1)
    out = {}
    for name, m in (("local", local), ("sdpa", sdpa)):
        logits = m(tokens, pos, None)
        logits.float().pow(2).mean().backward()
        out[name] = (logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    torch.testing.assert_close(out["sdpa"][0], out["local"][0], rtol=0, atol=1e-5)
    assert out["local"][0].abs().max() > 0.5
    for n, grad in out["local"][1].items():
        torch.testing.assert_close(out["sdpa"][1][n], grad, rtol=0, atol=1e-5, msg=n)
    assert max(g.abs().max() for g in out["local"][1].values()) > 1e-3


def test_sdpa_attention_explicit_mask_and_bf16(parallel):
    """An explicit megatron mask (True = masked) is used instead of the causal one, as DotProductAttention does,
    and in bf16 it stays within 0.02 of fp32 DotProductAttention on the same bf16-rounded inputs (outputs of
    order 1; bf16 keeps 8 significant bits)."""
    local = _chunks("local").decoder.layers[0].self_attention.core_attention
    sdpa = _chunks("sdpa").decoder.layers[0].self_attention.core_attention
    g = torch.Generator().manual_seed(1)
    s, b = 32, 2
    q = torch.randn(s, b, 4, 16, generator=g) * 3
    k, v = torch.randn(s, b, 2, 16, generator=g) * 3, torch.randn(s, b, 2, 16, generator=g)
    mask = torch.rand(b, 1, s, s, generator=g) < 0.3
    mask[..., 0] = False  # no fully masked row
    torch.testing.assert_close(sdpa(q, k, v, mask), local(q.clone(), k.clone(), v.clone(), mask), rtol=0, atol=1e-5)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    ref = local(qb.float(), kb.float(), vb.float(), None)  # fp32 on the same (bf16-rounded) inputs
    assert (sdpa(qb, kb, vb, None).float() - ref).abs().max() < 0.02
    with pytest.raises(ValueError, match="attention_bias"):
        sdpa(q, k, v, None, attention_bias=torch.zeros(1))


def test_attention_backend_validation():
    ModelConfig(attention_backend="sdpa").validate()
    with pytest.raises(MegasynthError, match="model.attention_backend: sdpa needs"):
        ModelConfig(attention_backend="sdpa", transformer_impl="transformer_engine", precision="bf16").validate()
    with pytest.raises(MegasynthError, match="model.attention_backend: unknown"):
        ModelConfig(attention_backend="flash").validate()
