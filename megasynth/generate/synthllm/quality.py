"""Diversity and quality statistics of SynthLLM records, per level, and the study-report section.

- ``distinct_n``: distinct word n-grams / all word n-grams over a level's texts (lower-cased),
  n = 1, 2, 3 ("distinct-n", Li et al. 2016, NAACL).
- ``pairwise_jaccard``: mean Jaccard similarity of the word 3-gram sets of up to ``max_pairs`` seeded
  random pairs of texts (lower = more diverse; SynthLLM compares levels this way, Qin et al. 2025).
- ``concept_coverage``: distinct concepts in the level's kept records / nodes of the concept graph.
- ``length_words``: min, mean, median, p90, max of words per record.

Distinct-n and Jaccard use a seeded reservoir sample of at most 2,000 records per level
(``ngram_sample_records``); lengths, tokens and coverage use every record.
- ``filtered_share``: filtered requests / requests, per reason.
"""

from __future__ import annotations

import random
import statistics

from megasynth.layout import StudyLayout


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], ns: tuple[int, ...] = (1, 2, 3)) -> dict[str, float | None]:
    """Distinct-n ratio per ``n`` over all ``texts`` (``None`` when there is no n-gram)."""
    out: dict[str, float | None] = {}
    tokenized = [t.lower().split() for t in texts]
    for n in ns:
        grams = [g for w in tokenized for g in _ngrams(w, n)]
        out[str(n)] = round(len(set(grams)) / len(grams), 4) if grams else None
    return out


def pairwise_jaccard(texts: list[str], n: int = 3, max_pairs: int = 500, seed: int = 0) -> float | None:
    """Mean word-``n``-gram Jaccard similarity over up to ``max_pairs`` seeded random distinct pairs."""
    sets = [set(_ngrams(t.lower().split(), n)) for t in texts]
    m = len(sets)
    if m < 2:
        return None
    rng = random.Random(seed)
    total = m * (m - 1) // 2
    if total <= max_pairs:
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    else:
        pairs = []
        seen = set()
        while len(pairs) < max_pairs:
            i, j = rng.sample(range(m), 2)
            key = (min(i, j), max(i, j))
            if key not in seen:
                seen.add(key)
                pairs.append(key)
    vals = []
    for i, j in pairs:
        a, b = sets[i], sets[j]
        union = len(a | b)
        vals.append(len(a & b) / union if union else 0.0)
    return round(sum(vals) / len(vals), 4)


