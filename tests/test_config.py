"""Study-file parsing, overrides and validation: every bad input is a one-line error naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megasynth.config import RunConfig, StudyConfig
from megasynth.utils import MegasynthError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.yaml"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def test_quickstart_parses_and_roundtrips(tmp_path):
    cfg = StudyConfig.from_yaml(QUICKSTART)
    assert cfg.natural_sources == ["sotu"]
    assert cfg.synthetic_sources == ["hq", "qa", "txbk"]
    assert [m.name for m in cfg.mixtures] == ["natural", "hq100", "hq33", "qa33", "txbk33"]
    again = StudyConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_overrides_apply_with_dotted_paths():
    cfg = StudyConfig.from_yaml(QUICKSTART, ["train.train_iters=70", "mixtures.0.name=nat", "study_dir=/x/y"])
    assert cfg.train.train_iters == 70
    assert cfg.mixtures[0].name == "nat"
    assert cfg.study_dir == "/x/y"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["train"].update(bogus=1), "train.bogus: unknown key"),
        (lambda d: d["mixtures"][2]["sources"].update(hq=-0.33, sotu=1.33), "mixtures[2].sources.hq: ratio must be >= 0"),
        (lambda d: d["mixtures"][2]["sources"].update(hq=0.5), "mixtures[2].sources: ratios must sum to 1"),
        (lambda d: d["mixtures"][0]["sources"].update(nope=0.0), "mixtures[0].sources.nope: unknown source"),
        (lambda d: d["model"].update(preset="llama3-999b"), "model.preset: unknown preset 'llama3-999b'"),
        (lambda d: d["train"].update(seq_length="long"), "train.seq_length: expected an integer"),
        (lambda d: d["generation"].update(model="/does/not/exist"), "generation.model: model directory not found"),
        (lambda d: d["generation"].update(styles=["hq", "poetry"]), "generation.styles[1]: unknown style"),
        (lambda d: d["train"].update(global_batch_size=10, micro_batch_size=4), "train.global_batch_size: must be a multiple"),
        (lambda d: d["corpora"]["eval"].append({"name": "sotu", "loader": "sotu"}), "corpora.eval[2].name: duplicate"),
        (lambda d: d["model"].update(transformer_impl="te"), "model.transformer_impl: must be one of"),
        (lambda d: d["train"].update(lr=1e-3), "train.lr: moved to train.optimizer.lr"),
        (lambda d: d["train"].update(save_interval=5), "train.save_interval: moved to train.checkpoint.save_interval"),
        (lambda d: d["train"]["optimizer"].update(min_lr=1.0), "train.optimizer.min_lr: must satisfy"),
        (lambda d: d["train"]["optimizer"].update(lr_warmup_iters=100),
         "train.optimizer.lr_warmup_iters: must be in [0, train.train_iters)"),
        (lambda d: d["train"].update(parallel={"sequence_parallel": True}),
         "train.parallel.sequence_parallel: needs tensor_model_parallel_size >= 2"),
        (lambda d: d["train"].update(parallel={"overlap_param_gather": True}),
         "train.parallel.overlap_param_gather: needs use_distributed_optimizer"),
        (lambda d: d["train"].update(checkpoint={"save_interval": 0}), "train.checkpoint.save_interval: must be > 0"),
        (lambda d: d["report"].update(ci_level=1.5), "report.ci_level: must be in (0, 1)"),
    ],
)
def test_bad_input_names_the_field(tmp_path, mutate, message):
    data = _base()
    mutate(data)
    with pytest.raises(MegasynthError) as info:
        StudyConfig.from_yaml(_write(tmp_path, data))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain: {seq_length: 3\nmodel: [\n")
    with pytest.raises(MegasynthError, match=r"bad\.yaml:\d+: invalid YAML"):
        StudyConfig.from_yaml(path)


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    data = _base()
    data["study_dir"] = str(tmp_path / "out")
    data["mixtures"][1]["sources"] = {"hq": 0.7}
    path = _write(tmp_path, data)
    proc = subprocess.run([sys.executable, "-m", "megasynth.cli", "mix", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["megasynth: error: mixtures[1].sources: ratios must sum to 1, got 0.7"]
    assert not (tmp_path / "out").exists()


def test_cli_missing_study_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megasynth.cli", "run", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "none.yaml: study file not found" in proc.stderr


def test_run_config_is_one_run_fully_determined(tmp_path):
    """A run planned from a study holds what training reads; its YAML round-trips; its identity is every field
    that changes the loss curve, and not the layout, checkpointing or logging."""
    cfg = StudyConfig.from_yaml(QUICKSTART)
    run = RunConfig.from_study(cfg, "hq33")
    assert (run.run_id, run.mixture.sources) == ("hq33", {"hq": 0.33, "sotu": 0.67})
    assert run.model == cfg.model and run.train == cfg.train and run.tokenizer == cfg.tokenizer
    assert run.eval_sets == ["wiki", "lambada"] and run.synthetic_sources == ["hq"] and run.synthetic_ratio == 0.33
    path = tmp_path / "run.yaml"
    path.write_text(run.to_yaml())
    assert RunConfig.from_yaml(path) == run
    assert RunConfig.from_yaml(path, ["train.parallel.tensor_model_parallel_size=2"]).train.parallel \
        .tensor_model_parallel_size == 2
    ident = run.identity()
    assert {"mixture.sources", "model.preset", "model.precision", "train.seq_length", "train.global_batch_size",
            "train.micro_batch_size", "train.train_iters", "train.seed", "train.optimizer.lr",
            "train.optimizer.lr_decay_style", "tokenizer.type", "eval_sets"} <= set(ident)
    assert not [k for k in ident if k.startswith(("train.parallel", "train.checkpoint", "run_id", "mixture.name"))]

    other = RunConfig.from_dict({**run.to_dict(), "train": {**run.to_dict()["train"], "train_iters": 200}})
    with pytest.raises(MegasynthError, match=r"^x/run\.yaml: run 'hq33' was started with train\.train_iters=100, "
                                             r"now 200; .*new study_dir"):
        other.check_same_run(run, "x/run.yaml")
    relaid = RunConfig.from_yaml(path, ["train.parallel.tensor_model_parallel_size=2", "train.log_interval=1",
                                        "train.checkpoint.save_interval=10", "run_id=renamed"])
    relaid.check_same_run(run, "x/run.yaml")  # same run: only where it runs and what it logs changed
    with pytest.raises(MegasynthError, match=r"^run_id: 'a/b' is not a directory name"):
        RunConfig.from_yaml(path, ["run_id=a/b"])
    with pytest.raises(MegasynthError, match=r"^mixtures: unknown mixture 'nope'"):
        RunConfig.from_study(cfg, "nope")
