"""The generate stage: plan → prompts → one queue per generator → filters → near-dedup → shards, resumable per record.

Sources: every style × generator (:meth:`~megasynth.config.GenerationConfig.style_sources`: ``hq`` with one
generator, ``hq@<generator>`` with several), plus ``synthllm`` (:mod:`megasynth.generate.synthllm`).

1. **Plan** (:mod:`megasynth.generate.plan`): the seed corpus's documents in a seeded order, cut into
   excerpts of ``max_input_tokens`` tokens of the first generator's tokenizer (the same excerpts for every
   source), in shards of ``shard_size`` documents; this process (rank ``r`` of ``w``) takes shards
   ``k % w == r``.
2. **Queue**: per generator one engine (offline ``vllm.LLM`` or OpenAI-compatible servers) fed one stream
   of requests — shard by shard, and within a shard excerpt by excerpt, every style's request — pulled as
   requests finish, so the batch never drains between styles or shards.
3. **Records**: each finished request is filtered (:mod:`megasynth.generate.filters`) and appended at once to
   ``synthetic/<source>/partial-NNNNN.jsonl`` (:mod:`megasynth.generate.shards`). A restarted process skips
   the requests already there.
4. **Shards**: when a shard's requests are all recorded, its kept records are checked for near duplicates
   (MinHash LSH, :class:`~megasynth.data.near_dedup.NearDedupIndex`, against every finished shard of the
   source this process knows; rebuilt from their kept records after a restart), in plan order, and written
   to ``shard-NNNNN.jsonl`` (kept) and ``rejected/shard-NNNNN.jsonl`` (filtered, with the reason) with the
   counts in ``shard-NNNNN.jsonl.done``.
5. **Manifest**: ``manifest.json`` (+ ``.done``) is written by whichever process finds the source's needed
   shards complete: all planned shards, or with ``generation.target_tokens`` the first shards (plan order)
   whose kept output tokens reach the target; only those shards are listed (and read downstream).

Request seeds: ``sampling.seed + position`` (sample mode) or ``+ position·2^16 + chunk`` (corpus mode), used
where the engine honours per-request seeds (GPU; on CPU the engine seed drives sampling and records carry
``request_seed: null``). SIGTERM and SIGINT stop the queue, shut the engine down cleanly (its ``/dev/shm``
segments removed) and exit; what finished is on disk.
(Chain after datatrove's ``pipeline/inference/run_inference.py`` and cosmopedia's generation script.)
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional

from megasynth.config import GeneratorConfig, StudyConfig
from megasynth.generate.backends import Completion, Request
from megasynth.generate.filters import REASONS, filter_reason, manifest_counts
from megasynth.generate.generator_model import GeneratorSpec, resolve_generator
from megasynth.generate.plan import GenerationPlan, PlannedExcerpt, plan_for, rank_shards, resolve_rank
from megasynth.generate.prompts import PromptSpec, build_prompt, resolve_format, style_prompt_spec
from megasynth.generate.shards import PartialShard
from megasynth.layout import StudyLayout
from megasynth.utils import (MegasynthError, Progress, StageInterrupted, clear_done, is_done, mark_done, marker_path,
                             read_json, read_jsonl, write_json, write_jsonl)

logger = logging.getLogger("megasynth.generate")

FILTER_REASONS = (*REASONS, "near_duplicate")
"""Why a style source's output is not kept: the filters' reasons, then near duplicates."""


# ------------------------------------------------------------------------------------------------ completion
def source_plan(cfg: StudyConfig, style: str, gen: GeneratorConfig) -> dict:
    """What a style source's shards depend on, from the config (``plan.json``; see :func:`check_source_plan`)."""
    g = cfg.generation
    return {
        "corpus": cfg.generation_source, "seed": cfg.seed,
        "mode": "sample" if g.num_documents is not None else "corpus",
        "shard_size": g.shard_size, "max_input_tokens": g.max_input_tokens,
        "excerpt_tokenizer": g.generator_list()[0].name,
        "generator": {"name": gen.name, "model": gen.model},
        "prompt": style_prompt_spec(g, style).provenance(), "prompt_format": gen.prompt_format,
        "sampling": asdict(g.sampling),
        "filters": {"min_output_words": g.min_output_words, "keep_truncated": g.keep_truncated,
                    "max_repeated_ngram_frac": g.max_repeated_ngram_frac},
        "dedup": asdict(g.dedup),
    }


