"""The concept co-occurrence graph (networkx), built streaming over concept shards (SynthLLM step 3).

Nodes are normalised concepts with ``df`` (document frequency: documents whose concept list holds the
concept) and ``docs`` (those documents' reference ids, in insertion order). An edge joins two concepts
that co-occur in at least one document; its ``weight`` is the number of such documents. Graph
attribute ``documents`` maps each reference id to its concept list (order of extraction).

:class:`GraphBuilder` keeps only integer ids, the documents' concept-id lists and numpy pair counts, so
memory is bounded by the graph (nodes + edges + document concept lists), not by the corpus text;
:meth:`GraphBuilder.to_networkx` materialises the ``nx.Graph`` once at the end (networkx needs ~0.5 KB
per edge: past a few million edges, feed :class:`~.sampling.Level3Sampler` from the builder instead).

On disk (:func:`save_graph`): ``documents.jsonl`` (``ref_id``, ``concepts``), ``nodes.jsonl``
(``concept``, ``df``), ``edges.tsv`` (``u<TAB>v<TAB>weight``, concept strings; concepts never contain a
tab or newline after normalisation) and ``stats.json`` (:func:`graph_stats`), written atomically, with
a completion marker on ``stats.json``.
"""

from __future__ import annotations

import json
import statistics
from array import array
from pathlib import Path
from typing import Iterable

import numpy as np

from megasynth.utils import MegasynthError, atomic_path, mark_done, read_jsonl, write_json

STATS_FILE = "stats.json"
"""The graph directory's statistics; its completion marker says the graph is whole."""

_SHIFT = 32
_MASK = (1 << _SHIFT) - 1
_FLUSH_PAIRS = 1 << 22  # pair occurrences buffered before they are merged into the counts


