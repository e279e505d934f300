"""``sweep.executor: {type: local, jobs: K}``: K tasks at once on this machine, the CPU cores split between them.

Each run is ``python -m megasynth.study.launch runs/<run_id>/run.yaml`` in a subprocess
(:class:`~megasynth.study.executors.base.SubprocessExecutor`) with ``OMP_NUM_THREADS`` (torch's intra-op
threads) and ``MKL_NUM_THREADS`` set to ``cores // K`` (at least 1), so K runs do not oversubscribe the cores.
"""

from __future__ import annotations

from megasynth.study.executors.base import SubprocessExecutor, available_cpus


class LocalExecutor(SubprocessExecutor):
    """K (``jobs``) subprocess slots, ``cores // K`` threads each."""

    def threads(self) -> int:
        return max(1, available_cpus() // max(1, self.cfg.jobs))

    def environ(self, slot: int) -> dict[str, str]:
        n = str(self.threads())
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
