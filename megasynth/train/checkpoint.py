"""Model checkpoints through megatron-core ``dist_checkpointing`` (sharded, parallelism-agnostic).

Layout (Megatron-LM's): ``checkpoints/iter_NNNNNNN/`` holds the sharded ``torch_dist`` checkpoint of
``model.sharded_state_dict()``; ``checkpoints/latest_checkpointed_iteration.txt`` names the latest
step. A checkpoint saved with one TP/PP layout loads into another (megatron reshards on load).
Only model weights are saved: runs restart from scratch (deterministic seed) rather than resume.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from megasynth.utils import MegasynthError, atomic_path

logger = logging.getLogger("megasynth.train")

LATEST_FILE = "latest_checkpointed_iteration.txt"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside megatron's ``DistributedDataParallel`` / ``Float16Module`` wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """``root/iter_{step:07d}`` (Megatron-LM's naming)."""
    return Path(root) / f"iter_{step:07d}"


def save_checkpoint(model: torch.nn.Module, root: str | Path, step: int) -> Path:
    """Save the model's sharded state dict to ``root/iter_NNNNNNN`` and update the latest-step file.

    A partially written directory from an earlier attempt is replaced. Must be called on all ranks.

    Returns:
        The checkpoint directory.
    """
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    path = checkpoint_dir(root, step)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0 and path.exists():
        shutil.rmtree(path)
    if dist.is_initialized():
        dist.barrier()
    path.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(_unwrap(model).sharded_state_dict(), str(path))
    if rank0:
        with atomic_path(Path(root) / LATEST_FILE) as tmp:
            tmp.write_text(f"{step}\n")
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


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint saved by :func:`save_checkpoint` into ``model`` (in place, strict).

    ``path`` is an ``iter_NNNNNNN`` directory or a ``checkpoints`` root (then the latest one).

    Raises:
        MegasynthError: no checkpoint at ``path``.
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    if (path / LATEST_FILE).is_file():
        path = latest_checkpoint(path)
    if not path.is_dir():
        raise MegasynthError(f"{path}: checkpoint directory not found")
    inner = _unwrap(model)
    state = dist_checkpointing.load(inner.sharded_state_dict(), str(path))
    inner.load_state_dict(state, strict=True)