def _summary(values: list[float]) -> dict:
    if not values:
        return {"min": None, "mean": None, "median": None, "p90": None, "max": None}
    s = sorted(values)
    return {"min": s[0], "mean": round(sum(s) / len(s), 2), "median": statistics.median(s),
            "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "max": s[-1]}


class LevelAccumulator:
    """Streams one level's kept records: word lengths, output tokens and concepts of all of them, and a
    seeded reservoir of at most ``max_texts`` texts for the n-gram statistics (memory stays bounded)."""

    def __init__(self, max_texts: int = 2000, seed: int = 0):
        self.max_texts, self.rng = max_texts, random.Random(seed)
        self.n = 0
        self.texts: list[str] = []
        self.lengths: list[int] = []
        self.output_tokens: list[int] = []
        self.concepts: set[str] = set()

    def add(self, rec: dict) -> None:
        text = rec["text"]
        self.n += 1
        self.lengths.append(len(text.split()))
        self.output_tokens.append(int(rec.get("output_tokens", 0)))
        self.concepts.update(rec.get("concepts", ()))
        if len(self.texts) < self.max_texts:
            self.texts.append(text)
        else:  # reservoir sampling (Vitter's algorithm R)
            j = self.rng.randrange(self.n)
            if j < self.max_texts:
                self.texts[j] = text

    def report(self, counts: dict, graph_nodes: int, seed: int = 0) -> dict:
        """Diversity/quality statistics (see module docstring); ``counts``: ``requests`` and ``filtered``
        (reason -> requests) of the level."""
        req = counts.get("requests", 0)
        return {
            "requests": req,
            "kept": self.n,
            "filtered_share": {k: round(v / req, 4) if req else 0.0 for k, v in counts.get("filtered", {}).items()},
            "distinct_n": distinct_n(self.texts),
            "pairwise_jaccard_3gram": pairwise_jaccard(self.texts, seed=seed),
            "ngram_sample_records": len(self.texts),
            "concept_coverage": round(len(self.concepts) / graph_nodes, 4) if graph_nodes else None,
            "distinct_concepts": len(self.concepts),
            "length_words": _summary(self.lengths),
            "output_tokens": _summary(self.output_tokens),
        }


def level_report(records: list[dict], counts: dict, graph_nodes: int, seed: int = 0) -> dict:
    """:meth:`LevelAccumulator.report` over a list of one level's kept ``records``."""
    acc = LevelAccumulator(max_texts=max(len(records), 1), seed=seed)
    for r in records:
        acc.add(r)
    return acc.report(counts, graph_nodes, seed)


def report_section(cfg, layout: StudyLayout) -> list[str]:
    """Markdown lines of the study report's SynthLLM section (empty when the source is not generated)."""
    import json

    if "synthllm" not in cfg.synthetic_sources:
        return []
    path = layout.synthetic_manifest("synthllm")
    if not path.exists():
        return []
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    g = m.get("graph", {})
    sel = m.get("selection", {})
    ext = m.get("extraction", {})
    md = ["## SynthLLM (concept-graph synthesis)", "",
          f"Reference documents: {sel.get('selected', 0)} selected of {sel.get('candidates', 0)} candidates; "
          f"extraction: {ext.get('ok', 0)} parsed, {ext.get('malformed', 0)} malformed, {ext.get('empty', 0)} "
          f"empty. Concept graph: {g.get('nodes', 0)} concepts, {g.get('edges', 0)} edges, "
          f"{g.get('components', {}).get('count', 0)} component(s).", ""]
    shared, joined, merge = g.get("shared_concepts", {}), g.get("documents_with_shared_concept", {}), g.get("merge", {})
    l3, tr, dc = m.get("level3", {}), m.get("trimmed", {}), m.get("decontamination", {})
    filtered = {k: v for k, v in m.get("counts", {}).get("filtered", {}).items() if v}
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    md += [f"Concepts in >= 2 documents: {shared.get('count', 0)} ({pct(shared.get('share'))}); documents holding "
           f"one: {joined.get('count', 0)} ({pct(joined.get('share'))}); near-identical concepts merged: "
           f"{merge.get('concepts_merged', 0)} of {merge.get('concepts_extracted', 0)} (Jaccard of content-word "
           f"stems >= {merge.get('threshold', '–')}); terms over the word limit dropped: "
           f"{ext.get('concepts_too_long', 0)}.", "",
           f"Level 3: {l3.get('kept', 0)} records kept of {l3.get('requested', 0)} requested "
           f"({l3.get('sampled', 0)} combinations sampled; rejected walks: {l3.get('rejected_walks', {})}).", "",
           f"Trimmed: {tr.get('questions', 0)} questions that went on into an answer or a next question, "
           f"{tr.get('answers', 0)} answers that went on into a next problem. Filtered: "
           f"{', '.join(f'{k} {v}' for k, v in filtered.items()) or 'none'}.", ""]
    if dc.get("tasks"):
        md += [f"Decontamination against {', '.join(dc['tasks'])} (problems and solutions, 13-word n-grams): "
               f"{dc.get('records_removed', 0)} of {dc.get('records_checked', 0)} records removed "
               f"({', '.join(f'{k}: {v}' for k, v in dc.get('removed_by_task', {}).items())}).", ""]
    md += ["| level | requests | kept | distinct-1 | distinct-2 | distinct-3 | 3-gram Jaccard | concept coverage "
          "| median words |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda x: "–" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
    for lvl, r in sorted(m.get("levels", {}).items()):
        dn = r.get("distinct_n", {})
        md.append(f"| {lvl} | {r.get('requests', 0)} | {r.get('kept', 0)} | {fmt(dn.get('1'))} | {fmt(dn.get('2'))} "
                  f"| {fmt(dn.get('3'))} | {fmt(r.get('pairwise_jaccard_3gram'))} | {fmt(r.get('concept_coverage'))} "
                  f"| {_median_words(r.get('length_words', {}).get('median'))} |")
    md += ["", "Distinct-n: distinct/all word n-grams (higher = more diverse); Jaccard: mean over sampled pairs "
           "(lower = more diverse). Source: `synthetic/synthllm/manifest.json`.", ""]
    return md


def _median_words(x) -> str:
    """A median word count: a whole number without decimals, a half (the mean of two middle counts) with one."""
    return "–" if x is None else f"{float(x):g}"
