"""The SynthLLM stage: references → concepts → graph → combinations → questions + answers, in shards.

Everything lands in ``synthetic/synthllm/`` (``layout.synthetic_dir("synthllm")``)::

    scores/shard-NNNNN.jsonl     every candidate: prefilter reason, rating (1-5) and raw output, selected
    concepts/shard-NNNNN.jsonl   every selected reference: status (ok/malformed/empty), concepts, raw output
    graph/                       documents.jsonl, nodes.jsonl, edges.tsv, stats.json (+ .done)
    combinations.jsonl           sampled concept combinations (level, concepts, reference_ids) (+ .done)
    shard-NNNNN.jsonl            final records (docs/CONTRACTS.md keys + level, concepts, reference_ids …)
    manifest.json                counts, provenance, graph statistics, per-level diversity report (+ .done)

Candidate ``i`` (the ``i``-th seeded excerpt of ``generation.source``, one per document, the same
sampler as the styles) belongs to scores/concepts shard ``i // shard_size``; combination ``j`` to output
shard ``j // shard_size``. Every shard is written atomically with a ``.done`` marker holding its counts;
a rerun redoes only shards without a marker, and rebuilds what depends on a redone shard (a new
concepts shard rebuilds the graph; a new graph resamples the combinations and redoes every output
shard). Reference ids are ``<document id>#<excerpt index>``; a record's ``source_id`` joins its
reference ids with ``+``.

Rating and extraction requests use vLLM structured output (a JSON schema) when
``generation.synthllm.structured_output`` is on and the installed vLLM has it; if the engine rejects
it, the requests are rerun without it (logged, recorded in the manifest). Outputs are always read by
the tolerant parsers of :mod:`.scoring` and :mod:`.concepts`; unreadable ones are counted, never fatal.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from megasynth.generate.engine import Completion, Request, VllmEngine, engine_from_config
from megasynth.generate.filters import REASONS, filter_reason
from megasynth.generate.model import GeneratorSpec, resolve_generator
from megasynth.generate.prompts import resolve_format
from megasynth.generate.reader import Excerpt, sample_excerpts
from megasynth.generate.synthllm import concepts as C
from megasynth.generate.synthllm.graph import GraphBuilder, load_graph, save_graph
from megasynth.generate.synthllm.prompts import (PROMPT_VERSIONS, answer_prompt, extract_prompt, question_prompt,
                                                 score_prompt)
from megasynth.generate.synthllm.quality import LevelAccumulator
from megasynth.generate.synthllm.sampling import Combination, sample_combinations
from megasynth.generate.synthllm.scoring import PREFILTER_REASONS, SCORE_SCHEMA, parse_score, prefilter_reason
from megasynth.study.layout import StudyLayout
from megasynth.utils import (MegasynthError, Progress, clear_done, is_done, mark_done, marker_path, read_json,
                             read_jsonl, write_json, write_jsonl)

logger = logging.getLogger("megasynth.generate")

SOURCE = "synthllm"
# Seed offsets per request kind (GPU per-request seeds: sampling.seed + offset + index).
_SEED_OFFSET = {"score": 0, "extract": 1 << 20, "question": 2 << 20, "answer": 3 << 20}
_ANSWER_REASONS = tuple(f"answer_{r}" for r in REASONS)
FILTER_REASONS = REASONS + _ANSWER_REASONS
EngineFactory = Callable[[GeneratorSpec], VllmEngine]


def synthllm_dir(layout: StudyLayout) -> Path:
    return layout.synthetic_dir(SOURCE)


def _shard(d: Path, k: int) -> Path:
    return d / f"shard-{k:05d}.jsonl"


def synthllm_done(layout: StudyLayout) -> bool:
    """True if ``manifest.json`` is marked done and every output shard it lists still has its marker."""
    d = synthllm_dir(layout)
    path = d / "manifest.json"
    if not (is_done(path) and path.exists()):
        return False
    return all(is_done(d / name) for name in read_json(path).get("shards", []))


def ref_id(ex: Excerpt) -> str:
    return f"{ex.source_id}#{ex.chunk}"


def structured_sampling(schema: dict) -> dict:
    """Sampling fields that constrain the output to ``schema``: ``structured_outputs`` (vLLM >= 0.11,
    ``StructuredOutputsParams(json=…)``) or ``guided_decoding`` (older vLLM); ``{}`` if neither exists."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema, disable_any_whitespace=True)}
    except ImportError:
        pass
    try:  # pragma: no cover - older vLLM
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    except ImportError:  # pragma: no cover
        return {}


