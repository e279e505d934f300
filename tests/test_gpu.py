"""The local spec (no Transformer Engine) on CUDA in bf16: training lowers the loss with either core attention,
SDPA agrees with megatron's DotProductAttention, and a full checkpoint round trip resumes the same loss.

All tests need CUDA (``@pytest.mark.gpu``; skipped elsewhere). ``benchmarks/gpu_check.sh`` runs them on the
one-H200 machine; its CPU dry run sets ``MEGASYNTH_GPU_TESTS_ON_CPU=1``, which runs the same bodies on the CPU
(bf16 there too) to check the test code itself before GPU time is spent on it.
"""

from __future__ import annotations

import os

import pytest
import torch

from megasynth.config import ModelConfig, OptimizerConfig, TrainConfig
from megasynth.model import builder

_ON_CPU = os.environ.get("MEGASYNTH_GPU_TESTS_ON_CPU") == "1"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (torch.cuda.is_available() or _ON_CPU), reason="needs CUDA")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

VOCAB = 500
SEQ = 256 if DEVICE == "cuda" else 64  # shorter in the CPU run of the test code


@pytest.fixture(scope="module")
def parallel():
    builder.init_parallel(1, 1, seed=1234)
    yield
    builder.destroy_parallel()


def _batch(seed: int, b: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (b, SEQ + 1), generator=g)
    return {"tokens": x[:, :-1], "labels": x[:, 1:], "position_ids": torch.arange(SEQ).expand(b, -1),
            "loss_mask": torch.ones(b, SEQ)}


def _setup(backend: str, seed: int = 7):
    from megasynth.train.step import setup_model_and_optimizer

    t = TrainConfig(seq_length=SEQ, micro_batch_size=4, global_batch_size=8, train_iters=20, seed=seed,
                    optimizer=OptimizerConfig(lr_warmup_iters=1, lr=1e-3, min_lr=1e-4))
    mcfg = ModelConfig(preset="llama3-tiny", precision="bf16", attention_backend=backend)
    return setup_model_and_optimizer(mcfg, t, VOCAB)


@pytest.mark.parametrize("backend", ["local", "sdpa"])
def test_bf16_local_spec_trains_on_cuda(parallel, backend):
    """bf16 parameters on the GPU (fp32 main gradients and master weights in megatron's optimizer); eight AdamW
    steps of two micro batches on one repeated batch lower the loss by more than 0.5 nats."""
    from megasynth.train.step import train_step

    model, opt, sched = _setup(backend)
    p = next(model[0].parameters())
    assert p.device.type == DEVICE and p.dtype == torch.bfloat16
    batches = [_batch(0), _batch(1)]
    losses = []
    for _ in range(8):
        loss, grad_norm, ok = train_step(model, opt, sched, iter(batches), 2, SEQ, 4)
        assert ok and grad_norm is not None and torch.isfinite(torch.tensor(grad_norm))
        losses.append(loss)
    assert losses[-1] < losses[0] - 0.5, losses


def test_sdpa_matches_dot_product_attention_on_cuda(parallel):
    """Same bf16 weights: the SDPA (flash) model's per-token losses match DotProductAttention's within bf16
    rounding (mean loss within 0.01 nats, largest per-token difference under 0.1)."""
    from megasynth.config import ParallelConfig

    b = _batch(2)
    out = {}
    for backend in ("local", "sdpa"):
        mcfg = ModelConfig(preset="llama3-tiny", precision="bf16", attention_backend=backend)
        m = builder.build_model_chunks(mcfg, ParallelConfig(), VOCAB, SEQ, seed=11)[0].eval()
        with torch.no_grad():
            out[backend] = m(*(b[k].to(DEVICE) for k in ("tokens", "position_ids")), None,
                             labels=b["labels"].to(DEVICE)).float()
    assert abs(out["sdpa"].mean().item() - out["local"].mean().item()) < 0.01
    assert (out["sdpa"] - out["local"]).abs().max().item() < 0.1


def test_full_checkpoint_roundtrip_on_cuda(parallel, tmp_path):
    """Save model, optimizer, scheduler and RNG after 3 steps; a freshly built model (another seed) loading it
    computes bitwise the same loss on step 4 as the run that saved it, and the next step within 1e-3."""
    from megasynth.train.checkpoint import load_checkpoint, save_checkpoint
    from megasynth.train.step import train_step

    batches = [[_batch(10 + 2 * i), _batch(11 + 2 * i)] for i in range(5)]
    model, opt, sched = _setup("sdpa", seed=7)
    for i in range(3):
        train_step(model, opt, sched, iter(batches[i]), 2, SEQ, 4)
    save_checkpoint(model, tmp_path / "ckpt", 3, optimizer=opt, scheduler=sched)
    ref = [train_step(model, opt, sched, iter(batches[i]), 2, SEQ, 4)[0] for i in (3, 4)]

    model2, opt2, sched2 = _setup("sdpa", seed=8)
    common = load_checkpoint(model2, tmp_path / "ckpt", optimizer=opt2, scheduler=sched2, load_rng=True)
    assert common["iteration"] == 3
    p = next(model2[0].parameters())
    assert p.device.type == DEVICE and p.dtype == torch.bfloat16
    got = [train_step(model2, opt2, sched2, iter(batches[i]), 2, SEQ, 4)[0] for i in (3, 4)]
    assert got[0] == ref[0]
    assert got[1] == pytest.approx(ref[1], abs=1e-3)
