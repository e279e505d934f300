"""The stages of a study, declared once: name, help, what each requires and writes, when it is done, how it runs.

Every place that lists stages reads :data:`STAGES`: the runner (order and skipping,
:mod:`megasynth.study.runner`), the command line (``megasynth <stage>`` and ``megasynth --help``,
:mod:`megasynth.cli`) and the stage table of ``docs/CONTRACTS.md`` (rendered by :func:`render_stage_table`;
``python -m megasynth.study.stages docs/CONTRACTS.md`` rewrites it, a test checks it).

A stage's ``run`` and ``done`` are ``"module:function"`` names imported only when called, so building the
command line imports no torch or vLLM. ``run(cfg, layout)`` does the work and skips the finished parts
inside (corpora, shards, sources, mixtures, runs); ``done(cfg, layout) -> bool`` says the whole stage is
complete for this study, and raises :class:`~megasynth.utils.MegasynthError` when finished outputs were made
with other settings than the study's (the runner then stops instead of skipping). (After datatrove's
``PipelineStep`` with completions kept by its executor, and NeMo Curator's ``ProcessingStage``
``inputs()``/``outputs()``.)
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from megasynth.config import StudyConfig
from megasynth.layout import StudyLayout

StageFn = Callable[[StudyConfig, StudyLayout], object]


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """One stage of a study (see the module docstring)."""

    name: str
    """The command name (``megasynth <name> STUDY.yaml``)."""
    help: str
    """One line for ``megasynth --help``."""
    run: str
    """``module:function`` of ``(cfg, layout) -> None`` that runs the stage."""
    done: str
    """``module:function`` of ``(cfg, layout) -> bool``: the stage is complete for this study."""
    done_when: str
    """The completion check in words (for the contracts table and the skip log line)."""
    requires: tuple[str, ...] = ()
    """Stages whose outputs it reads."""
    reads: str = ""
    writes: str = ""
    skip_if: Optional[Callable[[StudyConfig], Optional[str]]] = None
    """A reason the stage does not apply to a study (``None``: it applies)."""
    auto: bool = False
    """Cheap: run (when not done) before a stage that requires it is run alone (``megasynth generate``)."""

    def run_fn(self) -> StageFn:
        return _resolve(self.run)

    def is_done(self, cfg: StudyConfig, layout: StudyLayout) -> bool:
        return bool(_resolve(self.done)(cfg, layout))


STAGES: tuple[Stage, ...] = (
    Stage("corpora", "normalise natural corpora and held-out eval sets to JSONL",
          run="megasynth.corpora:run_corpora", done="megasynth.corpora:corpora_done",
          done_when="every corpus file's marker holds its current config (eval sets: and the training corpora "
                    "they were decontaminated against)",
          reads="packages (loaders), `corpora.*[].path`", writes="`corpora/<name>.jsonl` (id, text, source)",
          auto=True),
    Stage("generate", "generate synthetic corpora (HQ, QA, TXBK, SynthLLM) with the LLM generators through vLLM",
          run="megasynth.generate:run_generate", done="megasynth.generate:generate_done",
          done_when="every synthetic source's manifest (for the current document limits and target) and the shards "
                    "it lists are marked; shards of other settings raise",
          requires=("corpora",), reads="`corpora/<generation.source>.jsonl`",
          writes="`synthetic/<source>/{shard-NNNNN.jsonl, partial-NNNNN.jsonl, rejected/, plan.json, "
                 "manifest.json}`, `plan/<corpus>.offsets.npy`, `engines/<host>-<pid>.json`",
          skip_if=lambda cfg: None if cfg.generation.enabled else "generation.enabled: false"),
    Stage("decontaminate", "remove training documents (natural and synthetic) that share a 13-gram with an eval set",
          run="megasynth.data:run_decontaminate", done="megasynth.data:decontaminate_done",
          done_when="every training source's decontaminated copy is marked with its current inputs and settings, and "
                    "`decontamination.json` is marked",
          requires=("corpora", "generate"), reads="`corpora/*.jsonl`, the synthetic shards each manifest lists",
          writes="`decontaminated/<source>.jsonl`, `decontamination.json`",
          skip_if=lambda cfg: None if cfg.decontaminates else
          ("decontamination.enabled: false" if not cfg.decontamination.enabled else "no eval sets"), auto=True),
    Stage("preprocess", "tokenize every corpus into Megatron indexed datasets (.bin/.idx)",
          run="megasynth.data:run_preprocess", done="megasynth.data:preprocess_done",
          done_when="every source's prefix is marked and was tokenized with the study's tokenizer",
          requires=("corpora", "generate", "decontaminate"),
          reads="`decontaminated/<source>.jsonl` (or corpora + the listed synthetic shards), eval sets",
          writes="`tokenizer/`, `tokenized/<name>_text_document.{bin,idx}`, `tokenized/<name>.stats.json`"),
    Stage("mix", "turn mixtures (token ratios of named sources) into Megatron blend weights",
          run="megasynth.data:run_mix", done="megasynth.data:mix_done",
          done_when="every mixture file is marked and was written for the study's shares",
          requires=("preprocess",), reads="`tokenized/<name>.stats.json`", writes="`mixtures/<mix>.json`"),
    Stage("train", "train one Llama-3 megatron-core model per planned run (per mixture, or the sweep's grid; with "
          "base:, the base model first)",
          run="megasynth.study.runs:train_runs", done="megasynth.study.runs:runs_done",
          done_when="every planned run's (and the base run's) `summary.json` is marked and its `run.yaml` matches "
                    "the run; an imported `base.hf_model` is marked",
          requires=("mix",), reads="`mixtures/<mix>.json`, `tokenized/` (a WSD branch: its trunk's checkpoint; with "
                                   "`base:`, `runs/base/checkpoints/` or `base/megatron/`), `base.hf_model`",
          writes="`runs/<run_id>/{run.yaml, tb/, checkpoints/, metrics.jsonl, evals.jsonl, summary.json}`, "
                 "`base/megatron/` (an imported `base.hf_model`)"),
    Stage("collapse", "the recursive loop: train on natural text, generate with the trained model, train on that "
          "(collapse.generations rounds)",
          run="megasynth.study.collapse:run_collapse", done="megasynth.study.collapse:collapse_done",
          done_when="every `collapse-g<k>` run's `summary.json` is marked and its `run.yaml` matches the run",
          requires=("train",), reads="`runs/<collapse.base_mixture>/checkpoints/`, `corpora/<generation.source>.jsonl`",
          writes="`collapse/g<k>/{generator/, synthetic/<style>/}`, `tokenized/collapse-g<k>_text_document.{bin,idx}`, "
                 "`mixtures/collapse-g<k>.json`, `runs/collapse-g<k>/`",
          skip_if=lambda cfg: None if cfg.collapse.generations else "collapse.generations: 0"),
    Stage("evaluate", "evaluate downstream tasks (evaluation.tasks, --tasks) and generative math (evaluation."
          "math_tasks, vLLM) on each run's final checkpoint (cached) and collect every run's held-out, task and math "
          "metrics into results.csv",
          run="megasynth.study.runs:evaluate_runs", done="megasynth.study.runs:results_done",
          done_when="every finished run's final checkpoint has a cached result of each `evaluation.tasks` and "
                    "`evaluation.math_tasks` task and the marker's SHA-256 of the finished runs' files is current",
          requires=("train", "collapse"),
          reads="`runs/<run_id>/{summary.json, evals.jsonl, checkpoints/}`",
          writes="`runs/<run_id>/downstream/iter_NNNNNNN.json`, `runs/<run_id>/hf/iter_NNNNNNN/` (HF export), "
                 "`runs/<run_id>/math/iter_NNNNNNN.json` (+ `.<task>.samples.jsonl`), `results.csv`"),
    Stage("report", "fit L(D) = E + B/D^beta per mixture and eval set; downstream, unigram and model-collapse "
          "sections; write report/report.md and plots",
          run="megasynth.analysis.report:run_report", done="megasynth.analysis.report:report_up_to_date",
          done_when="the marker's SHA-256 of results, mixtures, tokenized stats, run summaries and report settings "
                    "is current",
          requires=("evaluate",),
          reads="`results.csv`, `mixtures/*.json`, `tokenized/`, `runs/<run_id>/token_losses/`",
          writes="`fits/data_law.json` (+ more fits, `fits/unigrams.json`, `fits/collapse.json`, `fits/cpt_laws.json`, "
                 "`fits/synthllm_levels.json`), `report/report.md`, `report/*.png`"),
)
"""The stages in the order ``megasynth run`` runs them."""

STAGE = {s.name: s for s in STAGES}

RUN_HELP = "run every stage in order, skipping what is complete"


def render_stage_table() -> str:
    """The stage table of ``docs/CONTRACTS.md`` (markdown), from :data:`STAGES`."""
    lines = ["| stage | runs | requires | reads | writes | done when (checked by) |",
             "|---|---|---|---|---|---|"]
    for s in STAGES:
        run, done = (t.replace(":", ".") for t in (s.run, s.done))
        lines.append(f"| {s.name} | `{run}` | {', '.join(s.requires) or '—'} | {s.reads} | {s.writes} | "
                     f"{s.done_when} (`{done}`) |")
    return "\n".join(lines) + "\n"


TABLE_BEGIN = "<!-- stage table: generated from megasynth/study/stages.py by `python -m megasynth.study.stages " \
              "docs/CONTRACTS.md`; do not edit by hand -->\n"
TABLE_END = "<!-- end of stage table -->\n"


def with_stage_table(text: str) -> str:
    """``text`` (a contracts document) with the block between the table markers replaced by the current table.

    Raises:
        ValueError: the markers are missing.
    """
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise ValueError("stage table markers not found")
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return head + TABLE_BEGIN + render_stage_table() + TABLE_END + tail


if __name__ == "__main__":  # python -m megasynth.study.stages docs/CONTRACTS.md
    path = Path(sys.argv[1])
    path.write_text(with_stage_table(path.read_text()))