_PLAN_FIELDS = {"corpus": "generation.source", "seed": "seed", "mode": "generation.num_documents",
                "shard_size": "generation.shard_size", "max_input_tokens": "generation.max_input_tokens",
                "excerpt_tokenizer": "generation.generators[0].name", "generator": "generation.generators",
                "prompt": "generation.prompts", "prompt_format": "generation.prompt_format",
                "sampling": "generation.sampling", "filters": "generation", "dedup": "generation.dedup",
                "corpus_documents": "corpora"}


def check_source_plan(layout: StudyLayout, source: str, plan: dict) -> None:
    """Raise if ``synthetic/<source>/plan.json`` holds other settings than ``plan`` (names the field).

    Raises:
        MegasynthError: ``synthetic/hq/plan.json: shards were generated with generation.shard_size=8, now 16; ...``.
    """
    path = layout.synthetic_plan(source)
    if not path.exists():
        return
    old = read_json(path)
    for key, new in plan.items():
        if key in old and old[key] != new:
            where = _PLAN_FIELDS.get(key, key)
            if isinstance(new, dict) and isinstance(old[key], dict):
                diff = [k for k in dict.fromkeys([*new, *old[key]]) if new.get(k) != old[key].get(k)]
                if diff and key in ("sampling", "dedup", "filters"):
                    where = f"{'generation' if key == 'filters' else _PLAN_FIELDS[key]}.{diff[0]}"
                    old_v, new_v = old[key].get(diff[0]), new.get(diff[0])
                else:
                    old_v, new_v = old[key], new
            else:
                old_v, new_v = old[key], new
            raise MegasynthError(f"{path}: shards of {source!r} were generated with {where}={old_v!r}, now {new_v!r}; "
                                 f"use a new study_dir, or delete {path.parent} to regenerate it")


def _limits(cfg: StudyConfig, source: str, style: str) -> dict:
    g = cfg.generation
    return {"num_documents": g.num_documents, "max_documents": g.max_documents,
            "target_tokens": g.target_for(source, style)}


def source_done(layout: StudyLayout, source: str, expect: Optional[dict] = None) -> bool:
    """True if the source's manifest is marked done, every shard it lists still has its marker, and (with
    ``expect``, a style source's ``num_documents``/``max_documents``/``target_tokens``) it was written for them."""
    path = layout.synthetic_manifest(source)
    if not (is_done(path) and path.exists()):
        return False
    m = read_json(path)
    if expect is not None and m.get("limits") != expect:
        return False
    return all(is_done(layout.synthetic_dir(source) / name) for name in m.get("shards", []))


