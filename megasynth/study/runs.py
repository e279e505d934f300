"""Run planning: the training runs of a study, each a :class:`~megasynth.config.RunConfig`.

A study without a ``sweep:`` section plans one run per mixture, ``run_id = mixture name``, with the study's
``model``, ``train``, ``tokenizer`` and eval sets; a sweep plans its grid (:mod:`megasynth.study.sweep`).
Everything downstream (the ``train`` stage, ``launch``, the sweep executors, ``evaluate``) takes the planned
list, and ``runs/<run_id>/run.yaml`` records each one.
The recursive loop (``collapse``) plans its runs ``collapse-g<k>`` here too (:func:`plan_collapse_runs`); the
``collapse`` stage trains them (:mod:`megasynth.study.collapse`) and the ``evaluate`` stage collects them with the
others.
"""

from __future__ import annotations

import copy
import logging

from megasynth.config import BASE_INIT, BASE_RUN_ID, MixtureConfig, RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.study")


def plan_runs(cfg: StudyConfig) -> list[RunConfig]:
    """The study's training runs: with a ``sweep:`` section its grid (:func:`megasynth.study.sweep.plan_sweep_runs`:
    presets × budgets × mixtures × seeds, WSD trunks before their branches); without one, one run per mixture in
    study-file order (``run_id`` = mixture name).

    Raises:
        MegasynthError: two runs with one ``run_id``, a run that does not validate.
    """
    from megasynth.study.sweep import check_unique, plan_sweep_runs

    runs = plan_sweep_runs(cfg) if cfg.sweep is not None else check_unique([RunConfig.from_study(cfg, m.name)
                                                                             for m in cfg.mixtures])
    if cfg.base is not None:  # continued training: every run (a WSD branch through its trunk) from the base model
        for run in runs:
            if run.run_id == BASE_RUN_ID:
                raise MegasynthError(f"base: run id {BASE_RUN_ID!r} is the base model's; rename mixture "
                                     f"{run.mixture.name!r}")
            if run.train.branch_from is None:
                run.train.init_from = BASE_INIT
    return runs


def base_runs(cfg: StudyConfig) -> list[RunConfig]:
    """The base model's run ``base`` (``base.mixture``: from random init, ``base.train_iters`` steps at ``base.lr`` /
    ``base.min_lr`` when given, the study's model and train settings otherwise), or ``[]`` (no ``base`` section, or an imported ``base.hf_model``)."""
    if cfg.base is None or cfg.base.mixture is None:
        return []
    run = RunConfig.from_study(cfg, cfg.base.mixture, run_id=BASE_RUN_ID)
    run.train.train_iters = cfg.base.train_iters
    run.train.init_from = None
    if cfg.base.lr is not None:
        run.train.optimizer.lr = cfg.base.lr
    if cfg.base.min_lr is not None:
        run.train.optimizer.min_lr = cfg.base.min_lr
    run.validate()
    return [run]


def ensure_base(cfg: StudyConfig, layout: StudyLayout) -> None:
    """Prepare the study's base model before its runs start (no-op without a ``base`` section): train run ``base``
    (``base.mixture``; skipped when complete) or import ``base.hf_model`` into ``base/megatron/`` (once; the
    marker records the source directory).

    Raises:
        MegasynthError: ``base.hf_model`` missing or not a Llama directory; an earlier import of another directory;
            as :func:`megasynth.train.train_one`.
    """
    from pathlib import Path

    from megasynth.utils import is_done, mark_done, marker_path, read_json

    if cfg.base is None:
        return
    if cfg.base.mixture is not None:
        from megasynth.train import train_one
        from megasynth.train.record import check_run_dir

        run = base_runs(cfg)[0]
        if not check_run_dir(run, layout.run(run.run_id)):
            logger.info("base: training run %s on %s (%d steps) before the study's runs", run.run_id,
                        run.mixture.name, run.train.train_iters)
            train_one(run, layout)
        return
    src = Path(cfg.base.hf_model).expanduser().resolve()
    out = layout.base_import
    if is_done(out):
        old = read_json(marker_path(out)).get("hf_model")
        if old != str(src):
            raise MegasynthError(f"base.hf_model: {out} was imported from {old}; delete {out.parent} to import {src}")
        return
    if not (src / "config.json").is_file():
        raise MegasynthError(f"base.hf_model: not a Hugging Face model directory (no config.json): {src}")
    from megasynth.model.convert import import_hf

    logger.info("base: importing %s into %s", src, out)
    import_hf(src, out, overwrite=True)
    mark_done(out, {"hf_model": str(src)})


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
    from megasynth.utils import is_done

    runs = base_runs(cfg) + plan_runs(cfg)
    if cfg.base is not None and cfg.base.hf_model is not None and not is_done(layout.base_import):
        return False
    return bool(runs) and all([check_run_dir(run, layout.run(run.run_id)) for run in runs])


