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

Safety (nothing a run wrote is deleted unless ``keep_last`` asks for it):

- :func:`resume_or_restart` picks the newest checkpoint that :func:`check_checkpoint` finds whole and that
  then loads, falling back to older ones with a WARNING naming each one skipped and why; checkpoints it
  skips are moved to ``<run>/.attempt-N/checkpoints/``. If checkpoints were recorded but none is
  readable it stops with a one-line :class:`MegasynthError`; a run directory that never recorded one
  restarts from step 0 with its old contents moved to ``<run>/.attempt-N/`` (:func:`move_aside`).
- :func:`save_checkpoint` refuses to overwrite a recorded checkpoint; with ``keep_last`` it then deletes
  the oldest ``iter_*`` directories beyond the newest ``keep_last`` (:func:`prune_checkpoints`).
- Saves start no process (:func:`save_strategy`): megatron-core's default ``torch_dist`` writer forks
  writer processes and keeps a ``multiprocessing`` manager process for their results; when SLURM ends a
  job (``scontrol requeue``, ``scancel``, preemption, the time limit) it sends SIGTERM to every process
  of the job, the manager dies, and the save that the same SIGTERM asked for failed with
  ``BrokenPipeError``/``ConnectionResetError`` in ``filesystem_async``. Here every shard is written by
  torch DCP's ``FileSystemWriter`` in threads of the saving process itself, with megatron-core's
  planner, so the files are the same ``torch_dist`` format.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from megasynth.utils import MegasynthError, atomic_path, read_json

logger = logging.getLogger("megasynth.train")

LATEST_FILE = "latest_checkpointed_iteration.txt"
ATTEMPT_PREFIX = ".attempt-"
_ITER = re.compile(r"iter_(\d{7,})")

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


SAVE_THREADS = 2
"""Threads (and files) per rank of a save: megatron-core's default ``thread_count`` for ``torch_dist``."""


def save_strategy():
    """megatron-core's ``torch_dist`` save strategy, writing in this process (threads only, no fork).

    A :class:`~megatron.core.dist_checkpointing.strategies.torch.TorchDistSaveShardedStrategy` whose
    synchronous ``save`` translates the sharded state dict exactly as megatron-core does
    (``_replace_state_dict_keys_with_sharded_keys``, ``mcore_to_pyt_state_dict``, ``MCoreSavePlanner``)
    and writes it with ``torch.distributed.checkpoint.save`` and a ``FileSystemWriter`` of
    :data:`SAVE_THREADS` threads (``__<rank>_<k>.distcp`` files, fsync'd, then ``.metadata``). The
    checkpoint loads with ``dist_checkpointing.load`` like one of megatron's default strategy. Nothing
    else runs during the save, so a SIGTERM that reaches every process of a SLURM job cannot break it.
    """
    from megatron.core.dist_checkpointing.strategies.torch import (MCoreSavePlanner, TorchDistSaveShardedStrategy,
                                                                   _replace_state_dict_keys_with_sharded_keys,
                                                                   mcore_to_pyt_state_dict)
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save

    class InProcessTorchDistSave(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir) -> None:
            sd, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
            writer = FileSystemWriter(str(checkpoint_dir), thread_count=self.thread_count, sync_files=True)
            planner = MCoreSavePlanner(dedup_replicated_tensors=not self.keep_only_main_replica,
                                       flatten_state_dict=False)
            dcp_save(mcore_to_pyt_state_dict(sd, False), storage_writer=writer, planner=planner)

    return InProcessTorchDistSave("torch_dist", 1, thread_count=SAVE_THREADS)


