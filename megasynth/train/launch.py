"""Entry point of ``launch/train.sh`` / ``launch/train.sbatch``: the train stage under ``torchrun``.

    torchrun --nproc-per-node 8 -m megasynth.train.launch STUDY.yaml [--mixture NAME ...] [key=value ...]
    python -m megasynth.train.launch STUDY.yaml --dry-run --nproc 16 train.tensor_model_parallel_size=2

``STUDY.yaml`` is a study file or a run's resolved ``runs/<mix>/config.yaml`` (same schema). Every rank
runs :func:`megasynth.train.loop.train_one` for the selected mixtures (default: all); completed runs are
skipped and interrupted ones resume from their checkpoint. ``--dry-run`` prints the resolved config
and the parallel layout (:func:`parallel_plan`) for ``--nproc`` processes (default ``$WORLD_SIZE`` or 1)
without importing torch or megatron.

Exit status: 0 done, 2 bad input (:class:`~megasynth.utils.MegasynthError`), 3 stopped by
SIGTERM/SIGUSR1 after saving a checkpoint (rerun to resume).
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from megasynth.utils import MegasynthError


def parallel_plan(cfg, world_size: int) -> dict:
    """The parallel layout of ``cfg.train`` on ``world_size`` processes (pure arithmetic, no torch).

    Returns:
        ``world_size``, ``tensor_model_parallel_size``, ``pipeline_model_parallel_size``,
        ``virtual_pipeline_model_parallel_size``, ``data_parallel_size`` (= world / (tp·pp)),
        ``num_microbatches`` per step per DP rank (gradient accumulation), ``layers_per_pipeline_chunk``,
        ``tokens_per_step``, ``train_tokens``, ``params`` and ``non_embedding_params`` (published vocab
        if the tokenizer is not known here), ``train_flops_per_token``, and the memory/communication options.

    Raises:
        MegasynthError: tp·pp does not divide the world size, global batch not divisible by
            micro batch x DP, layers not divisible by pp·vpp.
    """
    from megasynth.model.presets import get_preset

    t = cfg.train
    tp, pp = t.tensor_model_parallel_size, t.pipeline_model_parallel_size
    vpp = getattr(t, "virtual_pipeline_model_parallel_size", None)
    if world_size <= 0 or world_size % (tp * pp):
        raise MegasynthError(f"train.tensor_model_parallel_size * pipeline_model_parallel_size ({tp}x{pp}) must "
                             f"divide the world size {world_size}")
    dp = world_size // (tp * pp)
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise MegasynthError(f"train.global_batch_size: {t.global_batch_size} is not a multiple of micro_batch_size "
                             f"* data-parallel size = {t.micro_batch_size * dp}")
    shape = get_preset(cfg.model.preset)
    chunks = pp * (vpp or 1)
    if shape.num_layers % chunks:
        raise MegasynthError(f"train.pipeline_model_parallel_size: {shape.num_layers} layers do not split into "
                             f"pp * vpp = {chunks} chunks")
    return {
        "world_size": world_size,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "virtual_pipeline_model_parallel_size": vpp,
        "data_parallel_size": dp,
        "num_microbatches": t.global_batch_size // (t.micro_batch_size * dp),
        "layers_per_pipeline_chunk": shape.num_layers // chunks,
        "tokens_per_step": t.global_batch_size * t.seq_length,
        "train_tokens": t.global_batch_size * t.seq_length * t.train_iters,
        "params": shape.total_params(),
        "non_embedding_params": shape.non_embedding_params(),
        "train_flops_per_token": shape.train_flops_per_token(t.seq_length),
        "transformer_impl": cfg.model.transformer_impl,
        "precision": cfg.model.precision,
        "use_distributed_optimizer": getattr(t, "use_distributed_optimizer", False),
        "overlap_grad_reduce": getattr(t, "overlap_grad_reduce", False),
        "sequence_parallel": getattr(t, "sequence_parallel", False),
        "recompute_granularity": getattr(t, "recompute_granularity", None),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megasynth.train.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="study file or runs/<mix>/config.yaml")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ap.add_argument("--mixture", action="append", help="train only this mixture (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and parallel layout")
    ap.add_argument("--nproc", type=int, help="world size for --dry-run (default $WORLD_SIZE or 1)")
    args = ap.parse_intermixed_args(argv)

    from megasynth.config import StudyConfig
    from megasynth.utils import setup_logging

    setup_logging()
    try:
        cfg = StudyConfig.from_yaml(args.study, args.overrides)
        names = args.mixture or [m.name for m in cfg.mixtures]
        unknown = sorted(set(names) - {m.name for m in cfg.mixtures})
        if unknown:
            raise MegasynthError(f"--mixture: unknown mixture {unknown[0]!r} "
                                 f"(known: {', '.join(m.name for m in cfg.mixtures)})")
        if args.dry_run:
            world = args.nproc or int(os.environ.get("WORLD_SIZE", "1"))
            plan = parallel_plan(cfg, world)
            print("# resolved config")
            print(cfg.to_yaml(), end="")
            print("# parallel layout")
            print(yaml.safe_dump({"mixtures": names, **plan}, sort_keys=False), end="")
            return 0
        from megasynth.study.runner import prepare_study_dir
        from megasynth.train.loop import TrainingInterrupted, train_one

        layout = prepare_study_dir(cfg)
        try:
            for name in names:
                train_one(cfg, layout, name)
        except TrainingInterrupted as e:
            print(f"megasynth: {e}", file=sys.stderr)
            return 3
    except MegasynthError as e:
        print(f"megasynth: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
