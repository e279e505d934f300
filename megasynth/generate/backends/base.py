"""What every generation backend takes and returns: :class:`Request` in, :class:`Completion` out.

A backend object has ``generate(requests, on_done)`` (``on_done(i, completion)`` called once per request
as it finishes, in any order), ``shutdown()``, ``per_request_seed`` (whether each request's ``seed``
drives its sampling), ``settings`` (a dict for provenance) and ``start_s`` (seconds to start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Completion:
    """One finished request: generated ``text``, token counts (generator tokens), ``finish_reason``."""

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None


@dataclass
class Request:
    """One generation request: prompt token ids and vLLM sampling fields (``max_tokens``, ``seed`` …)."""

    prompt_token_ids: list[int]
    sampling: dict[str, Any]
