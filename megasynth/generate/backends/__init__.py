"""Generation backends with one interface: ``generate(requests, on_done)`` over
:class:`~megasynth.generate.engine.Request`, streaming each finished
:class:`~megasynth.generate.engine.Completion` to ``on_done(index, completion)``.

- ``offline``: ``vllm.LLM`` in this process (:mod:`megasynth.generate.engine`).
- ``server``: OpenAI-compatible completion endpoints such as ``vllm serve``
  (:mod:`megasynth.generate.backends.server`).
"""