def train_runs(cfg: StudyConfig, layout: StudyLayout) -> None:
    """The ``train`` stage: :func:`megasynth.train.run_train` over :func:`plan_runs`."""
    from megasynth.train import run_train

    ensure_base(cfg, layout)
    run_train(plan_runs(cfg), layout)


def plan_collapse_runs(cfg: StudyConfig) -> list[RunConfig]:
    """The runs of the recursive loop, ``collapse-g1`` … ``collapse-g<generations>`` (none when it is off).

    Run ``collapse-g<k>`` trains on source ``collapse-g<k>`` (generation ``k``'s synthetic data) with
    ``collapse.natural_share`` of the base mixture's sources, with the study's model, train, tokenizer and
    evaluation settings.
    """
    c = cfg.collapse
    if not c.generations:
        return []
    base = cfg.mixture(c.base_mixture)
    runs = []
    for k in range(1, c.generations + 1):
        name = c.name(k)
        sources = {name: 1.0 - c.natural_share}
        if c.natural_share > 0:
            total = sum(base.sources.values())
            sources.update({s: c.natural_share * r / total for s, r in base.sources.items() if r > 0})
        run = RunConfig(run_id=name, mixture=MixtureConfig(name, sources), model=copy.deepcopy(cfg.model),
                        train=copy.deepcopy(cfg.train), tokenizer=copy.deepcopy(cfg.tokenizer),
                        eval_sets=list(cfg.eval_sets), evaluation=cfg.evaluation.for_run())
        run.validate()
        runs.append(run)
    return runs


def study_runs(cfg: StudyConfig) -> list[RunConfig]:
    """Every run of the study: the base run (:func:`base_runs`), :func:`plan_runs`, then :func:`plan_collapse_runs`."""
    return base_runs(cfg) + plan_runs(cfg) + plan_collapse_runs(cfg)


def evaluate_runs(cfg: StudyConfig, layout: StudyLayout, run_ids: list[str] | None = None) -> None:
    """The ``evaluate`` stage: the downstream tasks of ``evaluation.tasks`` and the generative math tasks of
    ``evaluation.math_tasks`` on the final checkpoint of every finished run (of ``run_ids``, default all; cached per
    run and checkpoint: :func:`megasynth.evaluation.checkpoints.evaluate_run_checkpoint`,
    :func:`~megasynth.evaluation.checkpoints.evaluate_run_math`), then ``results.csv`` over every finished run
    (:func:`megasynth.analysis.results.run_evaluate`).

    Raises:
        MegasynthError: an unknown ``--run``; as the functions named.
    """
    from megasynth.analysis.results import run_evaluate

    runs = study_runs(cfg)
    chosen = select_runs(runs, run_ids)
    if cfg.evaluation.tasks or cfg.evaluation.math_tasks:
        from megasynth.evaluation.checkpoints import evaluate_run_checkpoint, evaluate_run_math

        for run in chosen:
            if not layout.run(run.run_id).summary.is_file():
                logger.warning("run %s is not finished: no downstream or math evaluation", run.run_id)
                continue
            if cfg.evaluation.tasks:
                evaluate_run_checkpoint(run, layout, cfg.evaluation)
            if cfg.evaluation.math_tasks:
                evaluate_run_math(run, layout, cfg.evaluation)
    run_evaluate(runs, layout)


def results_done(cfg: StudyConfig, layout: StudyLayout) -> bool:
    """Whether ``results.csv`` holds the current evaluations of every run, and every finished run's final
    checkpoint has a cached result of each task of ``evaluation.tasks`` and ``evaluation.math_tasks``."""
    from megasynth.analysis.results import results_up_to_date
    from megasynth.evaluation.checkpoints import missing_math_tasks, missing_tasks

    runs = study_runs(cfg)
    finished = [layout.run(r.run_id) for r in runs if layout.run(r.run_id).summary.is_file()]
    if cfg.evaluation.tasks and any(missing_tasks(f, cfg.evaluation) for f in finished):
        return False
    if cfg.evaluation.math_tasks and any(missing_math_tasks(f, cfg.evaluation) for f in finished):
        return False
    return results_up_to_date(runs, layout)
