"""Training throughput on this machine: megatron-core (megasynth's loop) vs Hugging Face Llama.

For each preset, times full optimizer steps (forward + backward over ``global_batch_size / micro_batch_size``
micro batches, AdamW, grad clipping) of

- megasynth: megatron-core ``GPTModel`` (local spec with each ``--attention-backends`` core attention, or the
  Transformer Engine spec), megatron DDP + optimizer + scheduler, ``get_forward_backward_func`` — exactly the
  training loop's :func:`megasynth.train.step.train_step`. bf16 means megatron's mixed precision: bf16
  parameters and activations, fp32 main gradients, fp32 master weights in the optimizer;
- HF: ``transformers.LlamaForCausalLM`` of identical shape and identical initial weights, attention through
  PyTorch SDPA (``attn_implementation="sdpa"``), ``torch.optim.AdamW`` (the class megatron-core uses without
  apex/TE; foreach on GPU for both) and ``clip_grad_norm_``, the same micro batches and accumulation, no KV
  cache. bf16 means PyTorch's mixed precision: fp32 parameters, gradients and optimizer state, matmuls and
  attention in bf16 under ``torch.autocast`` — the same split as megatron's (bf16 compute, fp32 master
  weights and optimizer), so the two do the same work. With ``--hf-compile`` the same HF model is also timed
  under ``torch.compile`` (default mode; its compile time is in ``first_step_s``).

Token ids are random (throughput does not depend on them); every variant of a preset starts from the same
weights and sees the same batches, so ``loss_first`` (the loss of the first step) must agree across variants
within bf16 rounding. Per row: median step time (and min), tokens/s, model TFLOP/s per device
(``LlamaShape.train_flops_per_token``: 6N + attention, Kaplan et al. 2020), MFU against the device's dense
BF16 peak (:data:`megasynth.train.metrics.PEAK_TFLOPS_BF16`, or ``--peak-tflops``), peak memory (CUDA
``max_memory_allocated``; peak RSS on CPU), and the split of a step into forward+backward and the optimizer
(``fwd_bwd_s``/``optimizer_s``: medians, with one device synchronisation before the optimizer step). A
variant that fails (out of memory, a compile error) gets a row with ``error`` and the run goes on.

Run: ``python benchmarks/train_throughput.py [--presets llama3-micro llama3-tiny] [--steps 5]`` (CPU), or on a
GPU without Transformer Engine (what ``benchmarks/gpu_check.sh`` runs on one H200)::

    python benchmarks/train_throughput.py --presets llama3-1b --transformer-impl local --precisions bf16 \\
        --attention-backends sdpa local --hf-compile --vocab-size 128256 --seq-length 4096 \\
        --micro-batch-size 2 --global-batch-size 4 --warmup 3 --steps 10 --json out/throughput.json

or with Transformer Engine: ``--transformer-impl transformer_engine --precisions bf16 fp8 --no-hf``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback

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


def _device_batches(vocab: int, seq: int, mbs: int, n: int, seed: int):
    batches = _batches(vocab, seq, mbs, n, seed)
    if torch.cuda.is_available():
        batches = [{k: v.cuda() for k, v in b.items()} for b in batches]
    return batches


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def _free() -> None:
    """Release cached GPU memory between variants (and megatron's attention score buffer)."""
    gc.collect()
    if torch.cuda.is_available():
        from megatron.core import parallel_state

        buf = getattr(parallel_state, "_GLOBAL_MEMORY_BUFFER", None)
        if buf is not None and isinstance(getattr(buf, "buffer", None), dict):
            buf.buffer.clear()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class _Timed:
    """Wraps a callable and records its wall seconds, synchronising the device before and after."""

    def __init__(self, fn):
        self.fn, self.last = fn, 0.0

    def __call__(self, *args, **kwargs):
        _sync()
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        _sync()
        self.last = time.perf_counter() - t0
        return out


def _unwrap(module):
    inner = module[0] if isinstance(module, list) else module
    while isinstance(getattr(inner, "module", None), torch.nn.Module):
        inner = inner.module
    return inner


def bench_megatron(preset: str, vocab: int, seq: int, mbs: int, gbs: int, warmup: int, steps: int,
                   precision: str = "fp32", transformer_impl: str = "local", attention_backend: str = "local",
                   snapshot: bool = False, **parallel_opts) -> dict:
    """Time megasynth's training step; returns ``{"times", "fwd_bwd", "optimizer", "losses", "hf_state"}``.

    ``hf_state``: with ``snapshot``, the initial weights as a HF Llama state dict (for :func:`bench_hf`).
    """
    from megasynth.config import ModelConfig, OptimizerConfig, ParallelConfig, TrainConfig
    from megasynth.model import cpu_compat
    from megasynth.model.hf_compat import megatron_to_hf_state_dict
    from megasynth.model.presets import get_preset
    from megasynth.train.step import setup_model_and_optimizer, train_step

    tcfg = TrainConfig(seq_length=seq, micro_batch_size=mbs, global_batch_size=gbs, train_iters=1000,
                       optimizer=OptimizerConfig(lr_warmup_iters=10), parallel=ParallelConfig(**parallel_opts))
    cpu_compat.manual_seed(1234)
    mcfg = ModelConfig(preset=preset, precision=precision, transformer_impl=transformer_impl,
                       attention_backend=attention_backend)
    mcfg.validate()
    model, opt, sched = setup_model_and_optimizer(mcfg, tcfg, vocab)
    hf_state = megatron_to_hf_state_dict(_unwrap(model), get_preset(preset)) if snapshot else None
    opt_step = _Timed(opt.step)
    opt.step = opt_step
    n_micro = gbs // mbs
    out = {"times": [], "fwd_bwd": [], "optimizer": [], "losses": [], "hf_state": hf_state}
    for i in range(warmup + steps):
        it = iter(_device_batches(vocab, seq, mbs, n_micro, i))
        _sync()
        t0 = time.perf_counter()
        loss, _, _ = train_step(model, opt, sched, it, n_micro, seq, mbs)
        _sync()
        dt = time.perf_counter() - t0
        out["losses"].append(loss)
        if i == 0:
            out["first_step_s"] = dt
        if i >= warmup:
            out["times"].append(dt)
            out["optimizer"].append(opt_step.last)
            out["fwd_bwd"].append(dt - opt_step.last)
    del model, opt, sched, opt_step
    return out


def build_hf(hf_state: dict, preset: str, padded_vocab: int):
    """``LlamaForCausalLM`` (fp32, SDPA attention, train mode) with the weights of ``hf_state``, on the GPU if any."""
    from transformers import LlamaForCausalLM

    from megasynth.model.hf_compat import hf_llama_config
    from megasynth.model.presets import get_preset

    shape = get_preset(preset)
    config = hf_llama_config(shape, padded_vocab)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        hf = LlamaForCausalLM(config)
    hf.load_state_dict({k: v.float() for k, v in hf_state.items()}, strict=not shape.tie_word_embeddings)
    if shape.tie_word_embeddings:
        hf.tie_weights()
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    return hf.train()


def bench_hf(hf, vocab: int, seq: int, mbs: int, gbs: int, warmup: int, steps: int, precision: str = "fp32",
             compile: bool = False) -> dict:
    """Time HF training steps of ``hf`` (see the module docstring); same fields as :func:`bench_megatron`."""
    model = torch.compile(hf) if compile else hf
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    n_micro = gbs // mbs
    out = {"times": [], "fwd_bwd": [], "optimizer": [], "losses": []}
    for i in range(warmup + steps):
        batches = _device_batches(vocab, seq, mbs, n_micro, i)
        _sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for b in batches:
            with autocast:
                logits = model(input_ids=b["tokens"], position_ids=b["position_ids"], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), b["labels"].view(-1))
            (loss / n_micro).backward()
            total += loss.detach()
        _sync()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        _sync()
        dt = time.perf_counter() - t0
        out["losses"].append(float(total) / n_micro)
        if i == 0:
            out["first_step_s"] = dt
        if i >= warmup:
            out["times"].append(dt)
            out["fwd_bwd"].append(t1 - t0)
            out["optimizer"].append(dt - (t1 - t0))
    opt.zero_grad(set_to_none=True)
    del opt, model
    return out


