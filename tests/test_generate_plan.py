"""The generate stage's plan, ranks, partial files, /dev/shm records, sources and bad input (no engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from megasynth.config import StudyConfig
from megasynth.generate.plan import DocumentOrder, GenerationPlan, build_offsets, rank_shards, resolve_rank
from megasynth.generate.shards import PartialShard
from megasynth.utils import MegasynthError

from conftest import PROSE  # noqa: E402  (tests/ is on sys.path under pytest)


def _corpus(path, n=9):
    docs = [{"id": f"doc{i}", "text": "\n\n".join(PROSE[(i + j) % len(PROSE)] for j in range(1 + i % 4))}
            for i in range(n)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return docs


# ------------------------------------------------------------------------------------------ order and offsets
def test_document_order_is_a_seeded_permutation():
    for n in (0, 1, 2, 3, 7, 64, 1000, 4099):
        got = DocumentOrder(n, 5)(np.arange(n)).tolist() if n else []
        assert sorted(got) == list(range(n))
    a, b = DocumentOrder(1000, 1)(np.arange(1000)), DocumentOrder(1000, 2)(np.arange(1000))
    assert (a == DocumentOrder(1000, 1)(np.arange(1000))).all() and (a != b).any()
    assert (a[:10] != np.arange(10)).any()  # not the identity
    # any process computes any position alone
    assert DocumentOrder(1000, 1)(np.array([17, 3])).tolist() == [a[17], a[3]]


def test_offsets_skip_blank_lines_and_rebuild_when_the_corpus_changes(tmp_path, monkeypatch):
    import megasynth.generate.plan as plan

    monkeypatch.setattr(plan, "_READ_BYTES", 11)  # lines cross block boundaries
    lines = [json.dumps({"id": i, "text": "w" * (i * 7)}) for i in range(6)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(lines[0] + "\n\n  \n" + "\n".join(lines[1:]))  # blank lines, no final newline
    off = build_offsets(corpus, tmp_path / "o.npy")
    raw = corpus.read_bytes()
    assert [json.loads(raw[o:].split(b"\n", 1)[0])["id"] for o in off] == list(range(6))
    corpus.write_text("\n".join(lines[:3]) + "\n")
    assert len(build_offsets(corpus, tmp_path / "o.npy")) == 3
    with pytest.raises(MegasynthError, match="not found"):
        build_offsets(tmp_path / "none.jsonl", tmp_path / "n.npy")


def test_plan_shards_modes_and_growth(tmp_path, tiny_hf_tokenizer):
    docs = _corpus(tmp_path / "c.jsonl")
    off = build_offsets(tmp_path / "c.jsonl", tmp_path / "o.npy")
    mk = lambda **kw: GenerationPlan(tmp_path / "c.jsonl", off, seed=3, shard_size=2, max_input_tokens=24, **kw)
    full = mk()
    assert full.mode == "corpus" and full.limit == 9 and full.num_shards == 5
    ex = [e for k in range(full.num_shards) for e in full.excerpts(k, tiny_hf_tokenizer)]
    # every excerpt of every document, exactly once, each within the token limit
    assert sorted({e.doc_id for e in ex}) == sorted(d["id"] for d in docs)
    assert len({(e.doc_id, e.chunk) for e in ex}) == len(ex) > len(docs)
    assert all(len(tiny_hf_tokenizer(e.text, add_special_tokens=False)["input_ids"]) <= 24 for e in ex)
    assert all(e.shard == e.position // 2 for e in ex)
    # a smaller max_documents is a prefix of the same plan
    part = mk(max_documents=4)
    assert part.num_shards == 2
    assert [e for k in range(2) for e in part.excerpts(k, tiny_hf_tokenizer)] == [e for e in ex if e.shard < 2]
    # sample mode: one seeded excerpt per document, and the same document order
    sample = mk(num_documents=5)
    s = [e for k in range(sample.num_shards) for e in sample.excerpts(k, tiny_hf_tokenizer)]
    assert [e.doc for e in s] == [e.doc for e in ex if e.chunk == 0][:5] and len(s) == 5
    assert s == [e for k in range(3) for e in mk(num_documents=5).excerpts(k, tiny_hf_tokenizer)]
    assert {(e.doc_id, e.chunk, e.text) for e in s} <= {(e.doc_id, e.chunk, e.text) for e in ex}


# ------------------------------------------------------------------------------------------ ranks
def test_resolve_rank_precedence_and_errors():
    assert resolve_rank(env={}) == (0, 1)
    assert resolve_rank(1, 3, env={"RANK": "0", "WORLD_SIZE": "2"}) == (1, 3)
    assert resolve_rank(env={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                             "RANK": "0", "WORLD_SIZE": "8"}) == (2, 4)
    assert resolve_rank(env={"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    with pytest.raises(MegasynthError, match=r"^--rank/--world-size: rank 2 is not in 0..1 \(world size 2\)$"):
        resolve_rank(2, 2)
    with pytest.raises(MegasynthError, match="SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT: rank 4"):
        resolve_rank(env={"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(MegasynthError, match="both or neither"):
        resolve_rank(1, None)
    assert rank_shards(10, 1, 3) == [1, 4, 7]
    assert sorted(k for r in range(3) for k in rank_shards(10, r, 3)) == list(range(10))


# ------------------------------------------------------------------------------------------ partial files
def test_partial_shard_drops_a_torn_line_keeps_each_record_once_and_locks(tmp_path):
    path = tmp_path / "partial-00000.jsonl"
    p = PartialShard(path).open()
    p.append({"key": "0:0", "reason": None})
    p.append({"key": "0:1", "reason": "empty"})
    p.append({"key": "0:0", "reason": "ignored: once only"})
    with pytest.raises(MegasynthError, match="another process is generating this shard"):
        PartialShard(path).open()
    p.close()
    with open(path, "ab") as f:
        f.write(b'{"key": "0:2", "reas')  # a write cut short by kill -9
    q = PartialShard(path).open()
    assert list(q.entries) == ["0:0", "0:1"] and q.entries["0:0"]["reason"] is None and q.torn_bytes == 20
    q.append({"key": "0:2", "reason": None})
    q.close()
    assert [json.loads(l)["key"] for l in path.read_text().splitlines()] == ["0:0", "0:1", "0:2"]
    path.write_text('{"key": "0:0"}\nnot json\n{"key": "0:1"}\n')
    with pytest.raises(MegasynthError, match=r"partial-00000.jsonl:2: malformed record"):
        PartialShard(path).open()


# ------------------------------------------------------------------------------------------ /dev/shm records
def test_shm_cleanup_removes_only_recorded_segments_of_dead_engines(tmp_path):
    from megasynth.generate.shm import EngineShm, cleanup_dead_engines, process_start_time

    root, records = tmp_path / "shm", tmp_path / "engines"
    root.mkdir()
    rec = EngineShm(records, root=root, track=False)
    (root / "other-before").write_bytes(b"x")
    rec.start()
    for name in ("psm_aaaa", "psm_bbbb", "sem.mp-cccc", "held-by-me"):
        (root / name).write_bytes(b"x")
    held = open(root / "held-by-me", "rb")  # only what this process tree holds is recorded ...
    kept = [open(root / n, "rb") for n in ("psm_aaaa", "psm_bbbb", "sem.mp-cccc")]
    assert rec.started("test") == ["held-by-me", "psm_aaaa", "psm_bbbb", "sem.mp-cccc"]
    for f in kept:
        f.close()
    record = json.loads(rec.path.read_text())
    assert record["pid"] == os.getpid() and record["start_time"] == process_start_time(os.getpid())
    assert cleanup_dead_engines(records, root=root) == []  # the recorder is alive: nothing happens
    # the recorder "dies": a record of a pid that no longer runs
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record["pid"] = int(dead.stdout)
    rec.path.unlink()
    (records / f"{record['host']}-{record['pid']}.json").write_text(json.dumps(record))
    (root / "psm_bbbb").unlink()  # already gone
    (root / "after").write_bytes(b"x")  # made later by someone else
    removed = cleanup_dead_engines(records, root=root)
    assert sorted(removed) == ["psm_aaaa", "sem.mp-cccc"]  # ... but not removed while held
    assert sorted(os.listdir(root)) == ["after", "held-by-me", "other-before"]
    assert not list(records.iterdir())
    held.close()
    rec2 = EngineShm(records, root=root, track=False)
    rec2.start()
    (root / "unheld-new").write_bytes(b"x")  # appeared during the start, held by no one: not claimed
    assert rec2.started() == []


def test_resource_tracker_log_attributes_what_a_killed_process_tree_registered(tmp_path):
    """A process (own session) starts the tracker, creates a shared-memory segment and a spawn-context lock
    (both registered), then the whole group is killed: the rerun's cleanup removes exactly those."""
    from megasynth.generate.shm import SHM_DIR, cleanup_dead_engines

    code = ("import multiprocessing, os, sys, time\n"
            "from multiprocessing import shared_memory\n"
            "from megasynth.generate.shm import EngineShm\n"
            "rec = EngineShm(sys.argv[1]); rec.start()\n"
            "shm = shared_memory.SharedMemory(create=True, size=4096)\n"
            "lock = multiprocessing.get_context('spawn').Lock()\n"
            "rec.started('probe')\n"
            "print(shm.name.lstrip('/'), 'sem.' + lock._semlock.name.lstrip('/'), rec.tracked, flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "engines")], stdout=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    *names, tracked = proc.stdout.readline().split()
    log = next((tmp_path / "engines").glob("*.registered"))
    deadline = time.monotonic() + 60
    while not all(n.removeprefix("sem.") in log.read_text() for n in names):  # the tracker logs asynchronously
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, 9)
    proc.wait()
    assert tracked == "True" and names[0].startswith("psm_") and names[1].startswith("sem.mp-"), names
    time.sleep(0.5)  # the tracker died with the group: both are still there
    assert all((SHM_DIR / n).exists() for n in names)
    decoy = SHM_DIR / f"megasynth-test-decoy-{os.getpid()}"
    decoy.write_bytes(b"not ours")
    try:
        assert sorted(cleanup_dead_engines(tmp_path / "engines")) == sorted(names)
        assert decoy.exists() and not any((SHM_DIR / n).exists() for n in names)
    finally:
        decoy.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ sources
