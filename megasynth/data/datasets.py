"""megatron-core GPT datasets over the study's indexed datasets (training mixtures and eval sets).

A training run reads a *blend* — Megatron's ``(prefixes, weights)`` pair, prefix = path of
``<prefix>.bin``/``<prefix>.idx`` without the suffix — through megatron-core's
``BlendedMegatronDatasetBuilder``: one ``GPTDataset`` per prefix (documents packed into samples of
``seq_length + 1`` tokens, shuffled with ``seed``), combined by a ``BlendedDataset`` whose
``dataset_index`` says which prefix each sample comes from. All of a prefix's documents go to the
training split (``split="100,0,0"``); evaluation sets are separate prefixes built the same way with
:func:`build_gpt_datasets` (``data_path=...``), so their samples are fixed by the seed.

Each sample is a dict of ``tokens`` ``[s]``, ``labels`` ``[s]`` (tokens shifted by one),
``loss_mask`` ``[s]`` (float, 0 on padding) and ``position_ids`` ``[s]`` (int64); ``s = seq_length``.
Megatron caches its sample/shuffle/blending indices as ``.npy`` files in ``cache_dir`` (keyed by a hash
of the config), so rebuilding the same datasets is fast and deterministic.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional

from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.data")


def _check_prefix(prefix: str, where: str) -> None:
    for ext in (".bin", ".idx"):
        if not Path(f"{prefix}{ext}").is_file():
            raise MegasynthError(f"{where}: indexed dataset not found: {prefix}{ext}")


def _normalise_blend(blend, data_path) -> tuple[list[str], Optional[list[float]]]:
    if (blend is None) == (data_path is None):
        raise MegasynthError("build_gpt_datasets: give exactly one of blend or data_path")
    if data_path is not None:
        prefixes, weights = [str(data_path)], None
        _check_prefix(prefixes[0], "data_path")
        return prefixes, weights
    try:
        prefixes, weights = blend
    except (TypeError, ValueError):
        raise MegasynthError("blend: expected (prefixes, weights)") from None
    prefixes = [str(p) for p in prefixes]
    weights = [float(w) for w in weights]
    if not prefixes or len(prefixes) != len(weights):
        raise MegasynthError(f"blend: {len(prefixes)} prefixes but {len(weights)} weights")
    if len(set(prefixes)) != len(prefixes):
        raise MegasynthError("blend: duplicate prefix")
    for i, (p, w) in enumerate(zip(prefixes, weights)):
        if not w > 0:
            raise MegasynthError(f"blend[{i}]: weight must be > 0, got {w} ({p})")
        _check_prefix(p, f"blend[{i}]")
    return prefixes, weights


def build_gpt_datasets(blend: tuple[list[str], list[float]] | None, data_path: str | None, tokenizer,
                       seq_length: int, num_samples: int, seed: int, cache_dir: str | os.PathLike):
    """Build the training dataset of a blend (or of one prefix) with megatron-core.

    Args:
        blend: ``(prefixes, weights)`` in Megatron's format; weights are relative sampling weights
            (> 0; megatron normalises them). Mutually exclusive with ``data_path``.
        data_path: a single prefix (an eval set, or a one-source mixture).
        tokenizer: a megatron-core tokenizer with ``eod`` and ``pad``
            (:class:`megasynth.data.tokenizer.MegasynthTokenizer`).
        seq_length: tokens per sample (the sample reads ``seq_length + 1`` tokens).
        num_samples: samples (sequences, not tokens) the dataset must provide; prefixes are re-read for
            as many epochs as needed.
        seed: shuffling and blending seed.
        cache_dir: directory for megatron's index cache (created).

    Returns:
        ``BlendedDataset`` for a blend of two or more prefixes, otherwise a ``GPTDataset``;
        ``len(ds) >= num_samples``; ``ds[i]`` is a dict of ``[s]`` tensors (see module docstring).

    Raises:
        MegasynthError: both or neither of blend/data_path, missing ``.bin``/``.idx``, non-positive
            weight, ``seq_length``/``num_samples`` <= 0, a prefix with too few tokens for one sample.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    from megasynth.data.qa import LossMaskedGPTDataset  # GPTDataset + QA prefixes' answer-only loss masks

    if seq_length <= 0:
        raise MegasynthError(f"train.seq_length: must be > 0, got {seq_length}")
    if num_samples <= 0:
        raise MegasynthError(f"num_samples: must be > 0, got {num_samples}")
    prefixes, weights = _normalise_blend(blend, data_path)
    for p in prefixes:
        _check_min_tokens(p, seq_length)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split="100,0,0",
        path_to_cache=str(cache_dir),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mmap_bin_files=True,
    )
    mlog = logging.getLogger("megatron.core.datasets")
    level = mlog.level
    mlog.setLevel(max(level, logging.WARNING))  # megatron logs every index build at INFO
    try:
        with _process_group():
            train, _, _ = BlendedMegatronDatasetBuilder(LossMaskedGPTDataset, [num_samples, 0, 0], lambda: True,
                                                        config).build()
    finally:
        mlog.setLevel(level)
    if train is None or len(train) < num_samples:
        raise MegasynthError(f"build_gpt_datasets: megatron built {0 if train is None else len(train)} samples, "
                             f"needed {num_samples} ({', '.join(prefixes)})")
    return train


@contextlib.contextmanager
def _process_group():
    """A one-process gloo group (in-memory store) while megatron builds indices, if none exists.

    megatron-core's ``BlendedDataset`` asks ``torch.distributed`` for the rank to decide who writes the
    index cache; outside training (the ``mix`` stage) no process group exists yet.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _check_min_tokens(prefix: str, seq_length: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix, mmap=True)
    n = int(ds.sequence_lengths.sum()) if len(ds) else 0
    if n < seq_length + 1:
        raise MegasynthError(f"{prefix}.bin: {n} tokens, fewer than one sample of seq_length + 1 = {seq_length + 1}")


def realised_token_shares(blend: tuple[list[str], list[float]], tokenizer, seq_length: int, num_samples: int,
                          seed: int, cache_dir: str | os.PathLike) -> dict[str, float]:
    """Share of the ``num_samples`` training samples drawn from each prefix of ``blend``.

    Samples all hold ``seq_length`` tokens, so sample shares are token shares. Read from the
    ``dataset_index`` of megatron-core's ``BlendedDataset`` (the same datasets training builds, with
    the same arguments); a one-prefix blend gives ``{prefix: 1.0}``.

    Returns:
        ``{prefix: share}`` over the blend's prefixes (shares sum to 1).

    Raises:
        MegasynthError: as :func:`build_gpt_datasets`.
    """
    ds = build_gpt_datasets(blend, None, tokenizer, seq_length, num_samples, seed, cache_dir)
    prefixes = [str(p) for p in blend[0]]
    index = getattr(ds, "dataset_index", None)
    if index is None:  # a single GPTDataset
        return {prefixes[0]: 1.0}
    counts = Counter(int(i) for i in index[:num_samples])
    return {p: counts.get(i, 0) / num_samples for i, p in enumerate(prefixes)}