def save_checkpoint(model, root: str | Path, step: int, optimizer=None, scheduler=None,
                    common: Optional[dict] = None, keep_last: Optional[int] = None,
                    keep_steps: Iterable[int] = ()) -> Path:
    """Save a sharded checkpoint to ``root/iter_NNNNNNN`` and then update the latest-step file.

    Args:
        model: a GPTModel (possibly wrapped) or the list of this rank's model chunks.
        optimizer, scheduler: megatron optimizer and ``OptimizerParamScheduler`` (a full, resumable
            checkpoint, with RNG states); omit both for a weights-only checkpoint.
        common: extra picklable values saved once (rank 0), e.g. ``consumed_samples``.
        keep_last: after the save, delete the oldest ``iter_*`` directories beyond the newest
            ``keep_last`` (:func:`prune_checkpoints`); ``None`` keeps all.
        keep_steps: checkpoints that ``keep_last`` never deletes.

    A directory of an unfinished save (a step after the one in ``latest_checkpointed_iteration.txt``) is
    replaced. Must be called on all ranks.

    Returns:
        The checkpoint directory.

    Raises:
        MegasynthError: ``root`` already records a checkpoint at ``step`` or later (never overwritten).
    """
    from megatron.core import dist_checkpointing

    from megasynth.model import cpu_compat

    path = checkpoint_dir(root, step)
    recorded = _recorded_step(root)
    if path.exists() and recorded is not None and step <= recorded:
        raise MegasynthError(f"{path}: refusing to overwrite a recorded checkpoint ({LATEST_FILE} is at step "
                             f"{recorded})")
    if _rank0() and path.exists():  # an unfinished save of an earlier attempt
        shutil.rmtree(path)
    _barrier()
    path.mkdir(parents=True, exist_ok=True)
    full = optimizer is not None
    with cpu_compat.cpu_device_mode():  # the distributed optimizer gathers its state with .cuda() tensors
        sd = _state_dict(_chunks(model), optimizer, scheduler, rng=full, is_loading=False)
        sd["iteration"] = step
        sd.update(common or {})
        dist_checkpointing.save(sd, str(path), sharded_strategy=save_strategy())
    _barrier()
    if _rank0():
        with atomic_path(Path(root) / LATEST_FILE) as tmp:
            tmp.write_text(f"{step}\n")
    _barrier()
    if _rank0():
        logger.info("saved checkpoint %s", path)
        if keep_last is not None:
            for old in prune_checkpoints(root, keep_last, keep_steps):
                logger.info("deleted checkpoint %s (keep_last_checkpoints=%d)", old, keep_last)
    _barrier()
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


# --------------------------------------------------------------------------------------------------
# Choosing a checkpoint to resume from; never deleting one
# --------------------------------------------------------------------------------------------------
def checkpoint_steps(root: str | Path) -> list[int]:
    """Steps of the ``iter_NNNNNNN`` directories in ``root``, newest first (``[]`` if ``root`` is missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _ITER.fullmatch(p.name))]
    return sorted(steps, reverse=True)


def _recorded_step(root: str | Path) -> Optional[int]:
    """The step in ``root/latest_checkpointed_iteration.txt``; None when the file is missing or not an integer."""
    try:
        return int((Path(root) / LATEST_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _one_line(e: BaseException) -> str:
    """``Type: message`` on one line; for torch's ``CheckpointException`` the first rank's own exception."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__


def check_checkpoint(path: str | Path) -> Optional[str]:
    """Why the checkpoint directory ``path`` cannot be resumed from, or None when it looks whole.

    Cheap (reads no tensor data): ``metadata.json`` is a dist_checkpointing config
    (``maybe_load_config``); ``common.pt`` exists where the layout has one (megatron-core < 0.19); for the
    ``torch_dist`` backend, torch DCP's ``.metadata`` loads and every file it names exists and is at least
    as long as the last byte range it names there; the common state loads (:func:`read_common`) and holds
    a full checkpoint (``opt_param_scheduler``) whose ``iteration`` is the directory's step. A directory that passes can still fail to load (bytes corrupted inside a
    shard): :func:`resume_or_restart` then falls back to an older one.

    Returns:
        A one-line reason (e.g. ``"metadata.json missing"``, ``"shard __0_1.distcp is 0 bytes, the index
        needs 1029301"``) or None.
    """
    from megatron.core.dist_checkpointing.core import maybe_load_config

    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    if not (path / "metadata.json").is_file():
        return "metadata.json missing"
    try:
        config = maybe_load_config(str(path))
    except Exception as e:  # any parse error makes the directory unreadable
        return f"metadata.json unreadable ({_one_line(e)})"
    # Layout of megatron-core < 0.19: common values in common.pt (metadata.json names its common_backend);
    # 0.19 keeps them inside the torch_dist shards (read_common tells the versions apart).
    if "common_backend" in read_json(path / "metadata.json") and not (path / "common.pt").is_file():
        return "common.pt missing"
    if config.sharded_backend == "torch_dist":
        from torch.distributed.checkpoint import FileSystemReader

        try:
            index = FileSystemReader(str(path)).read_metadata()
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
            return f".metadata (the shard index) unreadable ({_one_line(e)})"
        need: dict[str, int] = {}
        for info in index.storage_data.values():
            need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
        for name, size in sorted(need.items()):
            f = path / name
            if not f.is_file():
                return f"shard {name} missing"
            if f.stat().st_size < size:
                return f"shard {name} is {f.stat().st_size} bytes, the index needs {size}"
    try:
        common = read_common(path)
    except MegasynthError as e:  # e.g. the layout of a newer megatron-core
        return _one_line(e)
    except (Exception, *_load_errors()) as e:  # torch DCP's CheckpointException (the 0.19 layout reads
        return f"common state unreadable ({_one_line(e)})"  # shards here) is a BaseException
    if not isinstance(common, dict) or "opt_param_scheduler" not in common:
        return "weights-only checkpoint (no optimizer state in its common state)"
    m = _ITER.fullmatch(path.name)
    if m and common.get("iteration") != int(m.group(1)):
        return f"common state has iteration {common.get('iteration')!r}, not the directory's step {int(m.group(1))}"
    return None