def engine_kwargs(gen_cfg) -> dict:
    """Extra ``vllm.LLM`` arguments SynthLLM wants: with structured output on, the xgrammar backend with
    no free whitespace inside the JSON (``structured_outputs_config.disable_any_whitespace``, an
    engine-level vLLM setting that needs an explicit backend; otherwise a constrained small model pads
    its JSON with whitespace until ``max_tokens``)."""
    s = getattr(gen_cfg, "synthllm", None)
    if s is None or not (s.enabled and s.structured_output):
        return {}
    return {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}


class EngineCache:
    """One engine per model directory, created on first use through ``factory`` (default
    :func:`~megasynth.generate.engine.engine_from_config`). With the default factory only one engine
    lives at a time (starting another model's engine shuts the previous one down) and :meth:`close`
    shuts them down; engines from a caller's factory are the caller's to shut down."""

    def __init__(self, gen_cfg, factory: Optional[EngineFactory] = None):
        self.factory = factory
        self.default = lambda s: engine_from_config(gen_cfg, s.path, gen_cfg.sampling.seed, **engine_kwargs(gen_cfg))
        self.engines: dict[str, VllmEngine] = {}
        self.settings: dict[str, dict] = {}

    def get(self, spec: GeneratorSpec) -> VllmEngine:
        key = str(spec.path)
        if key not in self.engines:
            if self.factory is None:
                self.close()
            eng = (self.factory or self.default)(spec)
            self.engines[key] = eng
            self.settings[key] = eng.settings | {"start_s": round(eng.start_s, 2)}
        return self.engines[key]

    def close(self) -> None:
        if self.factory is None:
            for eng in self.engines.values():
                eng.shutdown()
            self.engines.clear()


