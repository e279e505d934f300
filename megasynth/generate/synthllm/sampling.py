"""Concept-combination sampling at the three SynthLLM levels (Qin et al. 2025, "Scaling Laws of
Synthetic Data for Language Models").

- Level 1 (:func:`sample_level1`): one reference document with all its concepts; documents drawn
  without replacement (seeded), so at most one combination per document.
- Level 2 (:func:`sample_level2`): a random ``k``-subset of one document's concepts (documents with at
  least ``k`` concepts), no (document, subset) repeated.
- Level 3 (:class:`Level3Sampler`): weighted random walks over the concept graph. A walk starts at a
  concept drawn with probability proportional to its weighted degree (the stationary distribution of
  the walk) and moves to neighbour ``v`` of the current concept ``u`` with probability
  ``w(u, v) / Σ_x w(u, x)`` (edge weight = co-occurring documents); revisits are allowed, new concepts
  are collected until ``k`` distinct ones or ``max_steps`` steps. A combination is kept only if no
  single document mentions all its concepts (it crosses document boundaries) and it was not drawn
  before (as a set). Its reference documents are chosen greedily: for each concept not yet covered,
  the document (among at most 64 sampled documents that mention it) that mentions the most uncovered
  concepts of the combination. Checks intersect the concepts' sorted document lists with numpy.

Each combination carries ``reference_ids``: the documents that ground its concepts.
"""

from __future__ import annotations

import bisect
import logging
import random
from array import array
from dataclasses import asdict, dataclass

logger = logging.getLogger("megasynth.generate")

_REF_CANDIDATES = 64


@dataclass(frozen=True)
class Combination:
    """A concept combination: ``level`` (1, 2, 3), ``concepts`` (normalised), grounding ``reference_ids``."""

    level: int
    concepts: tuple[str, ...]
    reference_ids: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"], d["reference_ids"] = list(self.concepts), list(self.reference_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Combination":
        return cls(int(d["level"]), tuple(d["concepts"]), tuple(d["reference_ids"]))


def sample_level1(documents: dict[str, list[str]], n: int, rng: random.Random) -> list[Combination]:
    """``n`` single-document combinations (fewer if fewer documents have concepts), seeded by ``rng``."""
    docs = [d for d, cs in documents.items() if cs]
    picked = rng.sample(docs, min(n, len(docs)))
    return [Combination(1, tuple(documents[d]), (d,)) for d in picked]


def sample_level2(documents: dict[str, list[str]], n: int, k: int, rng: random.Random,
                  max_attempts: int = 50) -> list[Combination]:
    """``n`` distinct ``k``-subsets of single documents' concepts (concept order as extracted).

    Fewer than ``n`` when the documents do not offer that many distinct subsets within
    ``n * max_attempts`` draws.
    """
    docs = [d for d, cs in documents.items() if len(cs) >= k]
    out: list[Combination] = []
    seen: set = set()
    if not docs:
        return out
    for _ in range(n * max_attempts):
        if len(out) >= n:
            break
        d = rng.choice(docs)
        cs = documents[d]
        idx = sorted(rng.sample(range(len(cs)), k))
        key = (d, tuple(idx))
        if key in seen:
            continue
        seen.add(key)
        out.append(Combination(2, tuple(cs[i] for i in idx), (d,)))
    return out


