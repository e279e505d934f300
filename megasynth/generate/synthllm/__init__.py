"""SynthLLM concept-graph synthesis (Qin et al. 2025) as the synthetic source ``synthllm``.

Modules: :mod:`.scoring` (prefilter + rating parser), :mod:`.concepts` (extraction schema, tolerant
parser, normalisation), :mod:`.graph` (networkx co-occurrence graph, streaming build, save/load, stats),
:mod:`.sampling` (levels 1/2/3, weighted random walks), :mod:`.prompts`, :mod:`.quality` (diversity
report), :mod:`.stage` (:func:`run_synthllm`) with its :mod:`.steps`, :mod:`.engines` and :mod:`.manifest`.
vLLM and transformers are imported only when the stage runs.
"""

from __future__ import annotations


def run_synthllm(cfg, layout, **kwargs) -> None:
    """Run the SynthLLM stage; see :func:`megasynth.generate.synthllm.stage.run_synthllm`."""
    from megasynth.generate.synthllm.stage import run_synthllm as _run

    _run(cfg, layout, **kwargs)


__all__ = ["run_synthllm"]
