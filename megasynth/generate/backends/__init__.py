"""Generation backends with one interface: ``generate(requests, on_done)`` over :class:`.base.Request`,
streaming each finished :class:`.base.Completion` to ``on_done(index, completion)``.

- :mod:`.base`: the :class:`Request`/:class:`Completion` every backend speaks;
- :mod:`.offline`: vLLM's offline ``LLM`` engine in this process;
- :mod:`.server`: OpenAI-compatible completion endpoints such as ``vllm serve``.

vLLM is imported only when an offline engine starts.
"""

from megasynth.generate.backends.base import Completion, Request
from megasynth.generate.backends.offline import VllmEngine, engine_from_config, make_engine

__all__ = ["Completion", "Request", "VllmEngine", "engine_from_config", "make_engine"]
