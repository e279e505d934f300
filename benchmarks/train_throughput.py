"""Training throughput on this machine: megatron-core (megasynth's loop) vs Hugging Face Llama.

For each preset, times full optimizer steps (forward + backward over ``global_batch_size /
micro_batch_size`` micro batches, AdamW, grad clipping) of

- megasynth: megatron-core ``GPTModel`` (local spec on CPU), megatron DDP + optimizer + scheduler,
  ``get_forward_backward_func`` — exactly the training loop's :func:`megasynth.train.step.train_step`;
- HF: ``transformers.LlamaForCausalLM`` of identical shape (same weights) with ``torch.optim.AdamW``
  and ``clip_grad_norm_``, same micro batches and accumulation.

Token ids are random (throughput does not depend on them). Prints a table per preset and precision:
step time, tokens/s, model TFLOP/s per device (``LlamaShape.train_flops_per_token``: 6N + attention),
MFU against the device's dense BF16 peak (:data:`megasynth.train.metrics.PEAK_TFLOPS_BF16`, or
``--peak-tflops``) and peak memory.

Run: ``python benchmarks/train_throughput.py [--presets llama3-micro llama3-tiny] [--steps 5]`` (CPU), or on
a GPU: ``python benchmarks/train_throughput.py --presets llama3-1b --precisions bf16 fp8
--transformer-impl transformer_engine --seq-length 4096 --micro-batch-size 2 --global-batch-size 16 --no-hf``.
"""

from __future__ import annotations

import argparse
import time

import torch


def _batches(vocab: int, seq: int, mbs: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (mbs, seq + 1), generator=g)
        out.append({"tokens": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous(),
                    "position_ids": torch.arange(seq).unsqueeze(0).expand(mbs, -1).contiguous(),
                    "loss_mask": torch.ones(mbs, seq)})
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_megatron(preset: str, vocab: int, seq: int, mbs: int, gbs: int, warmup: int, steps: int,
                   precision: str = "fp32", transformer_impl: str = "local", **parallel_opts):
    """Median-able step times (s) of megasynth's training step; returns ``(model_chunks, times)``."""
    from megasynth.config import ModelConfig, OptimizerConfig, ParallelConfig, TrainConfig
    from megasynth.model import cpu_compat
    from megasynth.train.step import setup_model_and_optimizer, train_step

    tcfg = TrainConfig(seq_length=seq, micro_batch_size=mbs, global_batch_size=gbs, train_iters=1000,
                       optimizer=OptimizerConfig(lr_warmup_iters=10), parallel=ParallelConfig(**parallel_opts))
    cpu_compat.manual_seed(1234)
    mcfg = ModelConfig(preset=preset, precision=precision, transformer_impl=transformer_impl)
    model, opt, sched = setup_model_and_optimizer(mcfg, tcfg, vocab)
    n_micro = gbs // mbs
    times = []
    for i in range(warmup + steps):
        batches = _batches(vocab, seq, mbs, n_micro, i)
        if torch.cuda.is_available():
            batches = [{k: v.cuda() for k, v in b.items()} for b in batches]
        it = iter(batches)
        _sync()
        t0 = time.perf_counter()
        train_step(model, opt, sched, it, n_micro, seq, mbs)
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return model, times


def bench_hf(megatron_model, preset: str, vocab: int, seq: int, mbs: int, gbs: int, warmup: int, steps: int):
    from megasynth.model.builder import padded_vocab_size
    from megasynth.model.hf_compat import to_hf_llama
    from megasynth.model.presets import get_preset

    inner = megatron_model[0] if isinstance(megatron_model, list) else megatron_model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):
        inner = inner.module
    hf = to_hf_llama(inner, get_preset(preset), padded_vocab_size(vocab)).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    n_micro = gbs // mbs
    times = []
    for i in range(warmup + steps):
        batches = _batches(vocab, seq, mbs, n_micro, i)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for b in batches:
            loss = hf(input_ids=b["tokens"], labels=None).logits.float()
            loss = torch.nn.functional.cross_entropy(loss.view(-1, loss.shape[-1]), b["labels"].view(-1))
            (loss / n_micro).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["llama3-micro", "llama3-tiny"])
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="fp32 bf16 fp16 fp8 (default: fp32 on CPU, bf16 on GPU)")
    ap.add_argument("--transformer-impl", default=None, choices=["local", "transformer_engine"],
                    help="default: local on CPU, transformer_engine on GPU")
    ap.add_argument("--vocab-size", type=int, default=8192, help="tokenizer ids (quickstart BPE: 8192)")
    ap.add_argument("--seq-length", type=int, default=256)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--global-batch-size", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak for MFU")
    ap.add_argument("--recompute-granularity", default=None, choices=["full", "selective"])
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    args = ap.parse_args()

    from megasynth.model import builder
    from megasynth.model.presets import get_preset
    from megasynth.train.metrics import peak_memory_gib, peak_tflops

    gpu = torch.cuda.is_available()
    precisions = args.precisions or (["bf16"] if gpu else ["fp32"])
    impl = args.transformer_impl or ("transformer_engine" if gpu else "local")
    peak = peak_tflops(args.peak_tflops)
    builder.init_parallel(1, 1, seed=1234)
    tokens_per_step = args.global_batch_size * args.seq_length
    device = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device}; {impl}; seq_length {args.seq_length}, micro_batch "
          f"{args.micro_batch_size}, global_batch {args.global_batch_size} ({tokens_per_step} tokens/step), "
          f"vocab {args.vocab_size}; peak {peak or 'n/a'} TFLOP/s (bf16 dense); median of {args.steps} steps "
          f"after {args.warmup} warmup")
    med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")  # noqa: E731
    rows = []
    for preset in args.presets:
        shape = get_preset(preset)
        padded = builder.padded_vocab_size(args.vocab_size)
        fpt = shape.train_flops_per_token(args.seq_length, padded)
        for precision in precisions:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            opts = {"recompute_granularity": args.recompute_granularity}
            if args.recompute_granularity == "full":
                opts.update(recompute_method="uniform", recompute_num_layers=1)
            model, mt = bench_megatron(preset, args.vocab_size, args.seq_length, args.micro_batch_size,
                                       args.global_batch_size, args.warmup, args.steps, precision, impl, **opts)
            mem = peak_memory_gib()
            ht = [] if args.no_hf or gpu or precision != "fp32" else bench_hf(
                model, preset, args.vocab_size, args.seq_length, args.micro_batch_size, args.global_batch_size,
                args.warmup, args.steps)
            m = med(mt)
            tflops = fpt * tokens_per_step / m / 1e12
            rows.append((preset, precision, shape.total_params(padded), m, tflops, tflops / peak if peak else None,
                         mem, med(ht)))
            del model
            if gpu:
                torch.cuda.empty_cache()
    print(f"{'preset':<14}{'prec':>6}{'params':>15}{'s/step':>9}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'peak GiB':>10}{'HF s/step':>11}{'HF/ours':>8}")
    for preset, prec, n, m, tf, mfu, mem, h in rows:
        mfu_s = f"{mfu:.1%}" if mfu is not None else "n/a"
        print(f"{preset:<14}{prec:>6}{n:>15,}{m:>9.3f}{tokens_per_step / m:>11.0f}{tf:>9.2f}{mfu_s:>7}{mem:>10.2f}"
              f"{h:>11.3f}{h / m:>8.2f}")
    builder.destroy_parallel()


if __name__ == "__main__":
    main()
