"""Benchmark: Chinchilla fit (250 points, full 4,500-start grid) vs a naive scipy loop; unigram counting.

    python benchmarks/fit_and_unigrams.py [--naive-starts 60] [--tokens 100_000_000]

Prints a table: batched fit time, naive-loop time on a subset of starts extrapolated to 4,500,
whether both reach the same optimum, and unigram counting throughput (tokens/s, one process) on a
uint16 Megatron ``.bin``/``.idx`` written to a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from megasynth.analysis.chinchilla import CHINCHILLA_GRID, HOFFMANN_PARAMS, fit_chinchilla, naive_fit
from megasynth.analysis.unigrams import count_unigrams


def _points(n=250, seed=0):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    p = HOFFMANN_PARAMS
    L = (p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]) * np.exp(rng.normal(0, 0.01, n))
    return N, D, L


def _write_bin(d: Path, n_tokens: int, vocab: int = 128_256) -> str:
    prefix = d / "bench_text_document"
    rng = np.random.default_rng(0)
    toks = (rng.zipf(1.2, n_tokens) % vocab).astype(np.int32)  # Llama-3 vocab: > uint16, stored int32
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    b = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for i in range(0, n_tokens, 1_000_000):
        b.add_document(toks[i:i + 1_000_000], [len(toks[i:i + 1_000_000])])
    b.finalize(f"{prefix}.idx")
    return str(prefix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--naive-starts", type=int, default=60, help="starts for the naive loop (extrapolated)")
    ap.add_argument("--tokens", type=int, default=100_000_000, help="tokens in the unigram benchmark file")
    args = ap.parse_args()
    N, D, L = _points()
    t0 = time.perf_counter()
    fit = fit_chinchilla(N, D, L, n_bootstrap=0)
    t_fast = time.perf_counter() - t0
    sub = CHINCHILLA_GRID[:: max(1, len(CHINCHILLA_GRID) // args.naive_starts)]
    t0 = time.perf_counter()
    theta, obj, _ = naive_fit(N, D, L, grid=sub)
    t_naive = time.perf_counter() - t0
    naive_full = t_naive * len(CHINCHILLA_GRID) / len(sub)
    same = bool(np.allclose(fit.theta, theta, rtol=1e-3, atol=1e-3)) and fit.objective <= obj * (1 + 1e-6)

    with tempfile.TemporaryDirectory() as d:
        prefix = _write_bin(Path(d), args.tokens)
        count_unigrams(prefix)  # warm the page cache
        t0 = time.perf_counter()
        count_unigrams(prefix)
        t_uni = time.perf_counter() - t0

    rows = [
        ("chinchilla fit, 250 pts, 4,500 starts (batched L-BFGS + scipy polish)", f"{t_fast:.1f} s"),
        (f"naive scipy L-BFGS-B loop, numerical grad, {len(sub)} starts", f"{t_naive:.1f} s"),
        ("naive loop extrapolated to 4,500 starts", f"{naive_full:.0f} s"),
        ("speed-up", f"{naive_full / t_fast:.0f}x"),
        ("same optimum as naive loop (theta within 1e-3, objective <=)", str(same)),
        ("fitted E, A, B, alpha, beta", ", ".join(f"{fit.params[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta"))),
        (f"unigram counting, {args.tokens / 1e6:.0f}M int32 tokens, 1 process", f"{args.tokens / t_uni / 1e6:.0f}M tokens/s"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'benchmark'.ljust(w)} | result")
    print(f"{'-' * w}-|-------")
    for k, v in rows:
        print(f"{k.ljust(w)} | {v}")


if __name__ == "__main__":
    main()
