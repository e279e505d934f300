"""``sweep.executor`` with ``type: slurm``: how a sweep's tasks run as one SLURM job array (the base floor).

Read by :class:`megasynth.study.executors.slurm.SlurmExecutor`: the fields become the ``sbatch`` options of the
generated array script (``<study_dir>/slurm/sweep-<UTC time>.sbatch``), ``poll_interval_s`` is how often
``sweep run`` asks ``squeue`` while it waits::

    sweep:
      executor:
        type: slurm
        partition: batch
        time_limit: 240          # minutes per array task and attempt (--time)
        gpus_per_task: 8         # per node of a task (--gpus-per-node); one rank per GPU
        nodes_per_task: 1        # > 1: srun starts one torchrun per node (c10d rendezvous)
        max_concurrent: 16       # array tasks running at once (--array=0-N%16)
        signal_before_s: 300     # SIGUSR1 this long before the time limit -> checkpoint -> requeue
        extra_sbatch: ["--qos=high"]
        container_image: /images/megasynth.sqsh   # pyxis/enroot (srun --container-image)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megasynth.utils import MegasynthError


@dataclass
class SlurmExecutorConfig:
    """``sweep.executor`` for ``type: slurm``: a job array, one array task per sweep task. The ranks per node
    are one per GPU, or the executor's ``nproc_per_node`` on CPU nodes (a field of ``sweep.executor`` itself)."""

    partition: Optional[str] = None
    """``--partition`` (default: the cluster's default partition)."""
    account: Optional[str] = None
    """``--account`` (default: the user's default account)."""
    time_limit: int = 240
    """Minutes per array task and attempt (``--time``); a task that needs longer is stopped
    ``signal_before_s`` before it, saves a checkpoint and is requeued."""
    nodes_per_task: int = 1
    """Nodes of one array task (``--nodes``); above 1, ``srun`` starts one ``torchrun`` per node."""
    gpus_per_task: int = 0
    """GPUs on each node of a task (``--gpus-per-node``; for one-node tasks: the task's GPUs); 0: CPU only
    (no GRES is requested, so the script submits to clusters without GPUs)."""
    cpus_per_task: Optional[int] = None
    """CPUs on each node of a task (``--cpus-per-task``, one SLURM task per node); default: one per rank."""
    max_concurrent: Optional[int] = None
    """Array tasks running at once (``--array=0-N%K``); default: as many as the cluster allows."""
    signal_before_s: int = 300
    """Seconds before the time limit at which SLURM sends SIGUSR1 (``--signal=B:USR1@N``): the ranks
    save a checkpoint and the task requeues itself. Also how long ``torchrun`` waits for the ranks to save."""
    extra_sbatch: list[str] = field(default_factory=list)
    """More ``sbatch`` options, each one ``--name=value`` string (e.g. ``--qos=high``, ``--exclusive``)."""
    container_image: Optional[str] = None
    """pyxis/enroot image (name or ``.sqsh``) for the training steps (``srun --container-image``); the
    ranks then run ``python`` of the image."""
    job_name: str = "megasynth-sweep"
    """``--job-name`` of the array."""
    poll_interval_s: float = 30.0
    """Seconds between ``squeue`` polls while ``sweep run`` waits for the array."""

    def validate(self, where: str = "sweep.executor") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        for name in ("time_limit", "nodes_per_task"):
            if getattr(self, name) < 1:
                raise MegasynthError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("cpus_per_task", "max_concurrent"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MegasynthError(f"{where}.{name}: must be >= 1 (or null), got {getattr(self, name)}")
        if self.gpus_per_task < 0:
            raise MegasynthError(f"{where}.gpus_per_task: must be >= 0, got {self.gpus_per_task}")
        if not 0 < self.signal_before_s < self.time_limit * 60:
            raise MegasynthError(f"{where}.signal_before_s: must be > 0 and below time_limit "
                                 f"({self.time_limit * 60} s), got {self.signal_before_s}")
        if self.poll_interval_s <= 0:
            raise MegasynthError(f"{where}.poll_interval_s: must be > 0, got {self.poll_interval_s}")
        for i, opt in enumerate(self.extra_sbatch):
            if not isinstance(opt, str) or not opt.startswith("--") or "\n" in opt:
                raise MegasynthError(f"{where}.extra_sbatch[{i}]: expected one '--name[=value]' option, got {opt!r}")
        for name in ("partition", "account", "container_image", "job_name"):
            value = getattr(self, name)
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise MegasynthError(f"{where}.{name}: expected a name without spaces, got {value!r}")
