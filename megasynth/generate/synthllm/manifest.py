"""``synthetic/synthllm/manifest.json``: counts, provenance, graph statistics and per-level diversity."""

from __future__ import annotations

import logging
from dataclasses import asdict

from megasynth.generate.filters import manifest_counts
from megasynth.generate.synthllm import concepts as C
from megasynth.generate.synthllm.engines import EngineCache
from megasynth.generate.synthllm.graph import STATS_FILE as GRAPH_STATS
from megasynth.generate.synthllm.prompts import PROMPT_VERSIONS
from megasynth.generate.synthllm.quality import LevelAccumulator
from megasynth.generate.synthllm.scoring import PREFILTER_REASONS
from megasynth.generate.synthllm.steps import FILTER_REASONS, SOURCE
from megasynth.layout import StudyLayout
from megasynth.utils import mark_done, marker_path, read_json, read_jsonl, sum_markers, write_json

logger = logging.getLogger("megasynth.generate")


def write_manifest(cfg, layout: StudyLayout, G, combos, n_doc_shards, n_out, spec, aspec, fmt, engines: EngineCache,
                    timings: dict, wall: float) -> None:
    g, s = cfg.generation, cfg.generation.synthllm
    sc = sum_markers([layout.synthetic_shard(SOURCE, k, "scores") for k in range(n_doc_shards)])
    ex = sum_markers([layout.synthetic_shard(SOURCE, k, "concepts") for k in range(n_doc_shards)])
    out = sum_markers([layout.synthetic_shard(SOURCE, k) for k in range(n_out)])
    graph_stats = read_json(layout.synthllm_graph_dir / GRAPH_STATS)
    comb_info = read_json(marker_path(layout.synthllm_combinations)).get("levels", {})
    wanted = sorted({int(x) for x in s.samples_per_level})
    acc = {lvl: LevelAccumulator(seed=cfg.seed + lvl) for lvl in wanted}
    for k in range(n_out):
        for rec in read_jsonl(layout.synthetic_shard(SOURCE, k), required=("text", "level")):
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
    lv3 = out.get("level3_requests", 0)
    examples = [e for k in range(n_out)
                for e in read_json(marker_path(layout.synthetic_shard(SOURCE, k))).get("decontamination_examples", [])]
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
        "shards": [layout.synthetic_shard(SOURCE, k).name for k in range(n_out)],
        **manifest_counts(out, FILTER_REASONS),
        "selection": {"candidates": sc.get("candidates", 0),
                      "prefiltered": {r: sc.get(f"prefilter_{r}", 0) for r in PREFILTER_REASONS},
                      "scored": sc.get("scored", 0), "unparsable_scores": sc.get("unparsable", 0),
                      "score_histogram": {str(v): sc.get(f"score_{v}", 0) for v in range(1, 6)},
                      "score_threshold": s.score_threshold if s.score else None,
                      "selected": sc.get("selected", 0)},
        "extraction": {"documents": ex.get("documents", 0), "ok": ex.get(C.OK, 0),
                       "malformed": ex.get(C.MALFORMED, 0), "empty": ex.get(C.EMPTY, 0),
                       "truncated": ex.get("truncated", 0), "concepts": ex.get("concepts", 0),
                       "concepts_too_long": ex.get("too_long", 0),
                       "by_method": {m: ex.get(f"method_{m}", 0) for m in ("json", "partial_json", "lines", "none")},
                       "structured_output_requested": s.structured_output,
                       "structured_fallback": bool(timings["score"]["structured_fallback"]
                                                   or timings["extract"]["structured_fallback"])},
        "graph": graph_stats,
        "concepts_in_2plus_documents": graph_stats.get("shared_concepts", {}),
        "combinations": comb_info,
        "level3": {"requested": int(s.samples_per_level.get("3", 0)),
                   "sampled": comb_info.get("3", {}).get("sampled", 0),
                   "rejected_walks": comb_info.get("3", {}).get("rejected", {}),
                   "kept": out.get("level3_kept", 0),
                   "yield": round(out.get("level3_kept", 0) / int(s.samples_per_level["3"]), 4)
                   if int(s.samples_per_level.get("3", 0)) else None,
                   "kept_of_sampled": round(out.get("level3_kept", 0) / lv3, 4) if lv3 else None},
        "trimmed": {"questions": out.get("trimmed_question", 0), "answers": out.get("trimmed_answer", 0)},
        "decontamination": {"tasks": list(s.decontaminate), "n": 13,
                            "records_checked": out.get("requests", 0) - sum(
                                out.get(f"filtered_{r}", 0) for r in FILTER_REASONS if r != "decontaminated"),
                            "records_removed": out.get("filtered_decontaminated", 0),
                            "removed_by_task": {t: out.get(f"decontaminated_{t}", 0) for t in s.decontaminate},
                            "examples": examples[:10]},
        "levels": levels,
        "wall_s": round(wall, 2),
        "generated_tokens_per_s": round(gen_s["output_tokens"] / gen_s["wall_s"], 2) if gen_s["wall_s"] > 0 else None,
        "engine": next(iter(engines.settings.values()), None),
        "engines": engines.settings,
    }
    path = layout.synthetic_manifest(SOURCE)
    write_json(path, manifest)
    mark_done(path)
    logger.info("synthllm: %d/%d kept (filtered %s), graph %d concepts / %d edges -> %s", manifest["counts"]["kept"],
                manifest["counts"]["requests"], {k: v for k, v in manifest["counts"]["filtered"].items() if v},
                graph_stats["nodes"], graph_stats["edges"], path)
