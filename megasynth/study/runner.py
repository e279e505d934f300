"""Run a study's stages in order, skipping those that are complete (the stages: :mod:`megasynth.study.stages`).

Each stage writes atomically with completion markers, so :func:`run_study` can be killed at any point
and rerun: finished work is skipped and nothing is duplicated or lost. A stage whose finished outputs
were made with other settings than the study's stops the run with a one-line error instead.

The study directory keeps ``study.yaml``, a verbatim copy of the study file the user gave, and one
``invocations/<UTC time>-<command>.yaml`` per invocation (argv, overrides and the resolved config), so
reusing ``study.yaml`` as the study file never carries an earlier invocation's overrides forward.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from megasynth.config import RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.study.stages import STAGE, STAGES, Stage
from megasynth.utils import atomic_path, read_json, write_json

logger = logging.getLogger("megasynth.study")


def prepare_study_dir(cfg: StudyConfig, study_file: Optional[str | Path] = None) -> StudyLayout:
    """Create ``cfg.study_dir`` and copy ``study_file`` (as given, byte for byte) to its ``study.yaml``.

    If another study file was copied there before, the difference is logged: outputs already complete
    are kept where their settings still match (stages refuse those that do not).
    """
    layout = StudyLayout.of(cfg.study_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    if study_file is None:
        return layout
    src = Path(study_file)
    if layout.config.exists():
        if layout.config.samefile(src):
            return layout
        if layout.config.read_bytes() != src.read_bytes():
            logger.warning("%s differs from the earlier study file copied to %s; replacing the copy (the earlier "
                           "invocations' configs stay in %s)", src, layout.config, layout.invocations_dir)
    with atomic_path(layout.config) as tmp:
        shutil.copyfile(src, tmp)
    return layout


def record_invocation(layout: StudyLayout, cfg: StudyConfig | RunConfig, command: str, argv: Sequence[str],
                      overrides: Sequence[str], study_file: Optional[str | Path] = None) -> Path:
    """Write ``invocations/<UTC time>-<command>.yaml``: ``command``, ``argv``, ``study_file``, ``overrides``
    and the resolved ``config`` (a study's, or a run's for a run file); return its path."""
    now = datetime.datetime.now(datetime.timezone.utc)
    path = layout.invocation(now.strftime("%Y%m%dT%H%M%S.%fZ"), command)
    record = {"command": command, "argv": list(argv), "study_file": None if study_file is None else str(study_file),
              "overrides": list(overrides), "utc": now.isoformat(), "config": cfg.to_dict()}
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


def run_stage(name: str, cfg: StudyConfig, layout: StudyLayout, alone: bool = True, **options) -> float:
    """Run stage ``name`` unless it is complete; return seconds (also appended to ``timings.json``).

    ``alone``: first run the cheap stages it requires (``auto``, e.g. ``corpora`` before ``generate``).
    ``options``: keyword arguments of the stage's run function (``generate``: ``rank``, ``world_size``; ``megasynth evaluate --run ID``: ``run_ids``).

    Raises:
        MegasynthError: from the stage, or its completion check (finished outputs of other settings).
    """
    stage = STAGE[name]
    t0 = time.monotonic()
    if alone:
        for req in stage.requires:
            if STAGE[req].auto:
                _run_unless_done(STAGE[req], cfg, layout)
    _run_unless_done(stage, cfg, layout, **options)
    elapsed = time.monotonic() - t0
    _record_timing(layout, name, elapsed)
    logger.info("== stage %s done in %.1fs ==", name, elapsed)
    return elapsed


def _run_unless_done(stage: Stage, cfg: StudyConfig, layout: StudyLayout, **options) -> None:
    reason = stage.skip_if(cfg) if stage.skip_if else None
    if reason:
        logger.info("== stage %s: skipping (%s) ==", stage.name, reason)
    elif stage.is_done(cfg, layout):
        logger.info("== stage %s: complete, skipping (%s) ==", stage.name, stage.done_when)
    else:
        logger.info("== stage %s ==", stage.name)
        stage.run_fn()(cfg, layout, **options)


def run_study(cfg: StudyConfig, layout: Optional[StudyLayout] = None,
              stages: Sequence[str] = tuple(s.name for s in STAGES)) -> StudyLayout:
    """Run ``stages`` in order into ``cfg.study_dir`` (prepared first if ``layout`` is None); return the layout."""
    layout = layout or prepare_study_dir(cfg)
    t0 = time.monotonic()
    for name in stages:
        run_stage(name, cfg, layout, alone=False)
    logger.info("study %s complete in %.1fs: %s", cfg.name, time.monotonic() - t0, layout.root)
    return layout


def _record_timing(layout: StudyLayout, stage: str, seconds: float) -> None:
    """Append this invocation's wall seconds for ``stage`` to ``timings.json`` (a history, not a marker)."""
    data = read_json(layout.timings) if layout.timings.exists() else {}
    data.setdefault(stage, []).append(round(seconds, 2))
    write_json(layout.timings, data)
