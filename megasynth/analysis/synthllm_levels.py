"""SynthLLM's level comparison (Qin et al. 2025 §3): runs trained on the level-1, level-2 and level-3 records alone
(sources ``synthllm-l1``/``-l2``/``-l3``, ``generation.synthllm.level_sources``), their final held-out loss and bits
per byte and math metrics, beside each level's diversity from the SynthLLM manifest (distinct-n, pairwise 3-gram
Jaccard, concept coverage: :mod:`megasynth.generate.synthllm.quality`).

Output: ``fits/synthllm_levels.json`` and a report table (:func:`level_section`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from megasynth.analysis.cpt_laws import CPT_TARGETS
from megasynth.config.data import SYNTHLLM_LEVEL_SOURCES, synthllm_level
from megasynth.utils import write_json



def level_runs(rows) -> dict[tuple[str, str], dict]:
    """``{(mixture, preset): {"level", "synthetic_ratio", "tokens", "values": {(eval_set, metric): value}}}`` of the
    series whose only synthetic source is one per-level SynthLLM source, at each series' largest budget (mean over
    seeds)."""
    series: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r.synthetic_sources not in SYNTHLLM_LEVEL_SOURCES or r.tokens <= 0 or not math.isfinite(r.loss):
            continue
        s = series.setdefault((r.mixture, r.preset), {"level": synthllm_level(r.synthetic_sources),
                                                     "synthetic_ratio": r.synthetic_ratio, "tokens": 0, "raw": {}})
        if r.tokens > s["tokens"]:
            s["tokens"], s["raw"] = r.tokens, {}
        if r.tokens == s["tokens"]:
            s["raw"].setdefault((r.eval_set, r.metric), []).append(r.loss)
    for s in series.values():
        s["values"] = {k: sum(v) / len(v) for k, v in s.pop("raw").items()}
    return series


def level_section(rows, layout, heldout: list[str]) -> tuple[list[str], list[Path]]:
    """Markdown of the level comparison and ``fits/synthllm_levels.json`` (empty without per-level runs).

    ``rows``: results rows at the end of their schedule; ``heldout``: the study's held-out set names (columns).
    """
    series = level_runs(rows)
    if not series:
        return [], []
    manifest = layout.synthetic_manifest("synthllm")
    levels: dict = {}
    if manifest.exists():
        try:
            levels = json.loads(manifest.read_text()).get("levels", {})
        except (OSError, json.JSONDecodeError):
            levels = {}
    present = {k for s in series.values() for k in s["values"]}
    cols = [(es, m) for es in heldout for m in ("loss", "bpb") if (es, m) in present]
    cols += [c for c in CPT_TARGETS if c in present]
    out = {"runs": [], "columns": [f"{es}:{m}" for es, m in cols]}
    header = ["level", "mixture (preset)", "synthetic share", "D", *[f"{es} {m}" for es, m in cols], "kept records",
              "distinct-2", "3-gram Jaccard", "concept coverage"]
    fmt = lambda x: "–" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))  # noqa: E731
    trows = []
    for (mix, preset), s in sorted(series.items(), key=lambda kv: (kv[1]["level"], kv[0])):
        div = levels.get(str(s["level"]), {})
        rec = {"level": s["level"], "mixture": mix, "preset": preset, "synthetic_ratio": s["synthetic_ratio"],
               "tokens": s["tokens"], "values": {f"{es}:{m}": v for (es, m), v in s["values"].items()},
               "diversity": {k: div.get(k) for k in ("kept", "distinct_n", "pairwise_jaccard_3gram",
                                                     "concept_coverage", "distinct_concepts")}}
        out["runs"].append(rec)
        trows.append([str(s["level"]), f"{mix} ({preset})", f"{s['synthetic_ratio']:.2f}", f"{s['tokens']:,}",
                      *[fmt(s["values"].get(c)) for c in cols], fmt(div.get("kept")),
                      fmt((div.get("distinct_n") or {}).get("2")), fmt(div.get("pairwise_jaccard_3gram")),
                      fmt(div.get("concept_coverage"))])
    path = layout.fit("synthllm_levels")
    write_json(path, out)
    budgets = {s["tokens"] for s in series.values()}
    md = ["## SynthLLM levels: trained alone", "",
          "Runs whose only synthetic source is one level of SynthLLM's concept combinations (`synthllm-l1`: one "
          "document's concepts, `-l2`: several of one document, `-l3`: concepts joined across documents), at each "
          "run's final budget (mean over seeds), beside that level's diversity (`synthetic/synthllm/manifest.json`: "
          "distinct-2 higher and 3-gram Jaccard lower = more diverse). Lower loss, bpb and error are better."
          + ("" if len(budgets) == 1 else " **The runs differ in budget D; compare with care.**"), "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in trows]
    md += ["", f"`fits/{path.name}`.", ""]
    return md, [path]