def generate_done(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether every synthetic source of ``cfg`` (style × generator, and ``synthllm`` if enabled) is complete.

    Raises:
        MegasynthError: a source's shards were generated with other settings (:func:`check_source_plan`).
    """
    gens = {g.name: g for g in cfg.generation.generator_list()}
    for source, style, gname in cfg.generation.style_sources():
        check_source_plan(layout, source, source_plan(cfg, style, gens[gname]))
        if not source_done(layout, source, _limits(cfg, source, style)):
            return False
    return not cfg.generation.synthllm.enabled or source_done(layout, "synthllm")


# ------------------------------------------------------------------------------------------------ signals
@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM (what SLURM and ``kill`` send) and SIGINT into :class:`StageInterrupted` in this thread, once;
    a repeated signal during the clean shutdown that follows is logged and ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:
            logger.warning("%s again: still shutting down the engine", signal.Signals(signum).name)
            return
        fired.append(signum)
        logger.warning("%s: stopping generation; finished records are kept", signal.Signals(signum).name)
        raise StageInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------------------ the stage
@dataclass
class SourceJob:
    """One style source of a generator in this run."""

    name: str
    style: str
    gen: GeneratorConfig
    spec: GeneratorSpec
    tokenizer: object
    fmt: str
    pspec: PromptSpec
    target: Optional[int]
    shards: list[int] = field(default_factory=list)
    """This rank's shards still to generate."""


def run_generate(cfg: StudyConfig, layout: StudyLayout, *, engine_factory: Optional[Callable] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
    """Generate the synthetic sources of ``cfg`` (see the module docstring); complete ones are skipped.

    Args:
        cfg: the study; reads ``cfg.generation``, ``cfg.seed`` and the corpus ``cfg.generation_source``.
        layout: the study's paths.
        engine_factory: builds the engine of a resolved generator (default
            :func:`~megasynth.generate.engines.start_engine`); called at most once per generator with work
            left, never when everything is done. Tests pass a factory that returns a shared engine.
        rank, world_size: this process's share of the shards (``None``: rank 0 of 1; the ``megasynth
            generate`` command resolves them from ``--rank/--world-size``, a SLURM array or torchrun).

    Raises:
        MegasynthError: missing corpus or model directory, an unreachable server endpoint, vllm missing, a
            prompt too long, shards of other settings, a rank outside the world size.
        StageInterrupted: SIGTERM/SIGINT (after a clean engine shutdown).
    """
    from transformers import AutoTokenizer

    from megasynth.generate.shm import cleanup_dead_engines
    from megasynth.generate.synthllm.engines import EngineCache

    rank, world = resolve_rank(rank, world_size, env={})
    g = cfg.generation
    gens = g.generator_list()
    by_name = {x.name: x for x in gens}
    todo = []
    for source, style, gname in g.style_sources():
        check_source_plan(layout, source, source_plan(cfg, style, by_name[gname]))
        if source_done(layout, source, _limits(cfg, source, style)):
            logger.info("generate %s: done; skipping", source)
        else:
            todo.append((source, style, gname))
    synthllm = g.synthllm.enabled and not source_done(layout, "synthllm")
    if not todo and not synthllm:
        return

    specs: dict[str, GeneratorSpec] = {}
    for i, x in enumerate(gens):
        if i == 0 or any(t[2] == x.name for t in todo):
            where = "generation.model" if not g.generators else f"generation.generators[{i}].model"
            specs[x.name] = resolve_generator(x.model, x.name, where=where)
    tokenizers = {name: AutoTokenizer.from_pretrained(str(s.path)) for name, s in specs.items()}
    engines = EngineCache(g, engine_factory, record_dir=layout.engines_dir)
    cleanup_dead_engines(layout.engines_dir)  # what engines of this study killed on this host left in /dev/shm
    with stop_on_signals():  # also over the shutdown: a second SIGTERM (SLURM and its batch script) is ignored
        try:
            # servers first: an unreachable endpoint stops the run before anything is written
            for x in gens:
                if x.backend == "server" and any(t[2] == x.name for t in todo):
                    engines.get(specs[x.name])
            if todo:
                _generate_styles(cfg, layout, todo, gens, specs, tokenizers, engines, rank, world)
            if synthllm and rank == 0:
                from megasynth.generate.synthllm.stage import run_synthllm

                run_synthllm(cfg, layout, engine_factory=engines.get)
            elif synthllm:
                logger.info("generate synthllm: left to rank 0")
        finally:
            engines.close()  # ours (no engine_factory): free its processes, memory and /dev/shm before the next stage


def _generate_styles(cfg, layout, todo, gens, specs, tokenizers, engines, rank: int, world: int) -> None:
    g = cfg.generation
    plan = plan_for(cfg, layout)
    try:
        first = gens[0].name
        shards = rank_shards(plan.num_shards, rank, world)
        logger.info("generate: %s of %s: %d document(s) of %d in %d shard(s) of %d; rank %d/%d takes %d shard(s); "
                    "sources %s", plan.mode, cfg.generation_source, plan.limit, plan.documents, plan.num_shards,
                    g.shard_size, rank, world, len(shards), ", ".join(t[0] for t in todo))
        for source, style, gname in todo:
            p = source_plan(cfg, style, next(x for x in gens if x.name == gname))
            p["corpus_documents"] = plan.documents
            check_source_plan(layout, source, p)
            if not layout.synthetic_plan(source).exists():
                write_json(layout.synthetic_plan(source), p)
        for gen in gens:
            jobs = []
            for source, style, gname in todo:
                if gname != gen.name:
                    continue
                tok = tokenizers[gname]
                job = SourceJob(source, style, gen, specs[gname], tok, resolve_format(gen.prompt_format, tok),
                                style_prompt_spec(g, style), g.target_for(source, style))
                clear_done(layout.synthetic_manifest(source))
                job.shards = [k for k in shards if not is_done(layout.synthetic_shard(source, k))]
                jobs.append(job)
            if not jobs:
                continue
            queue = _Queue(cfg, layout, plan, jobs, tokenizers[first], rank, world)
            stats = queue.run(lambda: engines.get(specs[gen.name])) if any(j.shards for j in jobs) else None
            for job in jobs:
                _write_manifest(cfg, layout, plan, job, stats, world)
    finally:
        plan.close()


class _TargetTally:
    """Kept output tokens of a source's complete shards below the current one (for ``target_tokens``)."""

    def __init__(self, layout: StudyLayout, source: str):
        self.layout, self.source = layout, source
        self.next = 0
        self.unknown: set[int] = set()
        self.total = 0

    def before(self, k: int) -> int:
        """Kept output tokens of the complete shards ``< k`` (``k`` never decreases between calls)."""
        self.unknown.update(range(self.next, k))
        self.next = max(self.next, k)
        for j in sorted(self.unknown):
            path = self.layout.synthetic_shard(self.source, j)
            if is_done(path):
                self.total += int(read_json(marker_path(path)).get("kept_output_tokens", 0))
                self.unknown.discard(j)
        return self.total


class _ShardState:
    """A (source, shard) being generated: its planned excerpts and its partial file."""

    def __init__(self, job: SourceJob, k: int, excerpts: list[PlannedExcerpt], partial: PartialShard):
        self.job, self.k, self.partial = job, k, partial
        self.keys = {ex.key for ex in excerpts}
        self.remaining = len(self.keys - partial.entries.keys())
        """Planned requests of the shard without a record yet."""


class _Queue:
    """One generator's stream of requests over its sources and this rank's shards (see the module docstring)."""

    def __init__(self, cfg, layout: StudyLayout, plan: GenerationPlan, jobs: list[SourceJob], excerpt_tokenizer,
                 rank: int, world: int):
        self.cfg, self.layout, self.plan, self.jobs = cfg, layout, plan, jobs
        self.g = cfg.generation
        self.excerpt_tokenizer, self.rank, self.world = excerpt_tokenizer, rank, world
        self.tally = {j.name: _TargetTally(layout, j.name) for j in jobs}
        self.open: dict[tuple[str, int], _ShardState] = {}
        self.inflight: dict[int, tuple[_ShardState, PlannedExcerpt, object]] = {}
        self.dedup: dict[str, object] = {}
        self.indexed: dict[str, set[int]] = {}
        self.ids: dict[str, dict[str, str]] = {}  # source -> index key (shard/n) -> record id
        self.per_request_seed = False
        self.out_tokens = 0
        self.progress: Optional[Progress] = None

    # -------------------------------------------------------------------------------- producer
    def _reached(self, job: SourceJob, k: int) -> bool:
        """Whether the complete shards below ``k`` (any rank's) already hold ``job.target`` kept tokens. Only
        complete shards count: then the shards below the first one skipped all complete, and reach the target."""
        return job.target is not None and self.tally[job.name].before(k) >= job.target

    def _requests(self) -> Iterator[Request]:
        g = self.g
        base = asdict(g.sampling)
        order = sorted({k for j in self.jobs for k in j.shards})
        todo = {j.name: set(j.shards) for j in self.jobs}
        stopped: set[str] = set()
        for k in order:
            active = []
            for job in self.jobs:
                if k not in todo[job.name] or job.name in stopped:
                    continue
                if self._reached(job, k):
                    logger.info("generate %s: target of %d kept tokens reached before shard %d; not scheduling "
                                "further shards", job.name, job.target, k)
                    stopped.add(job.name)
                    continue
                active.append(job)
            if not active:
                continue
            excerpts = self.plan.excerpts(k, self.excerpt_tokenizer)
            states = []
            for job in active:
                st = _ShardState(job, k, excerpts, PartialShard(self.layout.synthetic_partial(job.name, k)).open())
                self.open[(job.name, k)] = st
                if st.partial.entries:
                    logger.info("generate %s: shard %d resumes with %d of %d records done", job.name, k,
                                len(st.partial.entries), len(st.keys))
                if st.remaining == 0:
                    self._finalize(st)
                else:
                    states.append(st)
            for ex in excerpts:
                for st in states:
                    if ex.key in st.partial.entries:
                        continue
                    job = st.job
                    p = build_prompt(job.style, ex.text, job.fmt, job.tokenizer, job.pspec)
                    ids = job.tokenizer(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
                    s = {**base, "seed": self.plan.request_seed(g.sampling.seed, ex)}
                    if p.stop:
                        s["stop"] = list(p.stop)
                    self._next_meta = (st, ex, p)
                    yield Request(ids, s)

    # -------------------------------------------------------------------------------- consumer
    def run(self, engine_fn: Callable[[], object]) -> dict:
        """Start the engine, stream every request through it; return the queue's counts and timings."""
        engine = engine_fn()
        self.per_request_seed = bool(getattr(engine, "per_request_seed", False))
        total = sum(len(j.shards) for j in self.jobs)
        self.progress = Progress(f"generate {'+'.join(j.name for j in self.jobs)}", total=None, unit="requests")
        self.requests = 0
        t0 = time.monotonic()
        it = self._requests()

        def feed() -> Iterator[Request]:
            for req in it:
                self.inflight[self.requests] = self._next_meta
                self.requests += 1
                yield req

        logger.info("generate: one queue for %s over %d (source, shard) pair(s)", ", ".join(j.name for j in self.jobs),
                    total)
        try:
            engine.generate_stream(feed(), self._on_done)
        finally:
            it.close()
            for st in list(self.open.values()):
                st.partial.close()
            self.open.clear()
        wall = time.monotonic() - t0
        self.progress.close()
        logger.info("generate: %d requests, %d output tokens in %.1fs (%.1f tokens/s)", self.requests, self.out_tokens,
                    wall, self.out_tokens / max(wall, 1e-9))
        return {"requests": self.requests, "output_tokens": self.out_tokens, "wall_s": wall,
                "engine": engine.settings | {"start_s": round(engine.start_s, 2)},
                "sources": [j.name for j in self.jobs]}

    def _on_done(self, i: int, c: Completion) -> None:
        st, ex, prompt = self.inflight.pop(i)
        g, job = self.g, st.job
        self.out_tokens += c.output_tokens
        self.progress.update(1)
        text = (prompt.response_prefix + c.text).strip() if prompt.response_prefix else c.text.strip()
        reason = filter_reason(text, c.finish_reason, min_output_words=g.min_output_words,
                               keep_truncated=g.keep_truncated, max_repeated_ngram_frac=g.max_repeated_ngram_frac)
        record = {
            "id": f"{job.name}-{ex.doc_id}-{ex.chunk}", "text": text, "source": job.name, "source_id": ex.doc_id,
            "style": job.style, "generator": job.gen.name, "prompt_version": job.pspec.version,
            "prompt": job.pspec.provenance(), "prompt_format": job.fmt,
            "sampling": {**asdict(g.sampling), "request_seed": self.plan.request_seed(g.sampling.seed, ex)
                         if self.per_request_seed else None},
            "prompt_tokens": c.prompt_tokens, "output_tokens": c.output_tokens, "finish_reason": c.finish_reason,
        }
        st.partial.append({"key": ex.key, "position": ex.position, "chunk": ex.chunk, "reason": reason,
                           "record": record})
        st.remaining -= 1
        if st.remaining == 0:
            self._finalize(st)

    # -------------------------------------------------------------------------------- shards
    def _index(self, source: str):
        """The source's near-dedup index, grown with every complete shard not indexed yet (any rank's)."""
        if not self.g.dedup.enabled:
            return None
        from megasynth.data.near_dedup import NearDedupIndex

        if source not in self.dedup:
            self.dedup[source] = NearDedupIndex(self.g.dedup)
            self.indexed[source], self.ids[source] = set(), {}
        idx, seen, ids = self.dedup[source], self.indexed[source], self.ids[source]
        for k in range(self.plan.num_shards):
            if k in seen:
                continue
            path = self.layout.synthetic_shard(source, k)
            if is_done(path) and path.exists():
                for n, rec in enumerate(read_jsonl(path, required=("id", "text"))):
                    idx.add(f"{k}/{n}", rec["text"])
                    ids[f"{k}/{n}"] = str(rec["id"])
                seen.add(k)
        return idx

    def _finalize(self, st: _ShardState) -> None:
        job, k = st.job, st.k
        entries = sorted((e for key, e in st.partial.entries.items() if key in st.keys),
                         key=lambda e: (e["position"], e["chunk"]))
        index = self._index(job.name)
        counts = {"requests": len(entries), "kept": 0, **{f"filtered_{r}": 0 for r in FILTER_REASONS},
                  "prompt_tokens": 0, "output_tokens": 0, "kept_output_tokens": 0}
        kept, rejected = [], []
        for e in entries:
            rec, reason = e["record"], e.get("reason")
            counts["prompt_tokens"] += rec["prompt_tokens"]
            counts["output_tokens"] += rec["output_tokens"]
            dup = None
            if reason is None and index is not None:
                key = f"{k}/{len(kept)}"  # the record's line in the shard file, as a rebuilt index names it
                dup = index.offer(key, rec["text"])
                if dup is not None:
                    reason, dup = "near_duplicate", self.ids[job.name].get(dup, dup)
                else:
                    self.ids[job.name][key] = rec["id"]
            if reason is None:
                counts["kept"] += 1
                counts["kept_output_tokens"] += rec["output_tokens"]
                kept.append(rec)
            else:
                counts[f"filtered_{reason}"] += 1
                rejected.append({**rec, "reason": reason, "duplicate_of": dup})
        if index is not None:
            self.indexed[job.name].add(k)
        path = self.layout.synthetic_shard(job.name, k)
        write_jsonl(path, kept)
        rej = self.layout.synthetic_rejected(job.name, k)
        if rejected:
            write_jsonl(rej, rejected)
        else:
            rej.unlink(missing_ok=True)
        mark_done(path, {**counts, "rank": f"{self.rank}/{self.world}"})
        st.partial.close(remove=True)
        self.open.pop((job.name, k), None)
        logger.info("generate %s: wrote %s (%d/%d kept%s)", job.name, path.name, counts["kept"], counts["requests"],
                    "".join(f", {counts[f'filtered_{r}']} {r}" for r in FILTER_REASONS if counts[f"filtered_{r}"]))


def _write_manifest(cfg, layout: StudyLayout, plan: GenerationPlan, job: SourceJob, stats: Optional[dict],
                    world: int) -> bool:
    """Write the source's manifest if its needed shards are complete (see the module docstring); return whether."""
    g = cfg.generation
    needed, total = [], 0
    for k in range(plan.num_shards):  # the shortest complete prefix that reaches the target (or every shard)
        path = layout.synthetic_shard(job.name, k)
        if not is_done(path):
            missing = sum(1 for j in range(k, plan.num_shards) if not is_done(layout.synthetic_shard(job.name, j)))
            logger.info("generate %s: shard %d (and %d more) not complete yet%s; the manifest waits for it", job.name,
                        k, missing - 1, " (other ranks' or an interrupted run's)" if world > 1 else "")
            return False
        needed.append(k)
        total += int(read_json(marker_path(path)).get("kept_output_tokens", 0))
        if job.target is not None and total >= job.target:
            break
    shard_paths = [layout.synthetic_shard(job.name, k) for k in needed]
    from megasynth.utils import sum_markers

    totals = sum_markers(shard_paths)
    counts = manifest_counts(totals, FILTER_REASONS)
    reached = job.target is None or totals.get("kept_output_tokens", 0) >= job.target
    if not reached:
        logger.warning("generate %s: generation.target_tokens=%d not reached: every planned shard gives %d kept "
                       "tokens (raise generation.max_documents/num_documents or use a larger corpus)", job.name,
                       job.target, totals.get("kept_output_tokens", 0))
    unused = [k for k in range(len(needed), plan.num_shards) if is_done(layout.synthetic_shard(job.name, k))]
    if unused and job.target is not None:
        logger.info("generate %s: %d shard(s) past the target are complete but not used", job.name, len(unused))
    wall = stats["wall_s"] if stats else 0.0
    manifest = {
        "name": job.name, "style": job.style,
        "generator": (job.spec.provenance or {"name": job.spec.name, "path": str(job.spec.path)}) | {
            "name": job.gen.name, "backend": job.gen.backend},
        "prompt_version": job.pspec.version, "prompt": job.pspec.provenance(), "prompt_format": job.fmt,
        "sampling": asdict(g.sampling),
        "source": cfg.generation_source,
        "shards": [p.name for p in shard_paths],
        **counts,
        "kept_output_tokens": totals.get("kept_output_tokens", 0),
        "target_tokens": job.target, "target_reached": reached,
        "limits": _limits(cfg, job.name, job.style),
        "plan": {"mode": plan.mode, "corpus_documents": plan.documents, "documents": plan.limit,
                 "shard_size": plan.shard_size, "planned_shards": plan.num_shards, "used_shards": len(needed),
                 "max_input_tokens": plan.max_input_tokens, "seed": plan.seed, "world_size": world},
        "dedup": {"enabled": g.dedup.enabled, "near_duplicates": totals.get("filtered_near_duplicate", 0),
                  **({k: v for k, v in asdict(g.dedup).items() if k != "enabled"} if g.dedup.enabled else {})},
        "wall_s": round(wall, 2),
        "generated_tokens_per_s": round(stats["output_tokens"] / wall, 2) if stats and wall > 0 else None,
        "queue": {k: stats[k] for k in ("sources", "requests", "output_tokens")} if stats else None,
        "engine": stats["engine"] if stats else None,
    }
    path = layout.synthetic_manifest(job.name)
    write_json(path, manifest)
    mark_done(path)
    logger.info("generate %s: %d/%d kept (filtered %s), %d kept tokens -> %s", job.name, manifest["counts"]["kept"],
                manifest["counts"]["requests"], manifest["counts"]["filtered"], manifest["kept_output_tokens"], path)
    return True
