"""Stop signals of a training run (SLURM preemption / time limit; Megatron-LM's ``--exit-signal-handler``)."""

from __future__ import annotations

import logging
import signal
import threading

import torch

from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.train")


class TrainingInterrupted(MegasynthError):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint; rerunning resumes from it."""


class StopSignal:
    """Records SIGTERM/SIGUSR1 (Megatron-LM's ``--exit-signal-handler``) until :meth:`close`.

    :meth:`received` is collective (all ranks agree through an all-reduce), so every rank saves the
    checkpoint at the same step. Handlers are installed only in the main thread.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, enabled: bool = True):
        self.signum: int | None = None
        self.enabled = enabled
        self._previous: dict = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum
        logger.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

    def received(self) -> int | None:
        """The signal number if any rank got one (collective call), else None."""
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            if torch.cuda.is_available():
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def close(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous = {}