def find_resume_checkpoint(root: str | Path, below: Optional[int] = None) -> tuple[Optional[int], list]:
    """The newest checkpoint of ``root`` that :func:`check_checkpoint` finds whole (this process only).

    Directories after the step recorded in ``latest_checkpointed_iteration.txt`` are unfinished saves and
    skipped; when that file is missing or unreadable every ``iter_*`` directory is a candidate.

    Args:
        root: a ``checkpoints`` directory.
        below: only consider steps before this one (the next candidate after a failed load).

    Returns:
        ``(step, skipped)``: the step (None if none is whole) and ``[(path, reason), ...]`` for each newer
        directory passed over, newest first.
    """
    root = Path(root)
    recorded = _recorded_step(root)
    skipped: list[tuple[Path, str]] = []
    for step in checkpoint_steps(root):
        if below is not None and step >= below:
            continue
        path = checkpoint_dir(root, step)
        if recorded is not None and step > recorded:
            skipped.append((path, f"newer than step {recorded} recorded in {LATEST_FILE} (its save did not finish)"))
            continue
        reason = check_checkpoint(path)
        if reason is None:
            return step, skipped
        skipped.append((path, reason))
    return None, skipped


def move_aside(run_dir: str | Path, paths: Optional[list] = None) -> Optional[Path]:
    """Move ``paths`` (default: every entry of ``run_dir`` but earlier ``.attempt-N`` folders and the run's
    records ``run.yaml`` and ``attempt.json``, :data:`megasynth.layout.RunLayout.RECORDS`) into a new
    ``run_dir/.attempt-N/`` (N one more than the largest there), keeping their paths relative to
    ``run_dir``. Renames only (nothing copied or deleted); call on one rank.

    Returns:
        The new ``.attempt-N`` folder, or None when there was nothing to move.
    """
    from megasynth.layout import RunLayout

    run_dir = Path(run_dir)
    if paths is None:
        entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
        paths = [p for p in entries if not p.name.startswith(ATTEMPT_PREFIX) and p.name not in RunLayout.RECORDS]
    paths = [Path(p) for p in paths if Path(p).exists()]
    if not paths:
        return None
    taken = [int(p.name[len(ATTEMPT_PREFIX):]) for p in run_dir.glob(ATTEMPT_PREFIX + "*")
             if p.name[len(ATTEMPT_PREFIX):].isdigit()]
    dest = run_dir / f"{ATTEMPT_PREFIX}{max(taken, default=0) + 1}"
    for p in paths:
        target = dest / p.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(p, target)
    return dest


def prune_checkpoints(root: str | Path, keep: int, keep_steps: Iterable[int] = ()) -> list[Path]:
    """Delete the ``iter_*`` directories of ``root`` older than its newest ``keep`` ones (call on one rank).

    Never deleted: the checkpoints of ``keep_steps`` (a WSD trunk's branch points,
    ``train.checkpoint.save_steps``), the checkpoint ``latest_checkpointed_iteration.txt`` names, the newest
    one that :func:`check_checkpoint` finds whole, and anything newer than that one; nothing at all when no
    checkpoint is whole.

    Returns:
        The deleted directories.

    Raises:
        MegasynthError: ``keep`` < 1.
    """
    if keep < 1:
        raise MegasynthError(f"train.checkpoint.keep_last_checkpoints: must be >= 1, got {keep}")
    root = Path(root)
    steps = checkpoint_steps(root)
    if len(steps) <= keep:
        return []
    newest_whole, _ = find_resume_checkpoint(root)
    if newest_whole is None:
        logger.warning("%s: no whole checkpoint, none deleted", root)
        return []
    protect = {newest_whole, _recorded_step(root), *keep_steps}
    deleted = []
    for step in steps[keep:]:
        if step < newest_whole and step not in protect:
            path = checkpoint_dir(root, step)
            shutil.rmtree(path)
            deleted.append(path)
    return deleted


