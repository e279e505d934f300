"""``sweep.executor: {type: torchrun, nproc_per_node: N, jobs: K}``: each run under torchrun on this node.

A run is ``python -m torch.distributed.run --standalone --nproc-per-node N -m megasynth.study.launch
runs/<run_id>/run.yaml`` (PyTorch's torchrun; ``--standalone`` picks a free rendezvous port, so runs can
share the node). With K > 1 slots, slot k sees GPUs ``k·N … k·N + N − 1`` (``CUDA_VISIBLE_DEVICES``); on a
CPU node the ranks use gloo. ``OMP_NUM_THREADS`` is ``cores // (K·N)`` (at least 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

from megasynth.study.executors.base import SubprocessExecutor, available_cpus


class TorchrunExecutor(SubprocessExecutor):
    """K (``jobs``) slots of ``nproc_per_node`` ranks each."""

    def command(self, run_file: Path) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                str(self.cfg.nproc_per_node), "-m", "megasynth.study.launch", str(run_file)]

    def environ(self, slot: int) -> dict[str, str]:
        n = self.cfg.nproc_per_node
        threads = str(max(1, available_cpus() // max(1, self.cfg.jobs * n)))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if self.cfg.jobs > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot * n + i) for i in range(n))
        return env
