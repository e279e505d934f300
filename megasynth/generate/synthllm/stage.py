"""The SynthLLM stage: references → concepts → graph → combinations → questions + answers, in shards.

Everything lands in ``synthetic/synthllm/`` (``layout.synthetic_dir("synthllm")``)::

    scores/shard-NNNNN.jsonl     every candidate: prefilter reason, rating (1-5) and raw output, selected
    concepts/shard-NNNNN.jsonl   every selected reference: status (ok/malformed/empty), concepts, raw output
    graph/                       documents.jsonl, nodes.jsonl, edges.tsv, merges.json, stats.json (+ .done)
    combinations.jsonl           sampled concept combinations (level, concepts, reference_ids) (+ .done)
    decontamination/<task>.jsonl the math benchmarks' problems + solutions the records are checked against
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

Parts: the five steps in :mod:`.steps`, engines and shard-by-shard request runs in :mod:`.engines`, the
manifest in :mod:`.manifest`; every path comes from :class:`~megasynth.layout.StudyLayout`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Optional

from megasynth.generate.generator_model import resolve_generator
from megasynth.generate.prompts import resolve_format
from megasynth.generate.reader import sample_excerpts
from megasynth.generate.synthllm import steps
from megasynth.generate.synthllm.engines import EngineCache, EngineFactory
from megasynth.generate.synthllm.manifest import write_manifest
from megasynth.generate.synthllm.steps import SOURCE
from megasynth.layout import StudyLayout
from megasynth.utils import clear_done

logger = logging.getLogger("megasynth.generate")


def run_synthllm(cfg, layout: StudyLayout, *, engine_factory: Optional[EngineFactory] = None) -> None:
    """Generate the ``synthllm`` source into ``synthetic/synthllm/`` (see module docstring); finished shards,
    graph and combinations are reused (the generate stage skips a complete source before calling this).

    Args:
        cfg: the study (:class:`~megasynth.config.StudyConfig`); reads ``cfg.generation`` (generator,
            prompt format, sampling, filters) and ``cfg.generation.synthllm``.
        layout: the study's paths.
        engine_factory: builds an engine for a resolved model (default
            :func:`~megasynth.generate.backends.offline.engine_from_config`); called lazily once per distinct model
            (generator, answer model), not at all when everything is done. Engines it returns are not
            shut down here.

    Raises:
        MegasynthError: missing corpus, bad model directory, vllm missing, a prompt longer than
            ``generation.max_model_len``.
    """
    g = cfg.generation
    s = g.synthllm
    clear_done(layout.synthetic_manifest(SOURCE))
    t_start = time.monotonic()
    shard_size = s.shard_size or g.shard_size
    from transformers import AutoTokenizer

    gen = g.generator_list()[0]  # SynthLLM runs on the first generator
    spec = resolve_generator(gen.model, gen.name, where="generation.generators[0].model" if g.generators
                             else "generation.model")
    tok = AutoTokenizer.from_pretrained(str(spec.path))
    fmt = resolve_format(gen.prompt_format, tok)
    if s.answer_model:
        aspec = resolve_generator(s.answer_model, s.answer_model_name)
        atok = AutoTokenizer.from_pretrained(str(aspec.path))
        afmt = resolve_format(g.prompt_format, atok)
    else:
        aspec, atok, afmt = spec, tok, fmt
    engines = EngineCache(g, engine_factory, record_dir=layout.engines_dir)
    try:
        excerpts = sample_excerpts(layout.corpus(cfg.generation_source), tok, num_documents=s.num_documents,
                                   max_input_tokens=g.max_input_tokens, seed=cfg.seed)
        refs = {steps.ref_id(ex): ex for ex in excerpts}
        n_doc_shards = math.ceil(len(excerpts) / shard_size)
        logger.info("synthllm: %d candidate references of %s -> %d shard(s); generator %s, answers %s, %s prompts",
                    len(excerpts), cfg.generation_source, n_doc_shards, spec.name, aspec.name, fmt)
        timings: dict[str, dict] = {}
        new_scores, timings["score"] = steps.scores(cfg, layout, excerpts, shard_size, tok, fmt,
                                                    lambda: engines.get(spec))
        for k in new_scores:
            clear_done(layout.synthetic_shard(SOURCE, k, "concepts"))
        new_concepts, timings["extract"] = steps.concepts(cfg, layout, excerpts, n_doc_shards, tok, fmt,
                                                          lambda: engines.get(spec))
        G, rebuilt = steps.graph(layout, n_doc_shards, force=bool(new_concepts),
                                 merge_threshold=s.concept_merge_threshold)
        combos, resampled = steps.combinations(cfg, layout, G, force=rebuilt)
        n_out = math.ceil(len(combos) / shard_size)
        if resampled:
            for k in range(n_out):
                clear_done(layout.synthetic_shard(SOURCE, k))
        timings["generate"] = steps.outputs(cfg, layout, combos, refs, shard_size, (spec, tok, fmt),
                                            (aspec, atok, afmt), engines)
        write_manifest(cfg, layout, G, combos, n_doc_shards, n_out, spec, aspec, fmt, engines, timings,
                       time.monotonic() - t_start)
    finally:
        engines.close()
