"""Synthetic corpora (HQ, QA, TXBK) generated from natural documents with an LLM through vLLM.

Chain: :mod:`~megasynth.generate.reader` (seeded excerpts) → :mod:`~megasynth.generate.prompts` →
:mod:`~megasynth.generate.engine` (vLLM) → :mod:`~megasynth.generate.filters` → shard writer in
:mod:`~megasynth.generate.pipeline`. The generator is built by :mod:`~megasynth.generate.model`.
vLLM and transformers are imported only when the stage runs.
"""

from __future__ import annotations


def run_generate(cfg, layout, **kwargs) -> None:
    """Run the generate stage; see :func:`megasynth.generate.pipeline.run_generate`."""
    from megasynth.generate.pipeline import run_generate as _run

    _run(cfg, layout, **kwargs)


__all__ = ["run_generate"]
