"""Training throughput on this machine: megatron-core (megasynth's loop) vs Hugging Face Llama.

For each preset, times full optimizer steps (forward + backward over ``global_batch_size /
micro_batch_size`` micro batches, AdamW, grad clipping) of

- megasynth: megatron-core ``GPTModel`` (local spec on CPU), megatron DDP + optimizer + scheduler,
  ``get_forward_backward_func`` — exactly the training loop's :func:`megasynth.train.loop.train_step`;
- HF: ``transformers.LlamaForCausalLM`` of identical shape (same weights) with ``torch.optim.AdamW``
  and ``clip_grad_norm_``, same micro batches and accumulation.

Token ids are random (throughput does not depend on them). Prints a table of tokens/s and step
times. Run: ``python benchmarks/train_throughput.py [--presets llama3-micro llama3-tiny] [--steps 5]``.
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


def bench_megatron(preset: str, vocab: int, seq: int, mbs: int, gbs: int, warmup: int, steps: int):
    from megasynth.config import ModelConfig, TrainConfig
    from megasynth.model import cpu_compat
    from megasynth.train.loop import setup_model_and_optimizer, train_step

    tcfg = TrainConfig(seq_length=seq, micro_batch_size=mbs, global_batch_size=gbs, train_iters=1000,
                       lr_warmup_iters=10)
    cpu_compat.manual_seed(1234)
    model, opt, sched = setup_model_and_optimizer(ModelConfig(preset=preset), tcfg, vocab)
    n_micro = gbs // mbs
    times = []
    for i in range(warmup + steps):
        it = iter(_batches(vocab, seq, mbs, n_micro, i))
        t0 = time.perf_counter()
        train_step(model, opt, sched, it, n_micro, seq, mbs)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return model, times


def bench_hf(megatron_model, preset: str, vocab: int, seq: int, mbs: int, gbs: int, warmup: int, steps: int):
    from megasynth.model.builder import padded_vocab_size
    from megasynth.model.hf_compat import to_hf_llama
    from megasynth.model.presets import get_preset

    inner = megatron_model
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
    ap.add_argument("--vocab-size", type=int, default=8192, help="tokenizer ids (quickstart BPE: 8192)")
    ap.add_argument("--seq-length", type=int, default=256)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--global-batch-size", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model")
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    args = ap.parse_args()

    from megasynth.model import builder
    from megasynth.model.presets import get_preset

    builder.init_parallel(1, 1, seed=1234)
    tokens_per_step = args.global_batch_size * args.seq_length
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA' if torch.cuda.is_available() else 'CPU'}; seq_length {args.seq_length}, micro_batch "
          f"{args.micro_batch_size}, global_batch {args.global_batch_size} ({tokens_per_step} tokens/step), "
          f"vocab {args.vocab_size}; median of {args.steps} steps after {args.warmup} warmup")
    rows = []
    for preset in args.presets:
        shape = get_preset(preset)
        model, mt = bench_megatron(preset, args.vocab_size, args.seq_length, args.micro_batch_size,
                                   args.global_batch_size, args.warmup, args.steps)
        ht = [] if args.no_hf or torch.cuda.is_available() else bench_hf(
            model, preset, args.vocab_size, args.seq_length, args.micro_batch_size, args.global_batch_size,
            args.warmup, args.steps)
        med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")  # noqa: E731
        rows.append((preset, shape.total_params(builder.padded_vocab_size(args.vocab_size)), med(mt), med(ht)))
        del model
    print(f"{'preset':<14}{'params':>12}{'megasynth s/step':>18}{'tokens/s':>10}{'HF s/step':>11}"
          f"{'HF tokens/s':>13}{'ratio':>7}")
    for preset, n, m, h in rows:
        print(f"{preset:<14}{n:>12,}{m:>18.3f}{tokens_per_step / m:>10.0f}{h:>11.3f}"
              f"{tokens_per_step / h:>13.0f}{h / m:>7.2f}")
    builder.destroy_parallel()


if __name__ == "__main__":
    main()
