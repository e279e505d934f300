"""Executors of a sweep's tasks (``sweep.executor.type``): :mod:`.local` (subprocesses on this machine),
:mod:`.torchrun` (each run under ``torchrun`` on this node) and ``slurm`` (a SLURM job array, :mod:`.slurm`).

Every executor implements :meth:`~megasynth.study.executors.base.Executor.run` ``(tasks, layout, cfg)``: run
the tasks (:class:`~megasynth.study.sweep.SweepTask`, each an ordered list of run files) and return when they
are done (SLURM: when submitted, or done with ``wait``). A worker runs a task as
``python -m megasynth.study.launch runs/<run_id>/run.yaml`` for each run in order.
"""

from __future__ import annotations

import importlib
import shutil

from megasynth.config import ExecutorConfig
from megasynth.study.executors.base import Executor
from megasynth.utils import MegasynthError

EXECUTORS = {"local": "megasynth.study.executors.local:LocalExecutor",
             "torchrun": "megasynth.study.executors.torchrun:TorchrunExecutor",
             "slurm": "megasynth.study.executors.slurm:SlurmExecutor"}

REQUIRED_COMMANDS = {"slurm": ("sbatch",)}
"""Commands an executor type needs on ``PATH`` (checked before anything is written)."""


def make_executor(cfg: ExecutorConfig) -> Executor:
    """The executor of ``sweep.executor``, after :meth:`Executor.check` (what it needs on this machine).

    Raises:
        MegasynthError: ``sweep.executor.type: ...`` when it cannot run here (e.g. ``slurm`` without ``sbatch``).
    """
    for command in REQUIRED_COMMANDS.get(cfg.type, ()):
        if shutil.which(command) is None:
            raise MegasynthError(f"sweep.executor.type: {cfg.type} needs `{command}` on PATH, not found "
                                 "(run on a SLURM login node, or use type: local / torchrun)")
    module, _, name = EXECUTORS[cfg.type].partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise MegasynthError(f"sweep.executor.type: {cfg.type} executor is not part of this megasynth") from None
    cls.check(cfg)
    return cls(cfg)


__all__ = ["EXECUTORS", "Executor", "make_executor"]
