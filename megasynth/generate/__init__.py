"""Synthetic corpora (HQ, QA, TXBK) generated from natural documents with an LLM through vLLM.

Chain: :mod:`~megasynth.generate.plan` (streamed, seeded, sharded excerpts; ranks) →
:mod:`~megasynth.generate.prompts` → :mod:`~megasynth.generate.engines` / :mod:`~megasynth.generate.backends`
(vLLM offline, OpenAI-compatible servers; one queue per generator) → :mod:`~megasynth.generate.filters` →
partial files (:mod:`~megasynth.generate.shards`) → near-dedup and shards in :mod:`~megasynth.generate.pipeline`.
The generator is built by :mod:`~megasynth.generate.generator_model`; :mod:`~megasynth.generate.shm` records
and removes what killed engines leave in ``/dev/shm``; :mod:`~megasynth.generate.serve` starts servers.
vLLM and transformers are imported only when the stage runs.
"""

from __future__ import annotations


def run_generate(cfg, layout, **kwargs) -> None:
    """Run the generate stage; see :func:`megasynth.generate.pipeline.run_generate`."""
    from megasynth.generate.pipeline import run_generate as _run

    _run(cfg, layout, **kwargs)


def generate_done(cfg, layout) -> bool:
    """The generate stage's completion; see :func:`megasynth.generate.pipeline.generate_done`."""
    from megasynth.generate.pipeline import generate_done as _done

    return _done(cfg, layout)


__all__ = ["generate_done", "run_generate"]
