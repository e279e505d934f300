"""Engines of SynthLLM (one per model, started on first need) and requests run shard by shard on them."""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from megasynth.generate.backends import Completion, Request, VllmEngine
from megasynth.generate.engines import EngineCache as _EngineCache
from megasynth.generate.engines import EngineFactory
from megasynth.utils import MegasynthError, Progress

logger = logging.getLogger("megasynth.generate")


def structured_sampling(schema: dict) -> dict:
    """Sampling fields that constrain the output to ``schema``: ``structured_outputs`` (vLLM >= 0.11,
    ``StructuredOutputsParams(json=…)``) or ``guided_decoding`` (older vLLM); ``{}`` if neither exists."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema, disable_any_whitespace=True)}
    except ImportError:
        pass
    try:  # pragma: no cover - older vLLM
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    except ImportError:  # pragma: no cover
        return {}


def engine_kwargs(gen_cfg) -> dict:
    """Extra ``vllm.LLM`` arguments SynthLLM wants: with structured output on, the xgrammar backend with
    no free whitespace inside the JSON (``structured_outputs_config.disable_any_whitespace``, an
    engine-level vLLM setting that needs an explicit backend; otherwise a constrained small model pads
    its JSON with whitespace until ``max_tokens``)."""
    s = gen_cfg.synthllm
    if not (s.enabled and s.structured_output):
        return {}
    return {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}


class EngineCache(_EngineCache):
    """:class:`megasynth.generate.engines.EngineCache` with SynthLLM's extra ``vllm.LLM`` arguments
    (:func:`engine_kwargs`) for the engines it starts itself."""

    def __init__(self, gen_cfg, factory: Optional[EngineFactory] = None, *, record_dir=None):
        super().__init__(gen_cfg, factory, record_dir=record_dir, **engine_kwargs(gen_cfg))


def run_requests(engine_fn: Callable[[], VllmEngine], items: dict[int, list[tuple[object, Request]]],
                  write: Callable[[int, list[tuple[object, Completion]]], None], label: str) -> dict:
    """Run every shard's requests in one continuous batch; ``write(k, [(meta, completion)])`` is called
    once per shard as soon as all its requests are done (at once for a shard without requests).

    If the engine fails on requests with structured output, they are rerun once without it.
    Returns ``wall_s``, ``output_tokens`` and ``structured_fallback`` (bool).
    """
    stats = {"wall_s": 0.0, "output_tokens": 0, "structured_fallback": False}
    for k, lst in items.items():
        if not lst:
            write(k, [])
    flat = [(k, meta, req) for k, lst in items.items() for meta, req in lst]
    if not flat:
        return stats
    engine = engine_fn()
    by_shard: dict[int, list[int]] = {}
    for j, (k, _, _) in enumerate(flat):
        by_shard.setdefault(k, []).append(j)
    results: dict[int, Completion] = {}
    written: set[int] = set()
    progress = Progress(f"synthllm {label}", total=len(flat), unit="requests")
    t0 = time.monotonic()

    def run(indices: list[int]) -> None:
        chosen = set(indices)
        remaining = {k: sum(1 for j in js if j in chosen) for k, js in by_shard.items() if k not in written}

        def on_done(x: int, c: Completion) -> None:
            j = indices[x]
            results[j] = c
            stats["output_tokens"] += c.output_tokens
            progress.update(1)
            k = flat[j][0]
            remaining[k] -= 1
            if remaining[k] == 0:
                try:
                    write(k, [(flat[i][1], results[i]) for i in by_shard[k]])
                except Exception as e:  # not the engine's failure: never retried
                    raise _WriteError() from e
                written.add(k)

        engine.generate([flat[j][2] for j in indices], on_done)

    logger.info("synthllm %s: %d requests in %d shard(s)", label, len(flat), len(by_shard))
    try:
        run(list(range(len(flat))))
    except _WriteError as e:
        raise e.__cause__ from None
    except MegasynthError:
        raise
    except Exception as e:
        structured = [j for j in range(len(flat)) if "structured_outputs" in flat[j][2].sampling
                      or "guided_decoding" in flat[j][2].sampling]
        if not structured:
            raise
        logger.warning("synthllm %s: engine failed with structured output (%s: %s); rerunning without it",
                       label, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        stats["structured_fallback"] = True
        for j in range(len(flat)):
            flat[j][2].sampling.pop("structured_outputs", None)
            flat[j][2].sampling.pop("guided_decoding", None)
        results.clear()
        todo = [j for j in range(len(flat)) if flat[j][0] not in written]
        run(todo)
    stats["wall_s"] = time.monotonic() - t0
    progress.close()
    return stats


class _WriteError(Exception):
    """Wraps an error raised while writing a shard (so it is not mistaken for an engine failure)."""


def engines_per_request_seed(engines: EngineCache) -> bool:
    return any(e.per_request_seed for e in engines.engines.values())
