"""Checkpoints through megatron-core ``dist_checkpointing`` (sharded, parallelism-agnostic, resumable).

Layout (Megatron-LM's): ``checkpoints/iter_NNNNNNN/`` holds one sharded ``torch_dist`` checkpoint;
``checkpoints/latest_checkpointed_iteration.txt`` names the latest complete step (written last, so a
directory being written when a job dies is never the latest).

A full checkpoint (Megatron-LM's ``generate_state_dict``) holds

- ``model`` (or ``model0``, ``model1`` … one per virtual pipeline chunk): ``GPTModel.sharded_state_dict()``;
  keys are global (layer numbers along a stacked axis, TP shards by offset), so a checkpoint saved
  with one TP/PP/VPP layout loads into any other (megatron reshards on load);
- ``optimizer``: ``optimizer.sharded_state_dict(model)`` (Adam moments and fp32 master weights sharded
  like the parameters; the distributed optimizer's ``fully_reshardable`` format);
- ``opt_param_scheduler``: ``OptimizerParamScheduler.state_dict()``;
- ``rng_state``: torch CPU/CUDA, Python and NumPy generator states and megatron's CUDA RNG tracker, one
  ``ShardedObject`` per (pp, tp) rank (restored only when the layout is unchanged);
- common values written by rank 0: ``iteration``, ``consumed_samples`` and whatever the caller adds.

:func:`save_checkpoint` with only a model writes just ``model`` (a weights checkpoint).
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from megasynth.utils import MegasynthError, atomic_path, read_json

logger = logging.getLogger("megasynth.train")

LATEST_FILE = "latest_checkpointed_iteration.txt"

OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}
"""Distributed-optimizer state format: gathered per parameter on DP rank 0 at save, so it reloads at any
TP/PP/DP (megatron-core's ``fully_reshardable``); ignored by the non-distributed optimizers."""


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside megatron's ``DistributedDataParallel`` / ``Float16Module`` wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _chunks(model) -> list:
    return [_unwrap(m) for m in (model if isinstance(model, (list, tuple)) else [model])]


def _model_keys(n: int) -> list[str]:
    return ["model"] if n == 1 else [f"model{i}" for i in range(n)]


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """``root/iter_{step:07d}`` (Megatron-LM's naming)."""
    return Path(root) / f"iter_{step:07d}"


def _rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _rng_sharded_object():
    """This rank's RNG states as a ``ShardedObject`` keyed by (pp rank, tp rank); DP replicas share one
    (the current states; on load they are the template that the saved states replace)."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"random": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
             "tracker": get_cuda_rng_tracker().get_states() if torch.cuda.is_available() else None}
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size())
    offset = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank())
    return ShardedObject("rng_state", state, shape, offset, replica_id=ps.get_data_parallel_rank())


def _set_rng(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])
        if state.get("tracker") is not None:
            get_cuda_rng_tracker().set_states(state["tracker"])


def _state_dict(chunks: list, optimizer, scheduler, rng: bool, is_loading: bool) -> dict:
    sd: dict[str, Any] = {}
    for key, chunk in zip(_model_keys(len(chunks)), chunks):
        sd[key] = chunk.sharded_state_dict()
    if optimizer is not None:
        model_sd = {k: sd[k] for k in _model_keys(len(chunks))}
        sd["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=OPTIMIZER_METADATA)
    if scheduler is not None and not is_loading:
        sd["opt_param_scheduler"] = scheduler.state_dict()
    if rng:
        sd["rng_state"] = _rng_sharded_object()
    return sd


def save_checkpoint(model, root: str | Path, step: int, optimizer=None, scheduler=None,
                    common: Optional[dict] = None) -> Path:
    """Save a sharded checkpoint to ``root/iter_NNNNNNN`` and then update the latest-step file.

    Args:
        model: a GPTModel (possibly wrapped) or the list of this rank's model chunks.
        optimizer, scheduler: megatron optimizer and ``OptimizerParamScheduler`` (a full, resumable
            checkpoint, with RNG states); omit both for a weights-only checkpoint.
        common: extra picklable values saved once (rank 0), e.g. ``consumed_samples``.

    A partially written directory from an earlier attempt is replaced. Must be called on all ranks.

    Returns:
        The checkpoint directory.
    """
    from megatron.core import dist_checkpointing

    from megasynth.model import cpu_compat

    path = checkpoint_dir(root, step)
    if _rank0() and path.exists():
        shutil.rmtree(path)
    _barrier()
    path.mkdir(parents=True, exist_ok=True)
    full = optimizer is not None
    with cpu_compat.cpu_device_mode():  # the distributed optimizer gathers its state with .cuda() tensors
        sd = _state_dict(_chunks(model), optimizer, scheduler, rng=full, is_loading=False)
        sd["iteration"] = step
        sd.update(common or {})
        dist_checkpointing.save(sd, str(path))
    _barrier()
    if _rank0():
        with atomic_path(Path(root) / LATEST_FILE) as tmp:
            tmp.write_text(f"{step}\n")
    _barrier()
    if _rank0():
        logger.info("saved checkpoint %s", path)
    return path


def latest_checkpoint(root: str | Path) -> Path:
    """The directory named by ``root/latest_checkpointed_iteration.txt``.

    Raises:
        MegasynthError: no latest-step file or its checkpoint directory is missing.
    """
    f = Path(root) / LATEST_FILE
    if not f.is_file():
        raise MegasynthError(f"{f}: file not found (no checkpoint saved)")
    try:
        step = int(f.read_text().strip())
    except ValueError:
        raise MegasynthError(f"{f}:1: expected an integer step") from None
    path = checkpoint_dir(root, step)
    if not path.is_dir():
        raise MegasynthError(f"{path}: checkpoint directory not found")
    return path


def read_common(path: str | Path) -> dict:
    """The common (rank-0) values of a checkpoint directory: ``iteration``, ``consumed_samples``, …

    Raises:
        MegasynthError: not a dist_checkpointing directory; a checkpoint in megatron-core >= 0.19's layout
            read with an older megatron-core.
    """
    import megatron.core
    from megatron.core import dist_checkpointing
    from packaging.version import Version

    path = Path(path)
    if not (path / "metadata.json").is_file():
        raise MegasynthError(f"{path}: not a checkpoint directory (no metadata.json)")
    # megatron-core 0.19 keeps the common values inside the torch_dist shards: no common.pt, and its
    # metadata.json names no common_backend. It still reads the older layout; releases before it cannot
    # read the new one (they look for common.pt).
    if (Version(megatron.core.__version__) < Version("0.19") and not (path / "common.pt").exists()
            and "common_backend" not in read_json(path / "metadata.json")):
        raise MegasynthError(f"{path}: written by megatron-core >= 0.19 (no common.pt); megatron-core "
                             f"{megatron.core.__version__} cannot read it (install megatron-core>=0.19, Python 3.12)")
    return dist_checkpointing.load_common_state_dict(str(path))


def load_checkpoint(model, path: str | Path, optimizer=None, scheduler=None, load_rng: bool = False) -> dict:
    """Load a checkpoint saved by :func:`save_checkpoint` in place (any TP/PP/VPP layout to any other).

    Args:
        model: a GPTModel (possibly wrapped) or the list of this rank's model chunks.
        path: an ``iter_NNNNNNN`` directory or a ``checkpoints`` root (then the latest one).
        optimizer, scheduler: restored too when given (the checkpoint must be a full one).
        load_rng: restore the RNG states (only valid when the (pp, tp) layout is unchanged).

    Returns:
        The checkpoint's common values (``iteration``, ``consumed_samples``, …).

    Raises:
        MegasynthError: no checkpoint at ``path``; optimizer state requested from a weights-only one.
    """
    from megatron.core import dist_checkpointing

    from megasynth.model import cpu_compat

    path = Path(path)
    if (path / LATEST_FILE).is_file():
        path = latest_checkpoint(path)
    if not path.is_dir():
        raise MegasynthError(f"{path}: checkpoint directory not found")
    common = read_common(path)
    if optimizer is not None and "opt_param_scheduler" not in common:
        raise MegasynthError(f"{path}: weights-only checkpoint, cannot restore the optimizer")
    chunks = _chunks(model)
    with cpu_compat.cpu_device_mode():
        sd = _state_dict(chunks, optimizer, None, rng=load_rng, is_loading=True)
        state = dist_checkpointing.load(sd, str(path))
        for key, chunk in zip(_model_keys(len(chunks)), chunks):
            chunk.load_state_dict(state[key], strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.num_steps = 0  # load_state_dict *adds* the saved step count (Megatron loads into a fresh one)
        scheduler.load_state_dict(common["opt_param_scheduler"])
    if load_rng:
        _set_rng(state["rng_state"])
    if _rank0():
        logger.info("loaded checkpoint %s (iteration %s)", path, common.get("iteration"))
    return common