class Level3Sampler:
    """Weighted random walks over a concept graph (see module docstring).

    The graph is held as compact CSR arrays (``array``): per concept its neighbours (ascending) and the running sum
    of edge weights (one global non-decreasing sequence, so a step is one ``bisect`` inside the
    concept's segment) and its documents (ascending indices; checks intersect them with numpy). Build it from an
    ``nx.Graph`` of :mod:`.graph` (``Level3Sampler(G, …)``) or, without networkx, from a finished
    :class:`~.graph.GraphBuilder` (:meth:`from_builder`).

    Args:
        G: ``nx.Graph`` (node attr ``docs``, edge attr ``weight``, ``G.graph['documents']``), or ``None``
            when called from :meth:`from_builder`.
        k: distinct concepts per combination (>= 3: two co-occurring concepts always share a document).
        seed: seed of the sampler's ``random.Random``.
        max_steps: walk steps allowed to collect ``k`` concepts.
    """

    def __init__(self, G, k: int, seed: int, max_steps: int = 32):
        self.k, self.max_steps = k, max_steps
        self.rng = random.Random(seed)
        self.seen: set[frozenset[int]] = set()
        self.rejected = {"single_document": 0, "repeat": 0, "short_walk": 0}
        if G is None:
            return
        self.names = list(G.nodes)
        idx = {c: i for i, c in enumerate(self.names)}
        nbr, wts, ptr = array("i"), array("d"), array("q", [0])
        for c in self.names:
            adj = G.adj[c]
            for j, w in sorted((idx[v], float(attrs.get("weight", 1))) for v, attrs in adj.items()):
                nbr.append(j)
                wts.append(w)
            ptr.append(len(nbr))
        docs = G.graph.get("documents") or {}
        self.doc_names = list(docs)
        doc_index = {d: j for j, d in enumerate(self.doc_names)}
        n_flat, n_ptr = array("i"), array("q", [0])
        for c in self.names:
            n_flat.extend(sorted(doc_index[d] for d in G.nodes[c].get("docs", ())))
            n_ptr.append(len(n_flat))
        self._index(nbr, wts, ptr, n_flat, n_ptr)

    @classmethod
    def from_builder(cls, b, k: int, seed: int, max_steps: int = 32) -> "Level3Sampler":
        """A sampler over a :class:`~.graph.GraphBuilder`'s counts (no networkx graph is built)."""
        import numpy as np

        from megasynth.generate.synthllm.graph import _MASK, _SHIFT

        b.finish()
        self = cls(None, k, seed, max_steps)
        self.names, self.doc_names = list(b.names), list(b.doc_ids)
        u = (b.keys >> _SHIFT).astype(np.int64)
        v = (b.keys & _MASK).astype(np.int64)
        src = np.concatenate([u, v])
        dst = np.concatenate([v, u]).astype(np.int32)
        w = np.concatenate([b.counts, b.counts]).astype(np.float64)
        order = np.lexsort((dst, src))  # by concept, then neighbour (sorted segments)
        ptr = np.zeros(len(self.names) + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=len(self.names)), out=ptr[1:])
        n_ptr, n_flat = b.node_documents()
        self._index(array("i", dst[order].tobytes()), array("d", w[order].tobytes()), array("q", ptr.tobytes()),
                    array("i", n_flat.astype(np.int32).tobytes()), array("q", n_ptr.tobytes()))
        return self

    def _index(self, nbr, wts, ptr, n_flat, n_ptr) -> None:
        import numpy as np

        self.nbr, self.ptr = nbr, ptr
        cum = np.cumsum(np.frombuffer(wts, dtype=np.float64)) if len(wts) else np.zeros(0)
        self.cum = array("d", cum.tobytes())
        p = np.frombuffer(ptr, dtype=np.int64)
        padded = np.concatenate([[0.0], cum])  # padded[j] = sum of the first j weights
        strength = padded[p[1:]] - padded[p[:-1]]
        self.start_cum = np.cumsum(strength).tolist()
        self.n_flat, self.n_ptr = n_flat, n_ptr
        self._np_rng = np.random.default_rng(self.rng.getrandbits(63))
        self._n_np = np.frombuffer(n_flat, dtype=np.int32) if len(n_flat) else np.zeros(0, dtype=np.int32)

    # ---------------------------------------------------------------- walk
    def start(self) -> int | None:
        """A start concept ∝ weighted degree; ``None`` if the graph has no edge."""
        if not self.start_cum or self.start_cum[-1] <= 0:
            return None
        return bisect.bisect_right(self.start_cum, self.rng.random() * self.start_cum[-1])

    def step(self, u: int) -> int | None:
        """One walk step from concept index ``u``: neighbour ∝ edge weight; ``None`` if ``u`` is isolated."""
        lo, hi = self.ptr[u], self.ptr[u + 1]
        if lo == hi:
            return None
        cum = self.cum
        base = cum[lo - 1] if lo else 0.0
        j = bisect.bisect_right(cum, base + self.rng.random() * (cum[hi - 1] - base), lo, hi)
        return self.nbr[min(j, hi - 1)]

    def walk(self) -> list[int] | None:
        """Distinct concept indices in order of first visit (``k`` of them), or ``None`` for a short walk."""
        u = self.start()
        if u is None:
            return None
        chosen, chosen_set = [u], {u}
        for _ in range(self.max_steps):
            u = self.step(u)
            if u is None:
                break
            if u not in chosen_set:
                chosen.append(u)
                chosen_set.add(u)
                if len(chosen) == self.k:
                    return chosen
        return None

    # ---------------------------------------------------------------- checks
    def _docs(self, c: int):
        """Documents (indices, ascending) that mention concept ``c``: a numpy view."""
        return self._n_np[self.n_ptr[c]:self.n_ptr[c + 1]]

    def single_document(self, combo: list[int]) -> bool:
        """True if one document mentions every concept of ``combo`` (intersection of their sorted
        document lists, rarest first, by binary search)."""
        import numpy as np

        for i, u in enumerate(combo):  # cheap necessary condition: every pair co-occurs somewhere
            for v in combo[i + 1:]:
                if not self.adjacent(u, v):
                    return False
        order = sorted(combo, key=lambda c: self.n_ptr[c + 1] - self.n_ptr[c])
        first, rest = self._docs(order[0]), [self._docs(c) for c in order[1:]]
        for start in range(0, first.size, 1024):  # chunks: frequent concepts usually share a document early
            common = first[start:start + 1024]
            for arr in rest:  # sorted: binary search the common candidates in it
                common = common[arr[np.minimum(np.searchsorted(arr, common), arr.size - 1)] == common]
                if common.size == 0:
                    break
            if common.size:
                return True
        return False

    def adjacent(self, u: int, v: int) -> bool:
        """True if concepts ``u`` and ``v`` share an edge (binary search in the sorted neighbour segment)."""
        if self.ptr[u + 1] - self.ptr[u] > self.ptr[v + 1] - self.ptr[v]:
            u, v = v, u
        lo, hi = self.ptr[u], self.ptr[u + 1]
        j = bisect.bisect_left(self.nbr, v, lo, hi)
        return j < hi and self.nbr[j] == v

    def references(self, combo: list[int]) -> list[int]:
        """Greedy grounding documents (indices) that together mention every concept of ``combo``: for the
        first uncovered concept, the candidate document (all, or 64 drawn with replacement, deduplicated)
        that mentions the most uncovered concepts (first such candidate on ties), until all are covered."""
        import numpy as np

        uncovered = list(combo)
        refs: list[int] = []
        while uncovered:
            c, others = uncovered[0], uncovered[1:]
            cands = self._docs(c)
            if len(cands) > _REF_CANDIDATES:
                cands = cands[np.unique(self._np_rng.integers(0, len(cands), _REF_CANDIDATES))]
            score = np.zeros(len(cands), dtype=np.int64)
            masks = []
            for o in others:
                arr = self._docs(o)
                pos = np.minimum(np.searchsorted(arr, cands), len(arr) - 1)
                m = arr[pos] == cands
                masks.append(m)
                score += m
            best = int(np.argmax(score))
            refs.append(int(cands[best]))
            uncovered = [o for o, m in zip(others, masks) if not m[best]]
        return refs

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, max_attempts: int = 50) -> list[Combination]:
        """Up to ``n`` new cross-document combinations (never one returned before by this sampler)."""
        out: list[Combination] = []
        for _ in range(n * max_attempts):
            if len(out) >= n:
                break
            combo = self.walk()
            if combo is None:
                self.rejected["short_walk"] += 1
                continue
            key = frozenset(combo)
            if key in self.seen:
                self.rejected["repeat"] += 1
                continue
            self.seen.add(key)
            if self.single_document(combo):
                self.rejected["single_document"] += 1
                continue
            refs = self.references(combo)
            out.append(Combination(3, tuple(self.names[c] for c in combo),
                                   tuple(self.doc_names[d] for d in refs)))
        if len(out) < n:
            logger.warning("synthllm level 3: %d of %d combinations after %d walks (rejected %s)",
                           len(out), n, n * max_attempts, self.rejected)
        return out


def sample_combinations(G, samples_per_level: dict[str, int], *, k: int, seed: int, max_steps: int = 32,
                        max_attempts: int = 50) -> tuple[list[Combination], dict]:
    """All combinations of the requested levels, in level order, plus per-level sampling stats
    (``requested``, ``sampled``; level 3 also ``rejected`` walks by reason)."""
    documents = G.graph.get("documents") or {}
    out: list[Combination] = []
    stats: dict = {}
    for level in sorted(samples_per_level, key=int):
        n = int(samples_per_level[level])
        rng = random.Random(f"{seed}-level{level}")
        if n <= 0:
            continue
        if level == "1":
            combos = sample_level1(documents, n, rng)
            extra = {}
        elif level == "2":
            combos = sample_level2(documents, n, k, rng, max_attempts)
            extra = {}
        else:
            s = Level3Sampler(G, k, seed=rng.randrange(2**31), max_steps=max_steps)
            combos = s.sample(n, max_attempts)
            extra = {"rejected": dict(s.rejected)}
        stats[level] = {"requested": n, "sampled": len(combos), **extra}
        out.extend(combos)
    return out, stats
