"""Run a study's stages in order, each skipping what is already complete.

Stages (see ``docs/CONTRACTS.md``): corpora → generate → preprocess → mix → train → evaluate → report.
Each stage writes atomically with completion markers, so :func:`run_study` can be killed at any point
and rerun: finished work is skipped and nothing is duplicated or lost.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import yaml

from megasynth.config import StudyConfig
from megasynth.study.layout import StudyLayout
from megasynth.utils import atomic_path, read_json, write_json

logger = logging.getLogger("megasynth.study")

STAGES = ("corpora", "generate", "preprocess", "mix", "train", "evaluate", "report")


def _stage_fn(stage: str) -> Callable[[StudyConfig, StudyLayout], None]:
    # Imported lazily: `megasynth mix --help` must not import vLLM or torch.
    if stage == "corpora":
        from megasynth.corpora import run_corpora as fn
    elif stage == "generate":
        from megasynth.generate import run_generate as fn
    elif stage == "preprocess":
        from megasynth.data import run_preprocess as fn
    elif stage == "mix":
        from megasynth.data import run_mix as fn
    elif stage == "train":
        from megasynth.train import run_train as fn
    elif stage == "evaluate":
        from megasynth.analysis import run_evaluate as fn
    elif stage == "report":
        from megasynth.analysis import run_report as fn
    else:  # pragma: no cover - guarded by the CLI's choices
        raise ValueError(stage)
    return fn


def prepare_study_dir(cfg: StudyConfig) -> StudyLayout:
    """Create the study directory and write the resolved config to ``study.yaml``.

    If a different resolved config is already there, the changed top-level sections are logged: outputs
    already complete are kept (delete them, or use a new ``study_dir``, to recompute).
    """
    layout = StudyLayout.of(cfg.study_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    new = cfg.to_dict()
    if layout.config.exists():
        old = yaml.safe_load(layout.config.read_text()) or {}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            logger.warning("%s differs from the study file in: %s; completed outputs are reused",
                           layout.config, ", ".join(changed))
    with atomic_path(layout.config) as tmp:
        tmp.write_text(cfg.to_yaml())
    return layout


def run_stage(stage: str, cfg: StudyConfig, layout: StudyLayout) -> float:
    """Run one stage (and the corpora stage first for stages that read corpora); return seconds."""
    t0 = time.monotonic()
    if stage in ("generate", "preprocess"):
        _stage_fn("corpora")(cfg, layout)
    if stage == "generate" and not cfg.generation.enabled:
        logger.info("generation disabled (generation.enabled: false); skipping")
    else:
        logger.info("== stage %s ==", stage)
        _stage_fn(stage)(cfg, layout)
    elapsed = time.monotonic() - t0
    _record_timing(layout, stage, elapsed)
    logger.info("== stage %s done in %.1fs ==", stage, elapsed)
    return elapsed


def run_study(cfg: StudyConfig, stages: tuple[str, ...] = STAGES) -> StudyLayout:
    """Run ``stages`` in order into ``cfg.study_dir``; return the study layout."""
    layout = prepare_study_dir(cfg)
    t0 = time.monotonic()
    for stage in stages:
        run_stage(stage, cfg, layout)
    logger.info("study %s complete in %.1fs: %s", cfg.name, time.monotonic() - t0, layout.root)
    return layout


def _record_timing(layout: StudyLayout, stage: str, seconds: float) -> None:
    """Append this invocation's wall seconds for ``stage`` to ``timings.json`` (a history, not a marker)."""
    path = layout.root / "timings.json"
    data = read_json(path) if Path(path).exists() else {}
    data.setdefault(stage, []).append(round(seconds, 2))
    write_json(path, data)
