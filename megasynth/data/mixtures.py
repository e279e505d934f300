"""Mixtures (named sources with token shares) → megatron-core blends, and the ``mix`` stage.

A mixture ``{source: share}`` says which share of the training *tokens* comes from each source.
megatron-core's ``GPTDataset`` cuts every source into samples of exactly ``seq_length`` (+1) tokens,
so a sample share equals a token share, and the share can be passed unchanged as the weight of
``BlendedMegatronDatasetConfig.blend = (prefixes, weights)``; ``BlendedDataset`` then draws
samples from each source in proportion to its weight.

``mixtures/<mix>.json`` (docs/CONTRACTS.md) records, besides the blend (data prefixes relative to the study
root, so a study directory can be copied or moved; :func:`read_mixture` resolves them), the training budget
``budget_tokens = train_iters · global_batch_size · seq_length``, each source's size in tokens,
the epochs each source is repeated at that budget (``share · budget_tokens / source_tokens``),
and the share megatron-core's ``BlendedDataset`` actually realises for this budget.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from megasynth.utils import MegasynthError, is_done, mark_done, read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import StudyConfig, TrainConfig
    from megasynth.layout import StudyLayout

logger = logging.getLogger("megasynth.data")

MAX_EPOCHS = 4.0
"""Repeating a source more often than this draws a warning: Muennighoff et al. 2023 ("Scaling
Data-Constrained Language Models") find up to ~4 epochs of repeated data almost as good as new data,
with quickly diminishing returns beyond."""


def mixture_to_blend(sources: dict[str, float], prefixes: dict[str, str]) -> tuple[list[str], list[float]]:
    """Turn token shares of named sources into a megatron-core blend ``(prefixes, weights)``.

    ``GPTDataset`` samples are fixed ``seq_length``-token sequences, so a source's share of samples
    equals its share of tokens: the weights are the token shares, normalised to sum to 1. Sources
    with zero share are dropped (megatron-core would still build their indices).

    Args:
        sources: source name -> share of training tokens (>= 0, not all 0).
        prefixes: source name -> Megatron data prefix (path without ``.bin``/``.idx``).

    Returns:
        ``(prefixes, weights)`` in the order of ``sources``, the format of
        ``BlendedMegatronDatasetConfig.blend``.

    Raises:
        MegasynthError: a negative/NaN share, all shares zero, or a source without a prefix.
    """
    paths: list[str] = []
    weights: list[float] = []
    for src, share in sources.items():
        if not isinstance(share, (int, float)) or math.isnan(share) or share < 0:
            raise MegasynthError(f"sources.{src}: share must be a number >= 0, got {share!r}")
        if share == 0:
            continue
        if src not in prefixes:
            raise MegasynthError(f"sources.{src}: no tokenized data prefix for this source")
        paths.append(str(prefixes[src]))
        weights.append(float(share))
    total = sum(weights)
    if total <= 0:
        raise MegasynthError("sources: all shares are zero")
    return paths, [w / total for w in weights]


def mixture_report(name: str, sources: dict[str, float], prefixes: dict[str, str], source_tokens: dict[str, int],
                   budget_tokens: int, realised_share: dict[str, float] | None = None) -> dict:
    """The ``mixtures/<mix>.json`` record (without realised shares unless given).

    ``epochs[src] = requested_share[src] · budget_tokens / source_tokens[src]`` (0 for unused sources);
    a warning is added (and logged) for each source repeated more than :data:`MAX_EPOCHS` times.

    Raises:
        MegasynthError: as :func:`mixture_to_blend`; a used source with no tokens or no token count.
    """
    paths, weights = mixture_to_blend(sources, prefixes)
    by_prefix = dict(zip(paths, weights))
    requested = {src: by_prefix.get(str(prefixes.get(src)), 0.0) if sources[src] > 0 else 0.0 for src in sources}
    epochs: dict[str, float] = {}
    warnings: list[str] = []
    for src, share in requested.items():
        if share == 0:
            epochs[src] = 0.0
            continue
        n = source_tokens.get(src)
        if not n:
            raise MegasynthError(f"mixtures.{name}.sources.{src}: source has no tokens (tokenized/{src}.stats.json)")
        epochs[src] = share * budget_tokens / n
        if epochs[src] > MAX_EPOCHS:
            msg = (f"{name}: source {src!r} is repeated {epochs[src]:.1f} times ({share:.0%} of {budget_tokens:,} "
                   f"tokens from {n:,} tokens), more than {MAX_EPOCHS:g} epochs")
            warnings.append(msg)
            logger.warning("mixture %s", msg)
    return {
        "name": name,
        "sources": dict(sources),
        "blend": [[w, p] for p, w in zip(paths, weights)],
        "budget_tokens": budget_tokens,
        "source_tokens": {src: int(source_tokens.get(src, 0)) for src in sources},
        "requested_share": requested,
        "realised_share": dict(realised_share) if realised_share is not None else dict(requested),
        "epochs": epochs,
        "warnings": warnings,
    }


def run_mix(cfg: "StudyConfig", layout: "StudyLayout") -> None:
    """The ``mix`` stage: write ``mixtures/<mix>.json`` for every mixture the study trains
    (:attr:`~megasynth.config.StudyConfig.written_mixtures`: ``mixtures:``, or a sweep's named and ratio-grid
    mixtures), skipping complete ones.

    The realised share is measured on megatron-core's ``BlendedDataset`` built for the largest training
    budget of the mixture (``train_iters · global_batch_size`` samples of ``seq_length`` tokens; a sweep's
    largest budget, :meth:`~megasynth.config.StudyConfig.mixture_train_samples`) through
    :func:`megasynth.data.datasets.realised_token_shares`; epochs are per that budget.

    Raises:
        MegasynthError: a source of a mixture is not tokenized (run ``megasynth preprocess``).
    """
    tokenizer = None
    for mix in cfg.written_mixtures:
        if is_done(layout.mixture(mix.name)):
            _check_sources(layout.mixture(mix.name), read_json(layout.mixture(mix.name)), mix.sources)
            logger.info("mixture %s: complete, skipping", mix.name)
            continue
        where = next((f"mixtures[{j}]" for j, m in enumerate(cfg.mixtures) if m.name == mix.name),
                     f"sweep.ratios ({mix.name})")
        if tokenizer is None:
            from megasynth.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(cfg.tokenizer, layout)
        # the largest run of the mixture (a sweep's largest budget)
        write_mixture(layout, mix.name, mix.sources, cfg.train, tokenizer, where,
                      num_samples=cfg.mixture_train_samples(mix.name))


def write_mixture(layout: "StudyLayout", name: str, sources: dict[str, float], train: "TrainConfig", tokenizer,
                  where: str = "mixture", *, num_samples: int | None = None) -> dict:
    """Write ``mixtures/<name>.json`` (+ marker) for ``sources`` at the budget of ``train`` (skipped when complete
    with the same sources); return the record.

    The realised share is measured on megatron-core's ``BlendedDataset`` built for ``num_samples`` samples of
    ``seq_length`` tokens (default: ``train``'s full budget, ``train_iters · global_batch_size``).

    Raises:
        MegasynthError: a source is not tokenized (``<where>.sources.<src>``), a complete file of other sources.
    """
    out = layout.mixture(name)
    if is_done(out):
        rec = read_json(out)
        _check_sources(out, rec, sources)
        return rec
    t = train
    prefixes: dict[str, str] = {}
    source_tokens: dict[str, int] = {}
    for src in sources:
        prefix = layout.tokenized_prefix(src)
        if not is_done(prefix):
            raise MegasynthError(f"{where}.sources.{src}: not tokenized yet (run `megasynth preprocess`)")
        prefixes[src] = layout.relative(prefix)
        source_tokens[src] = int(read_json(layout.tokenized_stats(src))["tokens"])
    num_samples = t.train_samples if num_samples is None else num_samples
    record = mixture_report(name, sources, prefixes, source_tokens, num_samples * t.seq_length)
    blend = ([str(layout.resolve(p)) for _, p in record["blend"]], [w for w, _ in record["blend"]])
    realised_by_prefix = _realised(blend, tokenizer, t.seq_length, num_samples, t.seed,
                                   str(layout.tokenized_cache))
    realised_by_prefix = {layout.relative(p): v for p, v in realised_by_prefix.items()}
    realised = {src: _lookup(realised_by_prefix, src, prefixes[src]) if record["requested_share"][src] > 0
                else 0.0 for src in sources}
    record["realised_share"] = realised
    record["samples"] = num_samples
    record["seq_length"] = t.seq_length
    write_json(out, record)
    mark_done(out)
    logger.info("mixture %s: %s", name, ", ".join(
        f"{s} {record['requested_share'][s]:.3f} (realised {realised[s]:.3f}, {record['epochs'][s]:.2f} epochs)"
        for s in sources))
    return record


def mix_done(cfg: "StudyConfig", layout: "StudyLayout") -> bool:
    """Whether every mixture file of ``cfg`` is complete (the stage's completion).

    Raises:
        MegasynthError: a complete mixture file was written for other shares than the study's.
    """
    if not all(is_done(layout.mixture(m.name)) for m in cfg.written_mixtures):
        return False
    for m in cfg.written_mixtures:
        _check_sources(layout.mixture(m.name), read_json(layout.mixture(m.name)), m.sources)
    return True


def _realised(blend: tuple[list[str], list[float]], tokenizer, seq_length: int, num_samples: int, seed: int,
              cache_dir: str) -> dict[str, float]:
    """Realised token share per prefix of ``blend`` from megatron-core's BlendedDataset."""
    from megasynth.data.datasets import realised_token_shares

    shares = realised_token_shares(blend, tokenizer, seq_length, num_samples, seed, cache_dir)
    return {str(k): float(v) for k, v in shares.items()}


def _lookup(shares: dict[str, float], src: str, prefix: str) -> float:
    """A source's share from a dict keyed by its prefix (as in the blend) or by its source name."""
    for key in (prefix, src):
        if key in shares:
            return shares[key]
    raise MegasynthError(f"realised_token_shares: no share for source {src!r} ({prefix})")


def read_mixture(layout: "StudyLayout", name: str, sources: dict[str, float] | None = None) -> dict:
    """Read ``mixtures/<name>.json`` (written by the ``mix`` stage) and check its blend.

    Args:
        sources: the shares the caller expects (a run's ``mixture.sources``); a file written for other
            shares is refused.

    Returns:
        The mixture record with ``blend`` as Megatron's ``(prefixes, weights)`` under ``"_blend"``, the
        prefixes resolved against the study root (absolute prefixes are kept as they are).

    Raises:
        MegasynthError: file missing or incomplete (no marker), malformed ``blend``, other ``sources``.
    """
    path = layout.mixture(name)
    if not path.is_file() or not is_done(path):
        raise MegasynthError(f"{path}: mixture not found or incomplete (run the mix stage first)")
    rec = read_json(path)
    blend = rec.get("blend")
    if not isinstance(blend, list) or not blend:
        raise MegasynthError(f"{path}: 'blend' must be a non-empty list of [weight, prefix]")
    prefixes, weights = [], []
    for i, item in enumerate(blend):
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], (int, float))
                or not isinstance(item[1], str)):
            raise MegasynthError(f"{path}: blend[{i}] must be [weight, prefix], got {item!r}")
        weights.append(float(item[0]))
        prefixes.append(str(layout.resolve(item[1])))
    if sources is not None:
        _check_sources(path, rec, sources)
    rec["_blend"] = (prefixes, weights)
    return rec


def _check_sources(path, rec: dict, sources: dict[str, float]) -> None:
    """Refuse a mixture file written for other shares than ``sources`` (the study's mixture changed)."""
    if rec.get("sources") != dict(sources):
        raise MegasynthError(f"{path}: written for sources {rec.get('sources')}, the study now has {dict(sources)}; "
                             f"give the changed mixture a new name (or delete {path} and rerun the mix stage)")
