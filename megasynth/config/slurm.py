"""``sweep.executor`` fields of the SLURM executor (``executor: {type: slurm, ...}``), in a section of its own so the
SLURM executor (``megasynth/study/executors/slurm.py``) owns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megasynth.utils import MegasynthError


@dataclass
class SlurmExecutorConfig:
    """A SLURM job array, one array task per sweep task (a WSD trunk and its branches, or one run)."""

    partition: Optional[str] = None
    """``sbatch --partition``; ``None``: the cluster's default."""
    account: Optional[str] = None
    """``sbatch --account``; ``None``: the user's default."""
    time_limit: int = 240
    """Wall-clock limit of one array task in minutes (``sbatch --time``)."""
    gpus_per_task: int = 0
    """GPUs per node of a task (``--gpus-per-node``); 0 on CPU clusters (no GRES requested)."""
    nodes_per_task: int = 1
    """Nodes of one task (``srun`` starts one ``torchrun`` per node)."""
    cpus_per_task: Optional[int] = None
    """CPUs per node of a task (``--cpus-per-task``); ``None``: the cluster's default."""
    max_concurrent: Optional[int] = None
    """Array tasks running at once (the ``%K`` of ``--array=0-N%K``); ``None``: no limit."""
    signal_before_s: int = 120
    """Seconds before the time limit at which SLURM signals the task to checkpoint and requeue."""
    extra_sbatch: list[str] = field(default_factory=list)
    """More ``sbatch`` options, verbatim (e.g. ``--qos=high``)."""
    container_image: Optional[str] = None
    """pyxis ``--container-image`` (e.g. ``megasynth:gpu`` or a ``.sqsh``); ``None``: no container."""

    def validate(self, where: str = "sweep.executor") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        for name in ("time_limit", "nodes_per_task"):
            if getattr(self, name) <= 0:
                raise MegasynthError(f"{where}.{name}: must be > 0")
        for name in ("gpus_per_task", "signal_before_s"):
            if getattr(self, name) < 0:
                raise MegasynthError(f"{where}.{name}: must be >= 0")
        for name in ("cpus_per_task", "max_concurrent"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise MegasynthError(f"{where}.{name}: must be > 0 (or null)")
        if self.signal_before_s >= self.time_limit * 60:
            raise MegasynthError(f"{where}.signal_before_s: must be shorter than time_limit "
                                 f"({self.time_limit} min)")