def _base(tmp_path, **gen) -> dict:
    return {"name": "s", "study_dir": str(tmp_path / "s"),
            "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": "x"}],
                        "eval": [{"name": "ev", "loader": "jsonl", "path": "y"}]},
            "generation": {"styles": ["hq", "qa"], **gen}}


def test_sources_one_and_several_generators(tmp_path, tiny_generator_dir):
    one = StudyConfig.from_dict({**_base(tmp_path, model=str(tiny_generator_dir), model_name="tiny",
                                         target_tokens={"hq@tiny": 100, "qa": 50}),
                                 "mixtures": [{"name": "m", "sources": {"hq@tiny": 0.5, "toy": 0.5}}]})
    assert one.synthetic_sources == ["hq", "qa"] and one.generation.style_sources()[0] == ("hq", "hq", "tiny")
    assert one.mixtures[0].sources == {"hq": 0.5, "toy": 0.5}  # the one generator's long name is the plain name
    assert one.generation.target_for("hq", "hq") == 100 and one.generation.target_for("qa", "qa") == 50
    gens = [{"name": "a", "model": str(tiny_generator_dir)},
            {"name": "b", "model": str(tiny_generator_dir), "backend": "server", "dtype": "bfloat16",
             "server": {"endpoints": ["http://127.0.0.1:9/v1"], "max_retries": 0}}]
    two = StudyConfig.from_dict({**_base(tmp_path, generators=gens, target_tokens={"hq": 10}),
                                 "mixtures": [{"name": "m", "sources": {"hq@a": 0.2, "hq@b": 0.2, "toy": 0.6}}]})
    assert two.synthetic_sources == ["hq@a", "qa@a", "hq@b", "qa@b"]
    resolved = two.generation.generator_list()
    assert resolved[0].dtype == "float32" and resolved[1].dtype == "bfloat16" and resolved[1].max_model_len == 1024
    assert two.generation.target_for("hq@b", "hq") == 10 and two.generation.target_for("qa@b", "qa") is None
    from megasynth.config import RunConfig

    run = RunConfig.from_study(two, "m")
    assert run.synthetic_sources == ["hq@a", "hq@b"] and run.synthetic_ratio == pytest.approx(0.4)


