"""Engines of the generate stage: one per generator, started on first need, shut down (and cleaned up) at the end.

:func:`start_engine` builds the backend a :class:`~megasynth.config.GeneratorConfig` names: ``offline``
(:func:`~megasynth.generate.backends.offline.make_engine`, its ``/dev/shm`` segments recorded in the study's
``engines/`` directory, :mod:`megasynth.generate.shm`) or ``server``
(:func:`~megasynth.generate.backends.server.make_server_engine`, which checks that the endpoints answer).
:class:`EngineCache` holds them for the styles and SynthLLM.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from megasynth.generate.generator_model import GeneratorSpec

logger = logging.getLogger("megasynth.generate")

EngineFactory = Callable[[GeneratorSpec], object]


def start_engine(gen, spec: GeneratorSpec, seed: int, *, record_dir: Optional[Path] = None,
                 where: str = "generation", **llm_kwargs):
    """Start the engine of generator ``gen`` (a resolved :class:`~megasynth.config.GeneratorConfig`).

    Args:
        gen: the generator (``backend``, ``server``, ``dtype``, ``tensor_parallel_size``, ``max_model_len``,
            ``max_num_seqs``).
        spec: its resolved model directory.
        seed: the engine seed (``generation.sampling.seed``).
        record_dir: where an offline engine's ``/dev/shm`` record goes (``None``: not recorded).
        where: dotted config prefix of ``gen`` for errors (``generation`` or ``generation.generators[i]``).
        llm_kwargs: extra ``vllm.LLM`` arguments (offline only).

    Raises:
        MegasynthError: vllm missing; a server endpoint unreachable after its retries (named), a key refused.
    """
    if gen.backend == "server":
        from megasynth.generate.backends.server import make_server_engine

        return make_server_engine(gen.server, where=f"{where}.server")
    from megasynth.generate.backends.offline import engine_from_config
    from megasynth.generate.shm import EngineShm

    rec = EngineShm(record_dir) if record_dir is not None else None
    if rec is not None:
        rec.start()
    try:
        eng = engine_from_config(gen, spec.path, seed, **llm_kwargs)
    except BaseException:
        if rec is not None:  # a failed or interrupted start: vLLM has stopped what it started
            rec.started(f"{spec.name} (failed start)")
            rec.release()
        raise
    if rec is not None:
        rec.started(f"{spec.name} {spec.path}")
    eng.shm_record = rec
    return eng


def shutdown_engine(engine) -> None:
    """Shut ``engine`` down; then remove the ``/dev/shm`` segments it recorded and left (if any)."""
    try:
        engine.shutdown()
    finally:
        rec = getattr(engine, "shm_record", None)
        if rec is not None:
            rec.release()


class EngineCache:
    """One engine per generator (keyed by name and model directory), created on first use.

    ``factory`` (tests pass one that returns a shared engine) replaces :func:`start_engine`; engines from it
    are the caller's to shut down. Without it only one engine lives at a time (starting another shuts the
    previous one down: one model's weights in memory) and :meth:`close` shuts them down.

    Args:
        gen_cfg: the ``generation`` section; a spec whose name is one of its generators is started with that
            generator's settings, any other (SynthLLM's answer model) offline with ``generation.*`` settings.
        factory: optional replacement of :func:`start_engine`.
        record_dir: ``engines/`` of the study, for the offline engines' ``/dev/shm`` records.
        llm_kwargs: extra ``vllm.LLM`` arguments of offline engines.
    """

    def __init__(self, gen_cfg, factory: Optional[EngineFactory] = None, *, record_dir: Optional[Path] = None,
                 **llm_kwargs):
        self.gen_cfg, self.factory, self.record_dir, self.llm_kwargs = gen_cfg, factory, record_dir, llm_kwargs
        self.engines: dict[tuple[str, str], object] = {}
        self.settings: dict[str, dict] = {}

    def _generator(self, spec: GeneratorSpec):
        gens = self.gen_cfg.generator_list()
        for i, g in enumerate(gens):
            if g.name == spec.name:
                return g, ("generation" if not self.gen_cfg.generators else f"generation.generators[{i}]")
        from megasynth.config import GeneratorConfig

        g = GeneratorConfig(name=spec.name, model=str(spec.path))
        for f in ("dtype", "tensor_parallel_size", "max_model_len", "max_num_seqs", "prompt_format"):
            setattr(g, f, getattr(self.gen_cfg, f))
        return g, "generation"

    def get(self, spec: GeneratorSpec):
        key = (spec.name, str(spec.path))
        if key not in self.engines:
            if self.factory is not None:
                eng = self.factory(spec)
            else:
                self.close()
                gen, where = self._generator(spec)
                eng = start_engine(gen, spec, self.gen_cfg.sampling.seed, record_dir=self.record_dir, where=where,
                                   **(self.llm_kwargs if gen.backend == "offline" else {}))
            self.engines[key] = eng
            self.settings[key[0] if key[0] not in self.settings else f"{key[0]} {key[1]}"] = \
                eng.settings | {"start_s": round(eng.start_s, 2)}
        return self.engines[key]

    def close(self) -> None:
        """Shut down the engines this cache started (none of a caller's ``factory``)."""
        if self.factory is None:
            engines, self.engines = list(self.engines.values()), {}
            for eng in engines:
                shutdown_engine(eng)