class GraphBuilder:
    """Streaming builder: call :meth:`add` once per document, then :meth:`to_networkx`.

    State (memory bounded by the graph, not the corpus): concept names and ids; each document's concept
    ids in one flat ``array('i')`` with offsets; co-occurrence counts as two sorted numpy arrays (pair key
    ``u << 32 | v`` with ``u < v``, and count). Documents are buffered and their pairs counted with numpy
    every ~4M pair occurrences: per document length ``m``, the sorted id matrix gives all ``m(m-1)/2``
    keys at once; ``np.unique`` counts them and a sorted merge adds them to the running counts.

    Example:
        >>> b = GraphBuilder(); b.add("d1", ["a", "b"]); b.add("d2", ["b", "c"])
        >>> G = b.to_networkx(); G["a"]["b"]["weight"], G.nodes["b"]["df"]
        (1, 2)
    """

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self.doc_ids: list[str] = []
        self.flat = array("i")
        self.offsets = array("q", [0])
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self._flushed = 0  # documents whose pairs are counted
        self._pending_pairs = 0

    def add(self, ref_id: str, concepts: Iterable[str]) -> None:
        """Add one document's concepts (duplicates within the document count once)."""
        ids_map = self.ids
        cs = list(dict.fromkeys(concepts))  # duplicates count once; order kept
        get = ids_map.get
        cids = [get(c) for c in cs]
        if None in cids:
            names = self.names
            for j, c in enumerate(cs):
                if cids[j] is None:
                    cids[j] = ids_map[c] = len(names)
                    names.append(c)
        self.doc_ids.append(ref_id)
        self.flat.extend(cids)
        self.offsets.append(len(self.flat))
        m = len(cids)
        self._pending_pairs += m * (m - 1) // 2
        if self._pending_pairs >= _FLUSH_PAIRS:
            self._flush()

    def _flush(self) -> None:
        n_docs = len(self.doc_ids)
        if self._flushed == n_docs:
            return
        off = np.frombuffer(self.offsets, dtype=np.int64)[self._flushed:n_docs + 1].copy()
        flat = np.frombuffer(self.flat, dtype=np.int32)[off[0]:off[-1]].astype(np.int64)
        off -= off[0]
        lengths = np.diff(off)
        parts = []
        for m in np.unique(lengths):
            if m < 2:
                continue
            rows = off[:-1][lengths == m][:, None] + np.arange(m)
            mat = np.sort(flat[rows], axis=1)
            iu, ju = np.triu_indices(int(m), 1)
            parts.append(((mat[:, iu] << _SHIFT) | mat[:, ju]).ravel())
        self._flushed, self._pending_pairs = n_docs, 0
        if not parts:
            return
        uk, cnt = np.unique(np.concatenate(parts), return_counts=True)
        pos = np.searchsorted(self.keys, uk)
        hit = pos < len(self.keys)
        hit[hit] = self.keys[pos[hit]] == uk[hit]
        np.add.at(self.counts, pos[hit], cnt[hit])
        new = ~hit
        self.keys = np.insert(self.keys, pos[new], uk[new])
        self.counts = np.insert(self.counts, pos[new], cnt[new])

    def finish(self) -> "GraphBuilder":
        """Count the pairs of buffered documents; check that no reference id was added twice.

        Raises:
            MegasynthError: a document id was added twice (a document is counted once).
        """
        self._flush()
        if len(set(self.doc_ids)) != len(self.doc_ids):
            seen: set[str] = set()
            dup = next(x for x in self.doc_ids if x in seen or seen.add(x))
            raise MegasynthError(f"concept graph: document {dup!r} added twice")
        return self

    def node_documents(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR of documents per concept: ``(indptr [n_nodes + 1], doc indices)``, documents in insertion order."""
        flat = np.frombuffer(self.flat, dtype=np.int32)
        off = np.frombuffer(self.offsets, dtype=np.int64)
        doc_of = np.repeat(np.arange(len(self.doc_ids), dtype=np.int32), np.diff(off))
        order = np.argsort(flat, kind="stable")
        indptr = np.zeros(len(self.names) + 1, dtype=np.int64)
        np.cumsum(np.bincount(flat, minlength=len(self.names)), out=indptr[1:])
        return indptr, doc_of[order]

    def to_networkx(self):
        """The graph as ``nx.Graph`` (node attrs ``df``, ``docs``; edge attr ``weight``; ``G.graph['documents']``)."""
        import networkx as nx

        self.finish()
        G = nx.Graph()
        doc_ids, names = self.doc_ids, self.names
        indptr, docs = self.node_documents()
        docs_l, ptr = docs.tolist(), indptr.tolist()
        G.add_nodes_from((names[i], {"df": ptr[i + 1] - ptr[i], "docs": [doc_ids[d] for d in docs_l[ptr[i]:ptr[i + 1]]]})
                         for i in range(len(names)))
        us, vs = (self.keys >> _SHIFT).tolist(), (self.keys & _MASK).tolist()
        G.add_edges_from((names[u], names[v], {"weight": w}) for u, v, w in zip(us, vs, self.counts.tolist()))
        off, flat = self.offsets.tolist(), self.flat.tolist()
        G.graph["documents"] = {doc_ids[d]: [names[i] for i in flat[off[d]:off[d + 1]]] for d in range(len(doc_ids))}
        return G


def build_graph(documents: Iterable[tuple[str, list[str]]]):
    """Build the concept graph from ``(ref_id, concepts)`` pairs (streamed); returns ``nx.Graph``."""
    b = GraphBuilder()
    for ref_id, concepts in documents:
        b.add(ref_id, concepts)
    return b.to_networkx()


def _summary(values: list[float]) -> dict:
    if not values:
        return {"min": None, "mean": None, "median": None, "p90": None, "max": None}
    s = sorted(values)
    return {"min": s[0], "mean": round(sum(s) / len(s), 4), "median": statistics.median(s),
            "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "max": s[-1]}


def graph_stats(G) -> dict:
    """Statistics: documents, nodes, edges, density, degree / weighted degree / edge weight / df summaries
    (min, mean, median, p90, max), degree histogram in power-of-two bins (``"0"``, ``"1"``, ``"2-3"``,
    ``"4-7"`` …), connected components (count, largest size, largest share, isolated nodes), and how well
    concepts join documents: ``shared_concepts`` (concepts in >= 2 documents: ``count``, ``share`` of all
    concepts) and ``documents_with_shared_concept`` (documents holding such a concept: ``count``, ``share``)."""
    import networkx as nx

    n, m = G.number_of_nodes(), G.number_of_edges()
    shared = [c for c, df in G.nodes(data="df") if (df or 0) >= 2]
    docs = G.graph.get("documents", {})
    joined = {d for c in shared for d in G.nodes[c].get("docs", ())}
    degrees = [d for _, d in G.degree()]
    hist: dict[str, int] = {}
    for d in degrees:
        if d == 0:
            label = "0"
        else:
            lo = 1 << (d.bit_length() - 1)
            label = str(lo) if lo == 1 else f"{lo}-{2 * lo - 1}"
        hist[label] = hist.get(label, 0) + 1
    hist = dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0])))
    comps = [len(c) for c in nx.connected_components(G)] if n else []
    return {
        "documents": len(G.graph.get("documents", {})),
        "nodes": n, "edges": m,
        "density": round(nx.density(G), 6) if n > 1 else 0.0,
        "degree": _summary(degrees),
        "weighted_degree": _summary([d for _, d in G.degree(weight="weight")]),
        "edge_weight": _summary([w for _, _, w in G.edges(data="weight")]),
        "document_frequency": _summary([df for _, df in G.nodes(data="df")]),
        "degree_histogram": hist,
        "components": {"count": len(comps), "largest": max(comps, default=0),
                       "largest_share": round(max(comps, default=0) / n, 4) if n else 0.0,
                       "isolated": sum(1 for d in degrees if d == 0)},
        "shared_concepts": {"count": len(shared), "share": round(len(shared) / n, 4) if n else 0.0},
        "documents_with_shared_concept": {"count": len(joined),
                                          "share": round(len(joined) / len(docs), 4) if docs else 0.0},
    }


def save_graph(G, out_dir: str | Path, info: dict | None = None) -> dict:
    """Write the graph files and ``stats.json`` into ``out_dir`` (atomically, marker on ``stats.json``);
    return the stats. ``info`` (e.g. how concepts were merged) is added to the stats and the marker."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "documents.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for ref_id, cs in G.graph.get("documents", {}).items():
            f.write(json.dumps({"ref_id": ref_id, "concepts": cs}, ensure_ascii=False) + "\n")
    with atomic_path(out / "nodes.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for c, df in G.nodes(data="df"):
            f.write(json.dumps({"concept": c, "df": df}, ensure_ascii=False) + "\n")
    with atomic_path(out / "edges.tsv") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for u, v, w in G.edges(data="weight"):
            f.write(f"{u}\t{v}\t{w}\n")
    stats = {**graph_stats(G), **(info or {})}
    write_json(out / STATS_FILE, stats)
    mark_done(out / STATS_FILE, {"nodes": stats["nodes"], "edges": stats["edges"], **(info or {})})
    return stats


def load_graph(graph_dir: str | Path):
    """Read a graph written by :func:`save_graph` back into an ``nx.Graph`` (node ``docs`` rebuilt from
    ``documents.jsonl``).

    Raises:
        MegasynthError: missing file, or a malformed line (``file:line``).
    """
    import networkx as nx

    d = Path(graph_dir)
    G = nx.Graph()
    documents: dict[str, list[str]] = {}
    for rec in read_jsonl(d / "documents.jsonl", required=("ref_id", "concepts")):
        documents[rec["ref_id"]] = list(rec["concepts"])
    for rec in read_jsonl(d / "nodes.jsonl", required=("concept", "df")):
        G.add_node(rec["concept"], df=int(rec["df"]), docs=[])
    for ref_id, cs in documents.items():
        for c in cs:
            if c not in G:
                raise MegasynthError(f"{d / 'documents.jsonl'}: concept {c!r} of {ref_id!r} missing from nodes.jsonl")
            G.nodes[c]["docs"].append(ref_id)
    path = d / "edges.tsv"
    if not path.exists():
        raise MegasynthError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or not parts[2].isdigit():
                raise MegasynthError(f"{path}:{lineno}: expected 'u<TAB>v<TAB>weight'")
            G.add_edge(parts[0], parts[1], weight=int(parts[2]))
    G.graph["documents"] = documents
    return G