BAD = [
    (dict(generation={"styles": ["hq", "hq"]}), r"generation.styles\[1\]: style 'hq' listed twice"),
    (dict(generation={"generators": [{"name": "a"}, {"name": "a"}]}),
     r"generation.generators\[1\].name: generator 'a' listed twice"),
    (dict(generation={"generators": [{"name": "a@b"}]}), r"generation.generators\[0\].name: 'a@b'"),
    (dict(generation={"generators": [{"name": "a", "model": "/no/such/dir"}]}),
     r"generation.generators\[0\].model: model directory not found: /no/such/dir"),
    (dict(generation={"model": "/no/such/dir"}), "generation.model: model directory not found"),
    (dict(generation={"prompts": {"hq": {"family": "wrapp"}}}), "generation.prompts.hq.family: unknown prompt family"),
    (dict(generation={"prompts": {"txbk": {"family": "cosmopedia", "audience": "toddlers"}}}),
     "generation.prompts.txbk.audience: unknown audience 'toddlers'"),
    (dict(generation={"backend": "server"}), "generation.server.endpoints: at least one endpoint URL"),
    (dict(generation={"generators": [{"name": "a", "backend": "server", "server": {"endpoints": ["node:80"]}}]}),
     r"generation.generators\[0\].server.endpoints\[0\]: expected an http"),
    (dict(generation={"target_tokens": {"poem": 5}}), "generation.target_tokens.poem: not a synthetic source"),
    (dict(generation={"num_documents": 3, "max_documents": 3}), "generation.max_documents: set either"),
    (dict(corpora={"train": [{"name": "hq@x", "loader": "jsonl"}]}), r"corpora.train\[0\].name: 'hq@x'"),
    (dict(corpora={"train": [{"name": "toy", "loader": "jsonl"}], "eval": [{"name": "toy", "loader": "jsonl"}]}),
     r"corpora.eval\[0\].name: duplicate corpus name 'toy'"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_generation_config_is_one_line_error_naming_the_field(tmp_path, change, message):
    d = _base(tmp_path)
    for section, value in change.items():
        d[section] = {**d[section], **value} if section == "generation" else value
    with pytest.raises(MegasynthError, match=message) as e:
        StudyConfig.from_dict(d)
    assert "\n" not in str(e.value)


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_generator_dir, capsys):
    import yaml

    from megasynth.cli import main

    study = tmp_path / "s.yaml"
    d = _base(tmp_path)
    d["corpora"] = {"train": [{"name": "toy", "loader": "jsonl", "path": str(tmp_path / "toy.jsonl")}]}
    _corpus(tmp_path / "toy.jsonl")
    d["generation"].update(model=str(tiny_generator_dir), num_documents=2)
    study.write_text(yaml.safe_dump(d))
    assert main(["generate", str(study), "--rank", "2", "--world-size", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("megasynth: error: --rank/--world-size: rank 2 is not in 0..1 "
                                               "(world size 2)")
    assert main(["generate", str(study), "generation.prompts.qa.family=nemo"]) == 2
    assert "generation.prompts.qa.family: unknown prompt family 'nemo'" in capsys.readouterr().err
    # an unreachable endpoint is found at start, before anything of generation is written
    assert main(["generate", str(study), "generation.backend=server",
                 "generation.server.endpoints=[http://127.0.0.1:9/v1]", "generation.server.max_retries=0",
                 "generation.server.connect_timeout_s=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("megasynth: error: generation.server.endpoints: http://127.0.0.1:9/v1 failed GET /v1/models")
    assert not (tmp_path / "s" / "synthetic").exists() and not (tmp_path / "s" / "plan").exists()


def test_serve_dry_run_prints_one_server_per_local_endpoint(tmp_path, tiny_generator_dir, capsys):
    import yaml

    from megasynth.cli import main

    d = _base(tmp_path)
    d["generation"]["generators"] = [
        {"name": "local", "model": str(tiny_generator_dir)},
        {"name": "big", "model": str(tiny_generator_dir), "backend": "server", "tensor_parallel_size": 2,
         "server": {"endpoints": ["http://127.0.0.1:8123/v1", "http://far-away-node:8000/v1"],
                    "api_key_env": "SOME_KEY", "model": "big-served"}}]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    assert main(["serve", str(tmp_path / "s.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("big: http://127.0.0.1:8123/v1: bash ") and "launch/serve.sh --port 8123 --host 127.0.0.1 " \
        "--tp 2 --replicas 1 --dtype float32 --max-model-len 1024 --name big-served --api-key-env SOME_KEY " in out[0]
    assert out[0].endswith(f"{tiny_generator_dir} -- --max-num-seqs 32 --seed 1234")
    assert out[1] == ("big: http://far-away-node:8000/v1 is on another host: run `megasynth serve STUDY.yaml "
                      "--generator big` there")
    assert main(["serve", str(tmp_path / "s.yaml"), "--generator", "nope"]) == 2
    assert "--generator: unknown generator 'nope'" in capsys.readouterr().err
