"""``megasynth serve STUDY.yaml``: start the vLLM servers of a study's ``server`` generators on this node.

For every generator with ``backend: server`` (or those named by ``--generator``), each endpoint URL whose host
is this machine (``localhost``, ``127.0.0.1``, ``0.0.0.0``, this host's name) gets one ``launch/serve.sh``
(``vllm serve``) on the URL's port, with the generator's model directory (Gemma-3-270M built first when
``model`` is null), ``tensor_parallel_size``, ``dtype``, ``max_model_len``, ``max_num_seqs``, the study's
sampling seed, the served model name ``server.model`` (default: the generator's name) and its API key
variable. Endpoints on other hosts are listed with the command to run there. The endpoints are printed once
every server answers ``/health``; then the command waits, and SIGTERM/SIGINT stop the servers.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.generate")

SERVE_SH = Path(__file__).resolve().parents[2] / "launch" / "serve.sh"
_LOCAL = {"localhost", "127.0.0.1", "0.0.0.0", "::1"}


def _is_local(host: str) -> bool:
    names = _LOCAL | {socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0]}
    return host in names


def serve_commands(cfg, generators: Optional[list[str]] = None) -> list[tuple[str, str, list[str]]]:
    """``(generator, endpoint, argv)`` of the servers to start here; endpoints elsewhere get an empty argv.

    Raises:
        MegasynthError: no server generator (or an unknown ``--generator``), an endpoint without a port, a
            missing model directory, ``launch/serve.sh`` not found.
    """
    from megasynth.generate.generator_model import resolve_generator

    g = cfg.generation
    gens = g.generator_list()
    if generators:
        unknown = [n for n in generators if n not in {x.name for x in gens}]
        if unknown:
            raise MegasynthError(f"--generator: unknown generator {unknown[0]!r} (known: "
                                 f"{', '.join(x.name for x in gens)})")
    chosen = [(i, x) for i, x in enumerate(gens) if x.backend == "server" and (not generators or x.name in generators)]
    if not chosen:
        raise MegasynthError("generation.generators: no generator with backend: server to serve"
                             if g.generators else "generation.backend: not 'server'; nothing to serve")
    if not SERVE_SH.is_file():
        raise MegasynthError(f"{SERVE_SH}: launch/serve.sh not found (run megasynth serve from a source checkout)")
    out = []
    for i, x in chosen:
        where = f"generation.generators[{i}]" if g.generators else "generation"
        spec = resolve_generator(x.model, x.name, where=f"{where}.model")
        for j, url in enumerate(x.server.endpoints):
            u = urlsplit(url)
            if u.port is None:
                raise MegasynthError(f"{where}.server.endpoints[{j}]: {url!r} has no port to serve on")
            if not _is_local(u.hostname or ""):
                out.append((x.name, url, []))
                continue
            argv = ["bash", str(SERVE_SH), "--port", str(u.port), "--host",
                    "127.0.0.1" if u.hostname in ("localhost", "127.0.0.1") else "0.0.0.0",
                    "--tp", str(x.tensor_parallel_size), "--replicas", "1", "--dtype", x.dtype,
                    "--max-model-len", str(x.max_model_len), "--name", x.server.model or x.name]
            if x.server.api_key_env:
                argv += ["--api-key-env", x.server.api_key_env]
            argv += [str(spec.path), "--", "--max-num-seqs", str(x.max_num_seqs), "--seed", str(g.sampling.seed)]
            out.append((x.name, url, argv))
    return out


def serve(cfg, generators: Optional[list[str]] = None, dry_run: bool = False, start_timeout_s: float = 1800) -> int:
    """Start the servers (see the module docstring); return an exit status when they stop.

    Raises:
        MegasynthError: see :func:`serve_commands`; a server that exits before it answers (names its log).
    """
    plan = serve_commands(cfg, generators)
    for name, url, argv in plan:
        if not argv:
            print(f"{name}: {url} is on another host: run `megasynth serve STUDY.yaml --generator {name}` there")
        elif dry_run:
            print(f"{name}: {url}: {shlex.join(argv)}")
    if dry_run:
        return 0
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
    procs: list[tuple[str, str, subprocess.Popen]] = []

    def stop(*_):
        for _, _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, _, p in procs:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM,)}
    try:
        for name, url, argv in plan:
            if argv:
                logger.info("starting %s at %s: %s", name, url, shlex.join(argv))
                procs.append((name, url, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                          text=True, env=env)))
        t0 = time.monotonic()
        for name, url, p in procs:
            for line in p.stdout:
                sys.stderr.write(line)
                if line.startswith("endpoints:"):
                    break
                if time.monotonic() - t0 > start_timeout_s:
                    raise MegasynthError(f"{name}: the server for {url} did not answer within {start_timeout_s:.0f}s")
            else:
                raise MegasynthError(f"{name}: the server for {url} exited before it answered (status {p.wait()}); "
                                     "see its log in serve-logs/")
        print("endpoints: " + " ".join(url for _, url, _ in procs), flush=True)
        for _, _, p in procs:
            p.wait()
        return max((p.returncode or 0 for _, _, p in procs), default=0)
    except KeyboardInterrupt:
        return 130
    finally:
        stop()
        for s, h in old.items():
            signal.signal(s, h)
