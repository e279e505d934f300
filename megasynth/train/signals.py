"""Stop signals of a training run (SLURM preemption / time limit; Megatron-LM's ``--exit-signal-handler``).

A SIGTERM or SIGUSR1 is recorded once per process (:func:`install_stop_handlers`), from the moment the
handler is installed: the ``torchrun`` entry point (:mod:`megasynth.study.launch`) and ``megasynth run``
install it before importing torch, so a signal that arrives while a job starts (imports, data, model,
checkpoint load) is not lost; :class:`StopSignal` then stops the run at its next check. Under SLURM the
signal reaches every process of the job step, so every rank records it; :meth:`StopSignal.received` is
collective anyway (an all-reduce), so all ranks stop after the same step and save one checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading

from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.train")

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""The stop signals: SLURM's SIGTERM (scancel, scontrol requeue, preemption, time limit) and the
SIGUSR1 that ``--signal=USR1@N`` sends before the time limit."""

_received: int | None = None
_installed: dict = {}


class TrainingInterrupted(MegasynthError):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint; rerunning resumes from it."""


def _record(signum, frame) -> None:  # noqa: ARG001
    global _received
    if _received is None:
        _received = signum
        logger.warning("received %s: saving a checkpoint after this step and stopping", signal.Signals(signum).name)


def install_stop_handlers() -> bool:
    """Record SIGTERM/SIGUSR1 in this process from now on (idempotent; main thread only).

    Returns:
        Whether the handlers are installed (False outside the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        if sig not in _installed:
            _installed[sig] = signal.signal(sig, _record)
    return True


def uninstall_stop_handlers() -> None:
    """Restore the handlers that :func:`install_stop_handlers` replaced (a pending signal stays recorded)."""
    for sig, prev in list(_installed.items()):
        signal.signal(sig, prev)
        del _installed[sig]


def pending_signal() -> int | None:
    """The stop signal this process recorded (None if none)."""
    return _received


class StopSignal:
    """Stop-signal checks of one run (Megatron-LM's ``--exit-signal-handler``) until :meth:`close`.

    With ``enabled``, installs :func:`install_stop_handlers` unless already installed (then :meth:`close`
    leaves them, as the entry point wants them for the rest of the process) and sees a signal recorded
    before it was created. :meth:`received` is collective (all ranks agree through an all-reduce), so
    every rank saves the checkpoint at the same step. Handlers are installed only in the main thread.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._owns = False
        if enabled and not _installed:
            self._owns = install_stop_handlers()

    @property
    def signum(self) -> int | None:
        return _received if self.enabled else None

    def received(self) -> int | None:
        """The signal number if any rank got one (collective call), else None."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            if torch.cuda.is_available():
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def consume(self) -> None:
        """Forget the recorded signal once the run has stopped on it (a later run in this process starts clean)."""
        global _received
        _received = None

    def close(self) -> None:
        if self._owns:
            uninstall_stop_handlers()
            self._owns = False
