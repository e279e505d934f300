"""Generation backends: :mod:`.base` (the :class:`Request`/:class:`Completion` every backend speaks) and
:mod:`.offline` (vLLM's offline ``LLM`` engine in this process). vLLM is imported only when an engine starts."""

from megasynth.generate.backends.base import Completion, Request
from megasynth.generate.backends.offline import VllmEngine, engine_from_config, make_engine

__all__ = ["Completion", "Request", "VllmEngine", "engine_from_config", "make_engine"]
