"""End to end: a tiny study through ``megasynth run`` (real corpora from packages, the real vLLM engine on a
tiny random generator, BPE tokenization into Megatron indexed datasets, blends, megatron-core training,
results, fits and report), killed with SIGKILL in the middle of generation, killed again after the first
training run, and rerun to completion with nothing duplicated."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megasynth.utils import is_done

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

MIXTURES = {"natural": {"sotu": 1.0}, "hq33": {"hq": 0.33, "sotu": 0.67}, "qa50": {"qa": 0.5, "sotu": 0.5},
            "txbk100": {"txbk": 1.0}}
TRAIN_ITERS, EVAL_INTERVAL = 12, 4


def _study_file(tmp_path: Path, generator_dir: Path) -> Path:
    study = {
        "name": "tiny", "study_dir": str(tmp_path / "study"), "seed": 11,
        "corpora": {
            "train": [{"name": "sotu", "loader": "sotu", "max_documents": 6}],
            "eval": [{"name": "wiki", "loader": "gensim_wiki", "max_documents": 6},
                     {"name": "lambada", "loader": "lambada", "max_documents": 40}],
        },
        "generation": {
            "styles": ["hq", "qa", "txbk"], "num_documents": 3, "max_input_tokens": 96,
            "model": str(generator_dir), "model_name": "tiny-random-llama", "max_model_len": 512,
            "max_num_seqs": 8, "shard_size": 2,
            # a random model writes noise: keep what it writes so every style has records
            "min_output_words": 1, "keep_truncated": True, "max_repeated_ngram_frac": 1.0,
            "sampling": {"max_tokens": 48, "temperature": 1.0, "seed": 5},
        },
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": k, "sources": v} for k, v in MIXTURES.items()],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": 64, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": TRAIN_ITERS,
                  "optimizer": {"lr_warmup_iters": 2}, "eval_interval": EVAL_INTERVAL, "eval_iters": 2,
                  "log_interval": 4},
        # one cosine run per mixture (no sweep): its evaluations along the way are the data-law points
        "report": {"bootstrap": 20, "schedule_complete_only": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _megasynth(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "megasynth.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _kill_when(proc: subprocess.Popen, done, what: str, timeout: float = 600) -> None:
    """SIGKILL ``proc``'s whole process group (vLLM's engine core too) as soon as ``done()`` is true."""
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_study_end_to_end_killed_and_rerun(tmp_path, tiny_generator_dir):
    study_file = _study_file(tmp_path, tiny_generator_dir)
    root = tmp_path / "study"
    synthetic = root / "synthetic"

    # First attempt: killed in the middle of generation, as soon as the first shard is complete.
    _kill_when(_megasynth("run", str(study_file)), lambda: any(synthetic.glob("*/shard-*.jsonl.done")),
               "a first generated shard")
    done_shards = {p: p.read_bytes() for p in sorted(synthetic.glob("*/shard-*.jsonl")) if is_done(p)}
    assert done_shards
    assert not all(is_done(synthetic / s / "manifest.json") for s in ("hq", "qa", "txbk")), "killed too late"
    assert not (root / "tokenized").exists()

    # Second attempt: generation completes (complete shards are kept as they are); killed as soon as the
    # first training run is complete.
    proc = _megasynth("run", str(study_file))
    _kill_when(proc, (root / "runs" / "natural" / "summary.json.done").exists, "the first training run")
    assert not (root / "results.csv").exists()
    first_summary = (root / "runs" / "natural" / "summary.json").read_bytes()
    shards_before = {p: p.read_bytes() for p in sorted(synthetic.rglob("shard-*.jsonl"))}
    assert {p: shards_before[p] for p in done_shards} == done_shards

    # Rerun to completion: finished work is skipped (generation never restarts vLLM), the rest completes.
    out = _finish(_megasynth("run", str(study_file)), timeout=900)
    assert "skip" in out.lower()
    assert (root / "runs" / "natural" / "summary.json").read_bytes() == first_summary
    assert {p: p.read_bytes() for p in sorted((root / "synthetic").rglob("shard-*.jsonl"))} == shards_before

    # Corpora: real text, eval sets disjoint from training.
    train_texts = {json.loads(l)["text"] for l in (root / "corpora" / "sotu.jsonl").read_text().splitlines()}
    for name in ("wiki", "lambada"):
        recs = [json.loads(l) for l in (root / "corpora" / f"{name}.jsonl").read_text().splitlines()]
        assert recs and all(set(r) == {"id", "text", "source"} for r in recs)
        assert not train_texts & {r["text"] for r in recs}

    # Synthetic corpora: unique ids, provenance, manifest counts equal the records kept.
    for style in ("hq", "qa", "txbk"):
        recs = [json.loads(l) for p in sorted((root / "synthetic" / style).glob("shard-*.jsonl"))
                for l in p.read_text().splitlines()]
        manifest = json.loads((root / "synthetic" / style / "manifest.json").read_text())
        assert len(recs) == manifest["counts"]["kept"] == 3
        assert len({r["id"] for r in recs}) == len(recs)
        assert {r["generator"] for r in recs} == {"tiny-random-llama"}

    # Tokenized datasets and mixtures.
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for name in ("sotu", "hq", "qa", "txbk", "wiki", "lambada"):
        stats = json.loads((root / "tokenized" / f"{name}.stats.json").read_text())
        ds = IndexedDataset(str(root / "tokenized" / f"{name}_text_document"))
        assert len(ds) == stats["documents"] > 0
        assert int(ds.sequence_lengths.sum()) == stats["tokens"]
    for name, sources in MIXTURES.items():
        mix = json.loads((root / "mixtures" / f"{name}.json").read_text())
        assert mix["requested_share"] == pytest.approx(sources)
        assert abs(sum(w for w, _ in mix["blend"]) - 1.0) < 1e-9

    # results.csv: one row per (run, budget, eval set), nothing duplicated or lost.
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["run"], int(r["tokens"]), r["eval_set"], r["metric"]) for r in rows]
    budgets = TRAIN_ITERS // EVAL_INTERVAL
    assert len(keys) == len(set(keys)) == len(MIXTURES) * budgets * 2 * 2  # loss and bpb per eval set
    assert {r["metric"] for r in rows} == {"loss", "bpb"}
    assert {r["mixture"] for r in rows} == set(MIXTURES)
    tokens_per_step = 8 * 64
    assert sorted({int(r["tokens"]) for r in rows}) == [s * tokens_per_step for s in range(4, 13, 4)]
    ratio = {r["mixture"]: float(r["synthetic_ratio"]) for r in rows}
    assert ratio == pytest.approx({"natural": 0.0, "hq33": 0.33, "qa50": 0.5, "txbk100": 1.0})
    assert all(float(r["loss"]) > 0 for r in rows)

    # Fits and report.
    fits = json.loads((root / "fits" / "data_law.json").read_text())
    assert len(fits["fits"]) == len(MIXTURES) * 2
    report = (root / "report" / "report.md").read_text()
    for name in MIXTURES:
        assert name in report
    for png in ("loss_vs_tokens.png", "final_loss.png"):
        assert (root / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A third run does nothing and changes nothing.
    results = (root / "results.csv").read_bytes()
    _finish(_megasynth("run", str(study_file)), timeout=300)
    assert (root / "results.csv").read_bytes() == results
