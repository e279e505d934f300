"""What a run directory records about its run: ``run.yaml`` (its identity), completion, and how its
``evals.jsonl`` rows read (torch-free).

The ``train`` stage's completion check (:mod:`megasynth.study.stages`) and :func:`megasynth.train.train_one`
both go through :func:`check_run_dir`, so a run whose settings changed is never skipped silently.
"""

from __future__ import annotations

from megasynth.config import RunConfig
from megasynth.layout import RunLayout
from megasynth.utils import MegasynthError, is_done


def check_run_dir(run: RunConfig, files: RunLayout) -> bool:
    """Whether the run in ``files`` is complete, after checking that it is this same run.

    Raises:
        MegasynthError: ``run.yaml`` differs from ``run`` in an identity field (named, with old and new
            value), or a complete run has no ``run.yaml`` (written by an older megasynth).
    """
    complete = is_done(files.summary)
    if files.config.exists():
        run.check_same_run(RunConfig.from_yaml(files.config), files.config)
    elif complete:
        raise MegasynthError(f"{files.config}: missing in a complete run (written by an older megasynth), so its "
                             f"settings cannot be checked; delete {files.dir} to retrain it")
    return complete


def eval_row_value(row: dict) -> tuple[str, float]:
    """``(metric, value)`` of an ``evals.jsonl`` row; a row without ``metric`` (written before the field existed)
    is ``("loss", row["loss"])``.

    Raises:
        KeyError: the row has neither ``metric``/``value`` nor ``loss``.
    """
    if "metric" in row:
        return str(row["metric"]), row["value"]
    return "loss", row["loss"]