def _row(preset: str, variant: str, precision: str, args, padded: int, peak, result: dict | None,
         error: str | None = None) -> dict:
    from megasynth.model.presets import get_preset
    from megasynth.train.metrics import peak_memory_gib

    shape = get_preset(preset)
    tokens_per_step = args.global_batch_size * args.seq_length
    row = {"preset": preset, "variant": variant, "precision": precision, "params": shape.total_params(padded),
           "seq_length": args.seq_length, "micro_batch_size": args.micro_batch_size,
           "global_batch_size": args.global_batch_size, "tokens_per_step": tokens_per_step, "error": error}
    if result is None or not result["times"]:
        return row
    m = _median(result["times"])
    fpt = shape.train_flops_per_token(args.seq_length, padded)
    tflops = fpt * tokens_per_step / m / 1e12
    row.update({"step_s": m, "step_s_min": min(result["times"]), "tokens_per_s": tokens_per_step / m,
                "tflops": tflops, "mfu": tflops / peak if peak else None, "peak_mem_gib": peak_memory_gib(),
                "fwd_bwd_s": _median(result["fwd_bwd"]), "optimizer_s": _median(result["optimizer"]),
                "first_step_s": result.get("first_step_s"), "loss_first": result["losses"][0],
                "loss_last": result["losses"][-1], "timed_steps": len(result["times"])})
    return row


