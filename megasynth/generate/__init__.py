"""Synthetic corpora (HQ, QA, TXBK) generated from natural documents with an LLM through vLLM.

Chain: :mod:`~megasynth.generate.reader` (seeded excerpts) → :mod:`~megasynth.generate.prompts` →
:mod:`~megasynth.generate.backends` (vLLM offline) → :mod:`~megasynth.generate.filters` → shard writer in
:mod:`~megasynth.generate.pipeline`. The generator is built by :mod:`~megasynth.generate.generator_model`.
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
