"""Worker of tests/test_parallel.py, run under ``torchrun --nproc-per-node 2`` (gloo on CPU).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/parallel_worker.py STUDY.yaml \
        RUN:train.parallel.key=value,model.key=value ...

Trains each named run (a mixture of the study) in turn in the same two processes, with the given
dotted overrides (parallel sizes); megatron's parallel groups are rebuilt between runs.
"""

from __future__ import annotations

import sys

from megasynth.config import RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.train import train_one
from megasynth.utils import setup_logging


def main(argv: list[str]) -> None:
    setup_logging()
    study, runs = argv[0], argv[1:]
    for spec in runs:
        name, _, overrides = spec.partition(":")
        cfg = StudyConfig.from_yaml(study, [kv for kv in overrides.split(",") if kv])
        train_one(RunConfig.from_study(cfg, name), StudyLayout.of(cfg.study_dir))

    from megasynth.model import builder

    builder.destroy_parallel()


if __name__ == "__main__":
    main(sys.argv[1:])