HEADER = (f"{'preset':<14}{'variant':<17}{'prec':>5}{'params':>15}{'mbs':>4}{'gbs':>4}{'s/step':>9}{'tokens/s':>10}"
          f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>9}{'fwd+bwd':>9}{'optim':>7}{'1st step':>9}{'loss0':>8}")


def format_row(r: dict) -> str:
    head = (f"{r['preset']:<14}{r['variant']:<17}{r['precision']:>5}{r['params']:>15,}{r['micro_batch_size']:>4}"
            f"{r['global_batch_size']:>4}")
    if "step_s" not in r:
        return head + f"  ERROR: {r['error']}"
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    return head + (f"{r['step_s']:>9.3f}{r['tokens_per_s']:>10.0f}{r['tflops']:>9.2f}{mfu:>7}{r['peak_mem_gib']:>9.2f}"
                   f"{r['fwd_bwd_s']:>9.3f}{r['optimizer_s']:>7.3f}{r['first_step_s']:>9.2f}{r['loss_first']:>8.4f}")


def ratio_lines(rows: list[dict]) -> list[str]:
    """``megatron step time / HF step time`` per preset and precision, for every pair of one invocation that ran."""
    out = []
    for r in rows:
        if "step_s" not in r or not r["variant"].startswith("megatron"):
            continue
        for h in rows:
            if ("step_s" in h and h["variant"].startswith("hf") and h["preset"] == r["preset"]
                    and h["precision"] == r["precision"] and h.get("invocation") == r.get("invocation")):
                out.append(f"{r['preset']} {r['precision']}: {r['variant']} / {h['variant']} step time = "
                           f"{r['step_s'] / h['step_s']:.2f}")
    return out