# --------------------------------------------------------------------------------------------------
# Running requests shard by shard
# --------------------------------------------------------------------------------------------------
def _run_requests(engine_fn: Callable[[], VllmEngine], items: dict[int, list[tuple[object, Request]]],
                  write: Callable[[int, list[tuple[object, Completion]]], None], label: str) -> dict:
    """Run every shard's requests in one continuous batch; ``write(k, [(meta, completion)])`` is called
    once per shard as soon as all its requests are done (at once for a shard without requests).

    If the engine fails on requests with structured output, they are rerun once without it.
    Returns ``wall_s``, ``output_tokens`` and ``structured_fallback`` (bool).
    """
    stats = {"wall_s": 0.0, "output_tokens": 0, "structured_fallback": False}
    for k, lst in items.items():
        if not lst:
            write(k, [])
    flat = [(k, meta, req) for k, lst in items.items() for meta, req in lst]
    if not flat:
        return stats
    engine = engine_fn()
    by_shard: dict[int, list[int]] = {}
    for j, (k, _, _) in enumerate(flat):
        by_shard.setdefault(k, []).append(j)
    results: dict[int, Completion] = {}
    written: set[int] = set()
    progress = Progress(f"synthllm {label}", total=len(flat), unit="requests")
    t0 = time.monotonic()

    def run(indices: list[int]) -> None:
        chosen = set(indices)
        remaining = {k: sum(1 for j in js if j in chosen) for k, js in by_shard.items() if k not in written}

        def on_done(x: int, c: Completion) -> None:
            j = indices[x]
            results[j] = c
            stats["output_tokens"] += c.output_tokens
            progress.update(1)
            k = flat[j][0]
            remaining[k] -= 1
            if remaining[k] == 0:
                try:
                    write(k, [(flat[i][1], results[i]) for i in by_shard[k]])
                except Exception as e:  # not the engine's failure: never retried
                    raise _WriteError() from e
                written.add(k)

        engine.generate([flat[j][2] for j in indices], on_done)

    logger.info("synthllm %s: %d requests in %d shard(s)", label, len(flat), len(by_shard))
    try:
        run(list(range(len(flat))))
    except _WriteError as e:
        raise e.__cause__ from None
    except MegasynthError:
        raise
    except Exception as e:
        structured = [j for j in range(len(flat)) if "structured_outputs" in flat[j][2].sampling
                      or "guided_decoding" in flat[j][2].sampling]
        if not structured:
            raise
        logger.warning("synthllm %s: engine failed with structured output (%s: %s); rerunning without it",
                       label, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        stats["structured_fallback"] = True
        for j in range(len(flat)):
            flat[j][2].sampling.pop("structured_outputs", None)
            flat[j][2].sampling.pop("guided_decoding", None)
        results.clear()
        todo = [j for j in range(len(flat)) if flat[j][0] not in written]
        run(todo)
    stats["wall_s"] = time.monotonic() - t0
    progress.close()
    return stats


class _WriteError(Exception):
    """Wraps an error raised while writing a shard (so it is not mistaken for an engine failure)."""


def _truncate(tokenizer, text: str, n_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n_tokens:
        return text.strip()
    return tokenizer.decode(ids[:n_tokens]).strip() + " …"


def _sampling(g, max_tokens: int, kind: str, i: int, extra: dict | None = None) -> dict:
    s = {**asdict(g.sampling), "max_tokens": max_tokens, "seed": g.sampling.seed + _SEED_OFFSET[kind] + i}
    return {**s, **(extra or {})}


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
def run_synthllm(cfg, layout: StudyLayout, *, engine_factory: Optional[EngineFactory] = None) -> None:
    """Generate the ``synthllm`` source into ``synthetic/synthllm/`` (see module docstring).

    Args:
        cfg: the study (:class:`~megasynth.config.StudyConfig`); reads ``cfg.generation`` (generator,
            prompt format, sampling, filters) and ``cfg.generation.synthllm``.
        layout: the study's paths.
        engine_factory: builds an engine for a resolved model (default
            :func:`~megasynth.generate.engine.engine_from_config`); called lazily once per distinct model
            (generator, answer model), not at all when everything is done. Engines it returns are not
            shut down here.

    Raises:
        MegasynthError: missing corpus, bad model directory, vllm missing, a prompt longer than
            ``generation.max_model_len``.
    """
    g = cfg.generation
    s = g.synthllm
    d = synthllm_dir(layout)
    if synthllm_done(layout):
        logger.info("synthllm: done; skipping")
        return
    clear_done(d / "manifest.json")
    t_start = time.monotonic()
    shard_size = s.shard_size or g.shard_size
    from transformers import AutoTokenizer

    spec = resolve_generator(g.model, g.model_name)
    tok = AutoTokenizer.from_pretrained(str(spec.path))
    fmt = resolve_format(g.prompt_format, tok)
    if s.answer_model:
        aspec = resolve_generator(s.answer_model, s.answer_model_name)
        atok = AutoTokenizer.from_pretrained(str(aspec.path))
        afmt = resolve_format(g.prompt_format, atok)
    else:
        aspec, atok, afmt = spec, tok, fmt
    engines = EngineCache(g, engine_factory)
    try:
        excerpts = sample_excerpts(layout.corpus(cfg.generation_source), tok, num_documents=s.num_documents,
                                   max_input_tokens=g.max_input_tokens, seed=cfg.seed)
        refs = {ref_id(ex): ex for ex in excerpts}
        n_doc_shards = math.ceil(len(excerpts) / shard_size)
        logger.info("synthllm: %d candidate references of %s -> %d shard(s); generator %s, answers %s, %s prompts",
                    len(excerpts), cfg.generation_source, n_doc_shards, spec.name, aspec.name, fmt)
        timings: dict[str, dict] = {}
        new_scores, timings["score"] = _stage_scores(cfg, d, excerpts, shard_size, tok, fmt,
                                                     lambda: engines.get(spec))
        for k in new_scores:
            clear_done(_shard(d / "concepts", k))
        new_concepts, timings["extract"] = _stage_concepts(cfg, d, excerpts, n_doc_shards, tok, fmt,
                                                           lambda: engines.get(spec))
        G, rebuilt = _stage_graph(d, n_doc_shards, force=bool(new_concepts))
        combos, resampled = _stage_combinations(cfg, d, G, force=rebuilt)
        n_out = math.ceil(len(combos) / shard_size)
        if resampled:
            for k in range(n_out):
                clear_done(_shard(d, k))
        timings["generate"] = _stage_outputs(cfg, d, combos, refs, shard_size, (spec, tok, fmt),
                                             (aspec, atok, afmt), engines)
        _write_manifest(cfg, d, G, combos, n_doc_shards, n_out, spec, aspec, fmt, engines, timings,
                        time.monotonic() - t_start)
    finally:
        engines.close()


# ------------------------------------------------------------------ 1. reference selection
def _stage_scores(cfg, d: Path, excerpts: list[Excerpt], shard_size: int, tok, fmt, engine_fn):
    g, s = cfg.generation, cfg.generation.synthllm
    n_shards = math.ceil(len(excerpts) / shard_size)
    pending = [k for k in range(n_shards) if not is_done(_shard(d / "scores", k))]
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
        path = _shard(d / "scores", k)
        write_jsonl(path, recs)
        mark_done(path, counts)

    stats = _run_requests(engine_fn, items, write, "score")
    return set(pending), stats


# ------------------------------------------------------------------ 2. concept extraction
def _fresh(structured: dict) -> dict:
    """A new params object per request: vLLM records its chosen backend on the object."""
    if not structured:
        return {}
    import copy

    return {k: copy.deepcopy(v) for k, v in structured.items()}


def _stage_concepts(cfg, d: Path, excerpts: list[Excerpt], n_shards: int, tok, fmt, engine_fn):
    g, s = cfg.generation, cfg.generation.synthllm
    pending = [k for k in range(n_shards) if not is_done(_shard(d / "concepts", k))]
    index = {ref_id(ex): (i, ex) for i, ex in enumerate(excerpts)}
    schema = C.extraction_schema(s.max_concepts, s.max_concept_chars)
    structured = structured_sampling(schema) if s.structured_output else {}
    items: dict[int, list] = {}
    for k in pending:
        items[k] = []
        for rec in read_jsonl(_shard(d / "scores", k), required=("ref_id", "selected")):
            if not rec["selected"]:
                continue
            if rec["ref_id"] not in index:
                raise MegasynthError(f"{_shard(d / 'scores', k)}: reference {rec['ref_id']!r} is not among this "
                                     f"study's candidates (config changed?); delete {d} to regenerate")
            i, ex = index[rec["ref_id"]]
            p = extract_prompt(ex.text, s.max_concepts, fmt, tok)
            ids = tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            extra = {"stop": list(p.stop)} if p.stop and not structured else {}
            items[k].append((rec["ref_id"], Request(ids, _sampling(g, s.extract_max_tokens, "extract", i,
                                                                   {**extra, **_fresh(structured)}))))

    def write(k: int, done: list[tuple[str, Completion]]) -> None:
        counts = {"documents": 0, C.OK: 0, C.MALFORMED: 0, C.EMPTY: 0, "concepts": 0, "output_tokens": 0,
                  "method_json": 0, "method_partial_json": 0, "method_lines": 0, "method_none": 0,
                  "truncated": 0}
        recs = []
        for rid, c in done:
            parsed = C.parse_concepts(c.text, s.max_concepts)
            counts["documents"] += 1
            counts[parsed.status] += 1
            counts[f"method_{parsed.method}"] += 1
            counts["concepts"] += len(parsed.concepts)
            counts["output_tokens"] += c.output_tokens
            counts["truncated"] += c.finish_reason == "length"
            recs.append({"ref_id": rid, "status": parsed.status, "method": parsed.method,
                         "concepts": parsed.concepts, "topics": parsed.topics, "raw": c.text,
                         "finish_reason": c.finish_reason, "output_tokens": c.output_tokens})
        path = _shard(d / "concepts", k)
        write_jsonl(path, recs)
        mark_done(path, counts)
        if counts[C.MALFORMED] or counts[C.EMPTY]:
            logger.info("synthllm extract: %s: %d malformed, %d empty of %d", path.name, counts[C.MALFORMED],
                        counts[C.EMPTY], counts["documents"])

    stats = _run_requests(engine_fn, items, write, "extract")
    stats["structured_output"] = bool(structured) and not stats["structured_fallback"]
    return set(pending), stats


# ------------------------------------------------------------------ 3. graph
def _stage_graph(d: Path, n_shards: int, force: bool):
    gdir = d / "graph"
    if not force and is_done(gdir / "stats.json"):
        return load_graph(gdir), False
    clear_done(gdir / "stats.json")
    t0 = time.monotonic()
    b = GraphBuilder()
    for k in range(n_shards):  # streaming: one shard in memory at a time
        for rec in read_jsonl(_shard(d / "concepts", k), required=("ref_id", "status", "concepts")):
            if rec["status"] == C.OK and rec["concepts"]:
                b.add(rec["ref_id"], rec["concepts"])
    G = b.to_networkx()
    stats = save_graph(G, gdir)
    logger.info("synthllm graph: %d documents, %d concepts, %d edges, %d component(s) in %.2fs",
                stats["documents"], stats["nodes"], stats["edges"], stats["components"]["count"],
                time.monotonic() - t0)
    return G, True


# ------------------------------------------------------------------ 4. combinations
def _stage_combinations(cfg, d: Path, G, force: bool) -> tuple[list[Combination], bool]:
    s = cfg.generation.synthllm
    path = d / "combinations.jsonl"
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
def _stage_outputs(cfg, d: Path, combos: list[Combination], refs: dict[str, Excerpt], shard_size: int,
                   gen: tuple, ans: tuple, engines: EngineCache) -> dict:
    g, s = cfg.generation, cfg.generation.synthllm
    spec, tok, fmt = gen
    aspec, atok, afmt = ans
    n_out = math.ceil(len(combos) / shard_size)
    pending = [k for k in range(n_out) if not is_done(_shard(d, k))]
    q_items: dict[int, list] = {}
    for k in pending:
        q_items[k] = []
        for j in range(k * shard_size, min((k + 1) * shard_size, len(combos))):
            c = combos[j]
            missing = [r for r in c.reference_ids if r not in refs]
            if missing:
                raise MegasynthError(f"{d / 'combinations.jsonl'}: reference {missing[0]!r} is not among this "
                                     f"study's candidates (config changed?); delete {d} to regenerate")
            texts = [_truncate(tok, refs[r].text, s.reference_tokens) for r in c.reference_ids]
            p = question_prompt(c.level, list(c.concepts), texts, fmt, tok)
            ids = tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            extra = {"stop": list(p.stop)} if p.stop else {}
            q_items[k].append(((j, p), Request(ids, _sampling(g, s.question_max_tokens, "question", j, extra))))
    questions: dict[int, tuple] = {}  # combination index -> (prompt, completion)

    def keep_question(k: int, done: list) -> None:
        for (j, p), comp in done:
            questions[j] = (p, comp)

    stats_q = _run_requests(lambda: engines.get(spec), q_items, keep_question, "question")

    def q_text(j: int) -> str:
        p, comp = questions[j]
        return (p.response_prefix + comp.text).strip()

    def q_reason(j: int) -> str | None:
        return filter_reason(q_text(j), questions[j][1].finish_reason, min_output_words=min(g.min_output_words, 5),
                             keep_truncated=g.keep_truncated, max_repeated_ngram_frac=g.max_repeated_ngram_frac)

    a_items: dict[int, list] = {}
    for k in pending:
        a_items[k] = []
        if s.answer_max_tokens <= 0:
            continue
        for j in range(k * shard_size, min((k + 1) * shard_size, len(combos))):
            if q_reason(j) is not None:
                continue
            texts = [_truncate(atok, refs[r].text, s.reference_tokens) for r in combos[j].reference_ids]
            p = answer_prompt(q_text(j), texts, afmt, atok)
            ids = atok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            extra = {"stop": list(p.stop)} if p.stop else {}
            a_items[k].append(((j, p), Request(ids, _sampling(g, s.answer_max_tokens, "answer", j, extra))))

    def write(k: int, done: list) -> None:
        answers = {j: (p, comp) for (j, p), comp in done}
        levels = sorted({int(x) for x in s.samples_per_level})
        counts = {"requests": 0, "kept": 0, **{f"filtered_{r}": 0 for r in FILTER_REASONS},
                  "prompt_tokens": 0, "output_tokens": 0,
                  **{f"level{lv}_{x}": 0 for lv in levels for x in ("requests", "kept", *FILTER_REASONS)}}
        recs = []
        for j in range(k * shard_size, min((k + 1) * shard_size, len(combos))):
            c = combos[j]
            qp, qc = questions[j]
            lv = f"level{c.level}"
            counts["requests"] += 1
            counts[f"{lv}_requests"] += 1
            counts["prompt_tokens"] += qc.prompt_tokens
            counts["output_tokens"] += qc.output_tokens
            reason = q_reason(j)
            answer, ac = None, None
            if reason is None and s.answer_max_tokens > 0:
                ap, ac = answers[j]
                counts["prompt_tokens"] += ac.prompt_tokens
                counts["output_tokens"] += ac.output_tokens
                answer = (ap.response_prefix + ac.text).strip()
                r = filter_reason(answer, ac.finish_reason, min_output_words=g.min_output_words,
                                  keep_truncated=g.keep_truncated, max_repeated_ngram_frac=g.max_repeated_ngram_frac)
                reason = f"answer_{r}" if r else None
            if reason:
                counts[f"filtered_{reason}"] += 1
                counts[f"{lv}_{reason}"] += 1
                continue
            counts["kept"] += 1
            counts[f"{lv}_kept"] += 1
            question = q_text(j)
            text = f"Question: {question}\n\nAnswer: {answer}" if answer is not None else question
            source_id = "+".join(c.reference_ids)
            recs.append({
                "id": f"{SOURCE}-{source_id}-{j}", "text": text, "source": SOURCE, "source_id": source_id,
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
        path = _shard(d, k)
        write_jsonl(path, recs)
        mark_done(path, counts)
        logger.info("synthllm: wrote %s (%d/%d kept)", path.name, counts["kept"], counts["requests"])

    stats_a = _run_requests(lambda: engines.get(aspec), a_items, write, "answer")
    wall = stats_q["wall_s"] + stats_a["wall_s"]
    return {"wall_s": wall, "output_tokens": stats_q["output_tokens"] + stats_a["output_tokens"]}


def engines_per_request_seed(engines: EngineCache) -> bool:
    return any(e.per_request_seed for e in engines.engines.values())


# ------------------------------------------------------------------ manifest
def _sum_markers(paths: list[Path]) -> dict:
    totals: dict[str, int] = {}
    for p in paths:
        for key, v in read_json(marker_path(p)).items():
            if isinstance(v, int) and not isinstance(v, bool):
                totals[key] = totals.get(key, 0) + v
    return totals


def _write_manifest(cfg, d: Path, G, combos, n_doc_shards, n_out, spec, aspec, fmt, engines: EngineCache,
                    timings: dict, wall: float) -> None:
    g, s = cfg.generation, cfg.generation.synthllm
    sc = _sum_markers([_shard(d / "scores", k) for k in range(n_doc_shards)])
    ex = _sum_markers([_shard(d / "concepts", k) for k in range(n_doc_shards)])
    out = _sum_markers([_shard(d, k) for k in range(n_out)])
    graph_stats = read_json(d / "graph" / "stats.json")
    comb_info = read_json(marker_path(d / "combinations.jsonl")).get("levels", {})
    wanted = sorted({int(x) for x in s.samples_per_level})
    acc = {lvl: LevelAccumulator(seed=cfg.seed + lvl) for lvl in wanted}
    for k in range(n_out):
        for rec in read_jsonl(_shard(d, k), required=("text", "level")):
            acc.setdefault(rec["level"], LevelAccumulator(seed=cfg.seed)).add(rec)
    levels = {}
    for lvl in wanted:
        lc = {"requests": out.get(f"level{lvl}_requests", 0),
              "filtered": {r: out.get(f"level{lvl}_{r}", 0) for r in FILTER_REASONS}}
        levels[str(lvl)] = {**acc[lvl].report(lc, graph_stats["nodes"], seed=cfg.seed),
                            "combinations": comb_info.get(str(lvl), {})}
        used = {c for cb in combos if cb.level == lvl for c in cb.concepts}
        levels[str(lvl)]["sampled_concept_coverage"] = (round(len(used) / graph_stats["nodes"], 4)
                                                        if graph_stats["nodes"] else None)
    gen_s = timings["generate"]
    manifest = {
        "style": SOURCE,
        "generator": spec.provenance or {"name": spec.name, "path": str(spec.path)},
        "answer_model": aspec.provenance or {"name": aspec.name, "path": str(aspec.path)},
        "prompt_version": PROMPT_VERSIONS["question"],
        "prompt_versions": dict(PROMPT_VERSIONS),
        "prompt_format": fmt,
        "sampling": asdict(g.sampling),
        "synthllm": asdict(s),
        "source": cfg.generation_source,
        "shards": [_shard(d, k).name for k in range(n_out)],
        "counts": {"requests": out.get("requests", 0), "kept": out.get("kept", 0),
                   "filtered": {r: out.get(f"filtered_{r}", 0) for r in FILTER_REASONS}},
        "prompt_tokens": out.get("prompt_tokens", 0),
        "output_tokens": out.get("output_tokens", 0),
        "selection": {"candidates": sc.get("candidates", 0),
                      "prefiltered": {r: sc.get(f"prefilter_{r}", 0) for r in PREFILTER_REASONS},
                      "scored": sc.get("scored", 0), "unparsable_scores": sc.get("unparsable", 0),
                      "score_histogram": {str(v): sc.get(f"score_{v}", 0) for v in range(1, 6)},
                      "score_threshold": s.score_threshold if s.score else None,
                      "selected": sc.get("selected", 0)},
        "extraction": {"documents": ex.get("documents", 0), "ok": ex.get(C.OK, 0),
                       "malformed": ex.get(C.MALFORMED, 0), "empty": ex.get(C.EMPTY, 0),
                       "truncated": ex.get("truncated", 0), "concepts": ex.get("concepts", 0),
                       "by_method": {m: ex.get(f"method_{m}", 0) for m in ("json", "partial_json", "lines", "none")},
                       "structured_output_requested": s.structured_output,
                       "structured_fallback": bool(timings["score"]["structured_fallback"]
                                                   or timings["extract"]["structured_fallback"])},
        "graph": graph_stats,
        "combinations": comb_info,
        "levels": levels,
        "wall_s": round(wall, 2),
        "generated_tokens_per_s": round(gen_s["output_tokens"] / gen_s["wall_s"], 2) if gen_s["wall_s"] > 0 else None,
        "engine": next(iter(engines.settings.values()), None),
        "engines": engines.settings,
    }
    path = d / "manifest.json"
    write_json(path, manifest)
    mark_done(path)
    logger.info("synthllm: %d/%d kept (filtered %s), graph %d concepts / %d edges -> %s", manifest["counts"]["kept"],
                manifest["counts"]["requests"], {k: v for k, v in manifest["counts"]["filtered"].items() if v},
                graph_stats["nodes"], graph_stats["edges"], path)
