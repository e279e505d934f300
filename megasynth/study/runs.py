"""Run planning: the training runs of a study, each a :class:`~megasynth.config.RunConfig`.

A study without a ``sweep:`` section plans one run per mixture, ``run_id = mixture name``, with the study's
``model``, ``train``, ``tokenizer`` and eval sets; a sweep plans its grid (:mod:`megasynth.study.sweep`).
Everything downstream (the ``train`` stage, ``launch``, the sweep executors, ``evaluate``) takes the planned
list, and ``runs/<run_id>/run.yaml`` records each one.
"""

from __future__ import annotations

from megasynth.config import RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError


def plan_runs(cfg: StudyConfig) -> list[RunConfig]:
    """The study's training runs: with a ``sweep:`` section its grid (:func:`megasynth.study.sweep.plan_sweep_runs`:
    presets × budgets × mixtures × seeds, WSD trunks before their branches); without one, one run per mixture in
    study-file order (``run_id`` = mixture name).

    Raises:
        MegasynthError: two runs with one ``run_id``, a run that does not validate.
    """
    from megasynth.study.sweep import check_unique, plan_sweep_runs

    if cfg.sweep is not None:
        return plan_sweep_runs(cfg)
    return check_unique([RunConfig.from_study(cfg, m.name) for m in cfg.mixtures])


def select_runs(runs: list[RunConfig], run_ids: list[str] | None = None,
                mixtures: list[str] | None = None) -> list[RunConfig]:
    """The runs named in ``run_ids`` and the runs of the mixtures in ``mixtures`` (all runs if neither).

    Raises:
        MegasynthError: a name that matches no planned run (``--run`` / ``--mixture``).
    """
    if not run_ids and not mixtures:
        return list(runs)
    for flag, names, known in (("--run", run_ids or [], [r.run_id for r in runs]),
                               ("--mixture", mixtures or [], list(dict.fromkeys(r.mixture.name for r in runs)))):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise MegasynthError(f"{flag}: unknown name {unknown[0]!r} (known: {', '.join(known)})")
    return [r for r in runs if r.run_id in (run_ids or []) or r.mixture.name in (mixtures or [])]


def runs_done(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether every planned run is complete (the ``train`` stage's completion check); False without runs.

    Raises:
        MegasynthError: a run directory holds another run (a changed identity setting, named).
    """
    from megasynth.train.record import check_run_dir

    runs = plan_runs(cfg)
    return bool(runs) and all([check_run_dir(run, layout.run(run.run_id)) for run in runs])


def train_runs(cfg: StudyConfig, layout: StudyLayout) -> None:
    """The ``train`` stage: :func:`megasynth.train.run_train` over :func:`plan_runs`."""
    from megasynth.train import run_train

    run_train(plan_runs(cfg), layout)


def evaluate_runs(cfg: StudyConfig, layout: StudyLayout) -> None:
    """The ``evaluate`` stage: :func:`megasynth.analysis.run_evaluate` over :func:`plan_runs`."""
    from megasynth.analysis.results import run_evaluate

    run_evaluate(plan_runs(cfg), layout)


def results_done(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether ``results.csv`` holds the current evaluations of the planned runs."""
    from megasynth.analysis.results import results_up_to_date

    return results_up_to_date(plan_runs(cfg), layout)
