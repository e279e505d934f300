"""The ``base:`` section (continued training from one base model): config checks naming the field, the planned
runs (every run, a WSD trunk but not its branches, starts from ``study:base``; the base run ``base``), the mixtures
the mix stage writes, and ``init_source`` before the base model exists."""

from __future__ import annotations

import pytest

from megasynth.config import BASE_INIT, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError


def _study(root, **over) -> dict:
    d = {"name": "cpt", "study_dir": str(root), "seed": 3,
         "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
         "generation": {"styles": ["hq"]},
         "tokenizer": {"type": "bpe", "vocab_size": 512},
         "mixtures": [{"name": "natural", "sources": {"sotu": 1.0}}, {"name": "hq100", "sources": {"hq": 1.0}}],
         "model": {"preset": "llama3-micro"},
         "train": {"seq_length": 64, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": 10,
                   "optimizer": {"lr_warmup_iters": 2}},
         "base": {"mixture": "natural", "train_iters": 30, "lr": 0.002},
         "sweep": {"mixtures": ["hq100"], "budgets": {"tokens": [2048, 4096, 8192]}, "schedule": "wsd"}}
    d.update(over)
    return d


def test_plan_continues_every_run_from_the_base_model(tmp_path):
    from megasynth.study.runs import base_runs, plan_runs, study_runs

    cfg = StudyConfig.from_dict(_study(tmp_path))
    runs = plan_runs(cfg)
    assert [r.run_id for r in runs] == ["llama3-micro_hq100_s1234_8.192k", "llama3-micro_hq100_s1234_2.048k",
                                        "llama3-micro_hq100_s1234_4.096k"]
    trunk, *branches = runs
    assert trunk.train.init_from == BASE_INIT and trunk.train.branch_from is None
    assert all(b.train.init_from is None and b.train.branch_from.run_id == trunk.run_id for b in branches)
    [base] = base_runs(cfg)
    assert (base.run_id, base.mixture.name, base.train.train_iters, base.train.init_from) == ("base", "natural", 30, None)
    assert base.train.optimizer.lr == 0.002 and trunk.train.optimizer.lr == cfg.train.optimizer.lr == 3e-3
    assert [r.run_id for r in study_runs(cfg)][0] == "base"
    # the mix stage writes the base run's mixture too, for its budget
    assert [m.name for m in cfg.written_mixtures] == ["hq100", "natural"] and [m.name for m in cfg.run_mixtures] == ["hq100"]
    assert cfg.mixture_train_samples("natural") == 30 * 8 and cfg.mixture_train_samples("hq100") == 16 * 8
    # an imported HF base: no base run
    hf = StudyConfig.from_dict(_study(tmp_path, base={"hf_model": "/models/Llama-3.1-8B"}))
    assert base_runs(hf) == [] and plan_runs(hf)[0].train.init_from == BASE_INIT


@pytest.mark.parametrize("over, msg", [
    ({"base": {"mixture": "natural"}}, "base.train_iters: must be an integer >= 1"),
    ({"base": {"mixture": "natural", "train_iters": 5, "hf_model": "/x"}}, "base: give either"),
    ({"base": {"hf_model": "/x", "train_iters": 5}}, "base.train_iters: only with base.mixture"),
    ({"base": {"hf_model": "/x", "lr": 0.1}}, "base.lr: only with base.mixture"),
    ({"base": {"mixture": "nope", "train_iters": 5}}, "base.mixture: unknown mixture 'nope'"),
    ({"base": {"mixture": "natural", "train_iters": 2}}, "base.train_iters: must exceed"),
    ({"sweep": {"presets": ["llama3-micro", "llama3-tiny"], "budgets": {"tokens": [2048, 4096]}}},
     "sweep.presets[1]: 'llama3-tiny', but every run continues from the base model"),
])
def test_bad_base_section_one_line(tmp_path, over, msg):
    with pytest.raises(MegasynthError) as e:
        StudyConfig.from_dict(_study(tmp_path, **over))
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_train_init_from_and_base_exclusive_and_base_not_ready(tmp_path):
    from megasynth.train.run import init_source

    with pytest.raises(MegasynthError, match=r"^train\.init_from: set by the base section"):
        StudyConfig.from_dict(_study(tmp_path, train={**_study(tmp_path)["train"], "init_from": str(tmp_path)}))
    layout = StudyLayout.of(tmp_path / "s")
    assert init_source("/some/ckpt", layout) == "/some/ckpt"
    with pytest.raises(MegasynthError, match=r"^train\.init_from: study:base, but the study's base model is neither"):
        init_source(BASE_INIT, layout)


def test_hf_base_is_imported_once_and_resolved(tmp_path, tiny_hf_tokenizer):
    """``base.hf_model``: the train stage's ``ensure_base`` imports it into ``base/megatron/`` once (marker with the
    source), runs resolve ``study:base`` to it, and another source directory is refused naming the field."""
    from conftest import build_tiny_llama_dir

    from megasynth.study.runs import ensure_base, runs_done
    from megasynth.train.run import init_source
    from megasynth.utils import is_done, read_json

    hf = build_tiny_llama_dir(tmp_path / "hf", tiny_hf_tokenizer)
    cfg = StudyConfig.from_dict(_study(tmp_path / "study", base={"hf_model": str(hf)}))
    layout = StudyLayout.of(cfg.study_dir)
    assert not runs_done(cfg, layout)
    ensure_base(cfg, layout)
    out = layout.base_import
    assert is_done(out) and (out / "iter_0000000").is_dir() and (out / "hf_assets" / "tokenizer.json").is_file()
    assert read_json(out.parent / "megatron.done")["hf_model"] == str(hf.resolve())
    assert init_source(BASE_INIT, layout) == out
    stamp = (out / "latest_checkpointed_iteration.txt").stat().st_mtime_ns
    ensure_base(cfg, layout)  # done: not imported again
    assert (out / "latest_checkpointed_iteration.txt").stat().st_mtime_ns == stamp
    other = StudyConfig.from_dict(_study(tmp_path / "study", base={"hf_model": str(tmp_path)}))
    with pytest.raises(MegasynthError, match=r"^base\.hf_model: .* was imported from .*; delete"):
        ensure_base(other, layout)
    missing = StudyConfig.from_dict(_study(tmp_path / "study2", base={"hf_model": str(tmp_path / "nope")}))
    with pytest.raises(MegasynthError, match=r"^base\.hf_model: not a Hugging Face model directory"):
        ensure_base(missing, StudyLayout.of(missing.study_dir))