def _write(args, metas: list[dict], rows: list[dict]) -> None:
    from megasynth.utils import atomic_path

    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"meta": metas, "rows": rows}, indent=1))
    if args.table:
        lines = [m["line"] for m in metas] + [HEADER] + [format_row(r) for r in rows] + [""] + ratio_lines(rows)
        with atomic_path(args.table) as tmp:
            tmp.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["llama3-micro", "llama3-tiny"])
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="fp32 bf16 fp16 fp8 (default: fp32 on CPU, bf16 on GPU); HF runs for fp32 and bf16")
    ap.add_argument("--transformer-impl", default=None, choices=["local", "transformer_engine"],
                    help="default: local on CPU, transformer_engine on GPU")
    ap.add_argument("--attention-backends", nargs="+", default=["local"], choices=["local", "sdpa"],
                    help="model.attention_backend values to time (local spec only)")
    ap.add_argument("--vocab-size", type=int, default=8192, help="tokenizer ids (quickstart BPE: 8192; Llama-3: 128256)")
    ap.add_argument("--seq-length", type=int, default=256)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--global-batch-size", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak for MFU")
    ap.add_argument("--recompute-granularity", default=None, choices=["full", "selective"])
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--hf-compile", action="store_true", help="also time the HF model under torch.compile")
    ap.add_argument("--json", help="write the rows as JSON here (rewritten after every row)")
    ap.add_argument("--table", help="write the table here (rewritten after every row)")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in --json (an earlier invocation's) and add this one's")
    args = ap.parse_args()

    import megatron.core
    import transformers

    from megasynth.model import builder
    from megasynth.train.metrics import peak_tflops

    gpu = torch.cuda.is_available()
    precisions = args.precisions or (["bf16"] if gpu else ["fp32"])
    impl = args.transformer_impl or ("transformer_engine" if gpu else "local")
    backends = args.attention_backends if impl == "local" else ["te"]
    peak = peak_tflops(args.peak_tflops)
    builder.init_parallel(1, 1, seed=1234)
    tokens_per_step = args.global_batch_size * args.seq_length
    device = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    line = (f"torch {torch.__version__}, megatron-core {megatron.core.__version__}, transformers "
            f"{transformers.__version__}, Python {platform.python_version()}; {device}; {impl}; seq_length "
            f"{args.seq_length}, micro_batch {args.micro_batch_size}, global_batch {args.global_batch_size} "
            f"({tokens_per_step} tokens/step), vocab {args.vocab_size}; peak {peak or 'n/a'} TFLOP/s (bf16 dense); "
            f"median of {args.steps} steps after {args.warmup} warmup")
    meta = {"line": line, "argv": sys.argv[1:], "torch": torch.__version__, "megatron_core": megatron.core.__version__,
            "transformers": transformers.__version__, "device": device, "peak_tflops": peak,
            "transformer_impl": impl, "hf_precision": "fp32 weights + torch.autocast(bf16) for bf16",
            "hf_attention": "sdpa", "cuda": torch.version.cuda if gpu else None}
    print(line, flush=True)
    print(HEADER, flush=True)
    metas, rows = [meta], []
    if args.append and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            earlier = json.load(f)
        metas, rows = earlier["meta"] + metas, earlier["rows"]

    def add(row: dict) -> None:
        row["invocation"] = len(metas) - 1  # index into meta (the rows of one invocation share a setup)
        rows.append(row)
        print(format_row(row), flush=True)
        _write(args, metas, rows)

    for preset in args.presets:
        padded = builder.padded_vocab_size(args.vocab_size)
        for precision in precisions:
            hf_ok = not args.no_hf and impl == "local" and precision in ("fp32", "bf16")
            opts = {"recompute_granularity": args.recompute_granularity}
            if args.recompute_granularity == "full":
                opts.update(recompute_method="uniform", recompute_num_layers=1)
            hf_state = None
            for backend in backends:
                _free()
                variant = f"megatron {backend}"
                try:
                    res = bench_megatron(preset, args.vocab_size, args.seq_length, args.micro_batch_size,
                                         args.global_batch_size, args.warmup, args.steps, precision, impl,
                                         "local" if backend == "te" else backend,
                                         snapshot=hf_ok and hf_state is None, **opts)
                    hf_state = hf_state or res.pop("hf_state")
                    add(_row(preset, variant, precision, args, padded, peak, res))
                except Exception as e:  # noqa: BLE001 - a failed variant is a row, the run goes on
                    traceback.print_exc()
                    add(_row(preset, variant, precision, args, padded, peak, None, f"{type(e).__name__}: {e}"[:300]))
                res = None
            if not hf_ok or hf_state is None:
                continue
            _free()
            try:
                hf = build_hf(hf_state, preset, padded)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                add(_row(preset, "hf sdpa", precision, args, padded, peak, None, f"{type(e).__name__}: {e}"[:300]))
                continue
            for compile_ in ([False, True] if args.hf_compile else [False]):
                variant = "hf sdpa compiled" if compile_ else "hf sdpa"
                _free()
                try:
                    with torch.no_grad():  # every variant starts from the same weights
                        hf.load_state_dict({k: v.float() for k, v in hf_state.items()}, strict=False)
                    res = bench_hf(hf, args.vocab_size, args.seq_length, args.micro_batch_size, args.global_batch_size,
                                   args.warmup, args.steps, precision, compile=compile_)
                    add(_row(preset, variant, precision, args, padded, peak, res))
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    add(_row(preset, variant, precision, args, padded, peak, None, f"{type(e).__name__}: {e}"[:300]))
            del hf, hf_state
            if compile_:
                torch._dynamo.reset()
    print()
    print(line)
    print(HEADER)
    for r in rows:
        print(format_row(r))
    for s in ratio_lines(rows):
        print(s)
    _write(args, metas, rows)
    builder.destroy_parallel()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
