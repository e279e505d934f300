"""Benchmark: SynthLLM concept-graph building (documents/s) and level-3 sampling (combinations/s).

    python benchmarks/synthllm_graph.py [--docs 100000] [--concepts-per-doc 10] [--vocab 200000]
                                        [--topics 2000] [--samples 20000] [--k 3] [--naive-docs 10000]

Synthetic concept lists of realistic shape: each document belongs to one of ``--topics`` topics; it
takes 70% of its concepts from its topic's pool (Zipf-weighted, 300 concepts per pool) and 30% from
the whole vocabulary (Zipf, exponent 1.1), deduplicated. Prints a table: graph build rate (streaming
``GraphBuilder.add``), ``nx.Graph`` materialisation, statistics, save/load, a naive networkx baseline
(one ``add_edge`` weight update per pair) on ``--naive-docs`` documents, and level-3 sampling
(weighted walks + cross-document check + reference selection) in combinations/s, with the sampler
indexed from the builder and from the ``nx.Graph``. One process.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from itertools import combinations

import numpy as np

from megasynth.generate.synthllm.graph import GraphBuilder, graph_stats, load_graph, save_graph
from megasynth.generate.synthllm.sampling import Level3Sampler


def concept_lists(n_docs: int, per_doc: int, vocab: int, topics: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    pool_size = 300
    pools = rng.choice(vocab, size=(topics, pool_size), p=p)
    pool_p = np.arange(1, pool_size + 1, dtype=np.float64) ** -1.0
    pool_p /= pool_p.sum()
    doc_topic = rng.integers(0, topics, n_docs)
    n_topic = int(round(0.7 * per_doc))
    local = rng.choice(pool_size, size=(n_docs, n_topic * 2), p=pool_p)
    glob = rng.choice(vocab, size=(n_docs, (per_doc - n_topic) * 2), p=p)
    names = [f"concept {i}" for i in range(vocab)]
    out = []
    for d in range(n_docs):
        ids = list(dict.fromkeys(pools[doc_topic[d], local[d]].tolist()))[:n_topic]
        ids += [g for g in dict.fromkeys(glob[d].tolist()) if g not in ids][:per_doc - len(ids)]
        out.append([names[i] for i in ids])
    return out


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--concepts-per-doc", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=200_000)
    ap.add_argument("--topics", type=int, default=2_000)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--naive-docs", type=int, default=10_000)
    ap.add_argument("--save", action="store_true", help="also time save_graph/load_graph (disk)")
    ap.add_argument("--skip-networkx", action="store_true", help="only the builder and its sampler (large runs)")
    args = ap.parse_args()

    t = time.perf_counter()
    docs = concept_lists(args.docs, args.concepts_per_doc, args.vocab, args.topics)
    print(f"synthetic concept lists: {args.docs:,} docs x <= {args.concepts_per_doc} concepts "
          f"({sum(map(len, docs)):,} mentions) in {time.perf_counter() - t:.1f}s")
    rows = []

    b = GraphBuilder()
    t = time.perf_counter()
    for i, cs in enumerate(docs):
        b.add(f"doc{i}", cs)
    b.finish()
    t_add = time.perf_counter() - t
    rows.append(("graph build: GraphBuilder.add + finish (streaming)", t_add,
                 f"{args.docs / t_add:,.0f} docs/s; {len(b.names):,} concepts, {len(b.keys):,} edges"))

    def sample(sampler, label, t_index):
        rows.append((f"level 3 ({label}): sampler index", t_index, ""))
        t = time.perf_counter()
        combos = sampler.sample(args.samples)
        t_s = time.perf_counter() - t
        refs = sum(len(c.reference_ids) for c in combos) / max(len(combos), 1)
        rows.append((f"level 3 ({label}): sample k={args.k}", t_s,
                     f"{len(combos) / t_s:,.0f} combinations/s ({len(combos):,}; {refs:.2f} refs each; "
                     f"rejected {sampler.rejected})"))

    t = time.perf_counter()
    s = Level3Sampler.from_builder(b, k=args.k, seed=0)
    sample(s, "from builder", time.perf_counter() - t)
    del s

    if not args.skip_networkx:
        t = time.perf_counter()
        G = b.to_networkx()
        t_nx = time.perf_counter() - t
        rows.append(("graph build: to nx.Graph", t_nx, f"{G.number_of_nodes():,} nodes, {G.number_of_edges():,} edges"))
        rows.append(("graph build: total with nx.Graph", t_add + t_nx, f"{args.docs / (t_add + t_nx):,.0f} docs/s"))
        del b
        t = time.perf_counter()
        st = graph_stats(G)
        rows.append(("graph_stats (networkx)", time.perf_counter() - t,
                     f"{st['components']['count']:,} components, median degree {st['degree']['median']}"))
        if args.save:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                save_graph(G, tmp)
                rows.append(("save_graph", time.perf_counter() - t, ""))
                t = time.perf_counter()
                load_graph(tmp)
                rows.append(("load_graph", time.perf_counter() - t, ""))
        t = time.perf_counter()
        s = Level3Sampler(G, k=args.k, seed=0)
        sample(s, "from nx.Graph", time.perf_counter() - t)
        del s, G

        import networkx as nx

        n = min(args.naive_docs, args.docs)
        H = nx.Graph()
        t = time.perf_counter()
        for cs in docs[:n]:
            for u, v in combinations(cs, 2):
                if H.has_edge(u, v):
                    H[u][v]["weight"] += 1
                else:
                    H.add_edge(u, v, weight=1)
        t_naive = time.perf_counter() - t
        rows.append((f"baseline: nx add_edge per pair ({n:,} docs)", t_naive, f"{n / t_naive:,.0f} docs/s"))

    w = max(len(r[0]) for r in rows)
    print(f"{'step':<{w}}  {'seconds':>8}  result")
    for name, sec, res in rows:
        print(f"{name:<{w}}  {sec:8.2f}  {res}")
    print(f"peak RSS {_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