def _load_errors() -> tuple:
    """Errors meaning "these checkpoint bytes cannot be loaded" (a fallback, not a bug or a settings mismatch)."""
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    return (CheckpointException, CheckpointingException, EOFError, OSError, RuntimeError, ValueError, KeyError,
            AttributeError, pickle.UnpicklingError)


def _broadcast(obj):
    """``obj`` of rank 0 on every rank (a no-op without a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _first_error(error: Optional[str]) -> Optional[str]:
    """The first rank's error (None when every rank succeeded); collective."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return error
    errors: list = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None), None)


def resume_or_restart(run_dir: str | Path, load: Callable[[Path], int], name: str = "") -> Optional[int]:
    """Resume the run in ``run_dir`` from its newest readable checkpoint, or prepare it to restart.

    Candidates come from :func:`find_resume_checkpoint` on rank 0 (broadcast, so all ranks agree); each is
    passed to ``load`` on every rank until one loads everywhere (a load that raises one of the errors
    of unreadable bytes — ``CheckpointException``, ``CheckpointingException``, ``EOFError``, ``OSError``,
    ``RuntimeError``, … — on any rank moves every rank on to the next older candidate). Checkpoints
    passed over are logged in one WARNING with their reasons and moved to ``run_dir/.attempt-N/checkpoints/``,
    and ``latest_checkpointed_iteration.txt`` is set to the step resumed from. Collective.

    Args:
        run_dir: ``runs/<run>``; checkpoints are in ``run_dir/checkpoints``.
        load: restores model, optimizer, scheduler, RNG from a checkpoint directory; returns its step.
            A :class:`MegasynthError` it raises (e.g. settings changed) is not a reason to fall back.
        name: the run's name for log lines.

    Returns:
        The step resumed from, or None when ``run_dir`` never recorded a checkpoint: then its old
        contents (if any) are moved to ``run_dir/.attempt-N/`` and the caller starts from step 0.

    Raises:
        MegasynthError: checkpoints were recorded (or one looked whole) but none loads: one line naming
            the checkpoints directory and each directory's reason; nothing is moved or deleted.
    """
    import torch.distributed as dist

    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    skipped: list[tuple[Path, str]] = []
    below, tried = None, False
    while True:
        step, more = _broadcast(find_resume_checkpoint(root, below) if _rank0() else None)
        skipped += more
        if step is None:
            break
        tried, path = True, checkpoint_dir(root, step)
        error = None
        try:
            got = load(path)
        except MegasynthError:
            raise
        except _load_errors() as e:
            error = f"failed to load ({_one_line(e)})"
        error = _first_error(error)
        if error is None:
            break
        skipped.append((path, error))
        below = step
    recorded = _broadcast((root / LATEST_FILE).exists() if _rank0() else None)
    label = f"{name}: " if name else ""
    if step is None and (recorded or tried):
        why = "; ".join(f"{p.name}: {r}" for p, r in skipped) or "no iter_* directory"
        raise MegasynthError(f"{root}: no readable checkpoint ({why}); nothing was deleted: repair one, or move "
                             f"{run_dir} away to restart the run")
    if _rank0():
        if step is None:
            dest = move_aside(run_dir)
            if dest is not None:
                logger.warning("%sno checkpoint was recorded in %s; its previous contents were moved to %s and the "
                               "run restarts from step 0", label, run_dir, dest)
        else:
            if skipped:
                dest = move_aside(run_dir, [p for p, _ in skipped])
                logger.warning("%sresuming from %s; skipped %s; moved to %s", label, checkpoint_dir(root, step).name,
                               "; ".join(f"{p.name} ({r})" for p, r in skipped), dest)
            if _recorded_step(root) != step:
                with atomic_path(root / LATEST_FILE) as tmp:
                    tmp.write_text(f"{step}\n")
    if dist.is_initialized():
        dist.barrier()
    return None if step is None else got
