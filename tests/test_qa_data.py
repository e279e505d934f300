"""Question–answer training data (megasynth.data.qa): answer-only loss masks on packed megatron-core samples,
EOD between records, plain and chat prompt formats, blending with natural text, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import PROSE, build_tiny_hf_tokenizer
from megasynth.utils import MegasynthError, mark_done, write_json

SEQ = 48

QA = [
    {"question": "What does the river carry to the sea?", "answer": "Fresh soil from the northern hills."},
    {"question": "When was the stone bridge finished?", "answer": "It was finished in the year 1402."},
    {"question": "What paid for the town's first school?", "answer": "The tolls on wool and salt."},
    {"question": "How long did the journey to the coast take?", "answer": "Only three hours by railway."},
    {"question": "Which fruits does the valley send to market?", "answer": "Apples and pears, across the country."},
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from megasynth.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(PROSE * 4, 400, tmp_path_factory.mktemp("tok"))


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _write_synthllm_source(layout, copies: int, levels=None) -> list[dict]:
    """A finished ``synthllm`` source (one shard, marked manifest) of ``copies`` x :data:`QA`, levels 1, 2, 3 in
    turn; ``levels(records)``: the manifest's per-level block. Returns the records."""
    d = layout.synthetic_dir("synthllm")
    d.mkdir(parents=True)
    recs = [{"id": f"synthllm-{i}", "text": f"Question: {r['question']}\n\nAnswer: {r['answer']}", "level": 1 + i % 3,
             "question": r["question"], "answer": r["answer"]} for i, r in enumerate(QA * copies)]
    _write_jsonl(d / "shard-00000.jsonl", recs)
    write_json(d / "manifest.json", {"style": "synthllm", "shards": ["shard-00000.jsonl"],
                                     **({"levels": levels(recs)} if levels else {})})
    mark_done(d / "manifest.json")
    return recs


def _runs(mask: torch.Tensor):
    """Maximal runs ``(start, end, value)`` of a 0/1 vector."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((start, i, int(mask[start])))
            start = i
    return out


def _samples(prefix, tok, tmp_path, n=None):
    from megasynth.data.datasets import build_gpt_datasets
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    low = IndexedDataset(str(prefix))  # keep it alive while its memory map is read
    total = int(low.sequence_lengths.sum())
    n = n or total // SEQ  # one epoch
    ds = build_gpt_datasets(None, str(prefix), tok, SEQ, n, 1, tmp_path / "cache")
    return [ds[i] for i in range(n)]


def test_plain_mask_covers_exactly_the_answers(bpe, tmp_path):
    from megasynth.data.qa import loss_mask_prefix, preprocess_qa_jsonl

    src = _write_jsonl(tmp_path / "qa.jsonl", QA * 3)
    stats = preprocess_qa_jsonl([src], tmp_path / "qa_text_document", bpe)
    assert stats["documents"] == 15 and stats["prompt_format"] == "plain"
    assert Path(f"{loss_mask_prefix(tmp_path / 'qa_text_document')}.idx").is_file()
    eod = "<|end_of_text|>"
    answers = {f" {r['answer']}{eod}" for r in QA}
    prompts = {f"Question: {r['question']}\nAnswer:" for r in QA}
    full_answers = full_prompts = 0
    for s in _samples(tmp_path / "qa_text_document", bpe, tmp_path):
        labels, mask = s["labels"], s["loss_mask"]
        for start, end, value in _runs(mask):
            text = bpe.detokenize(labels[start:end].tolist())
            whole = start > 0 and end < len(mask)  # not cut by the sample's edges
            if value == 1:  # answer tokens and the EOD that closes the record
                assert text.count(eod) <= 1 and (text.endswith(eod) or end == len(mask)), text
                if whole:
                    assert text in answers, text
                    full_answers += 1
                else:
                    assert any(a.startswith(text) or a.endswith(text) for a in answers), text
            else:  # prompt tokens: never an answer token, never EOD
                assert eod not in text
                if whole:
                    assert text in prompts, text
                    full_prompts += 1
                else:
                    assert any(p.startswith(text) or p.endswith(text) for p in prompts), text
        # documents are separated by EOD: whatever follows an EOD starts a new question
        tokens = s["tokens"].tolist()
        for i, t in enumerate(tokens[:-1]):
            if t == bpe.eod:
                rest = bpe.detokenize(tokens[i + 1:])
                assert rest.startswith("Question: ") or "Question: ".startswith(rest), rest
    assert full_answers >= 3 and full_prompts >= 3


def test_chat_template_format(tmp_path):
    from megasynth.data.qa import preprocess_qa_jsonl
    from megasynth.data.tokenizer import load_tokenizer_dir

    hf = build_tiny_hf_tokenizer(PROSE * 4)
    hf.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    hf.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                        "{% if m['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    hf.save_pretrained(tmp_path / "tok")
    tok = load_tokenizer_dir(tmp_path / "tok")
    src = _write_jsonl(tmp_path / "qa.jsonl", QA * 4)
    stats = preprocess_qa_jsonl([src], tmp_path / "chat", tok, prompt_format="auto")
    assert stats["prompt_format"] == "chat"
    seen = 0
    for s in _samples(tmp_path / "chat", tok, tmp_path):
        for start, end, value in _runs(s["loss_mask"]):
            if 0 < start and end < SEQ:
                text = tok.detokenize(s["labels"][start:end].tolist())
                if value == 1:
                    assert text in {f"{r['answer']}</s></s>" for r in QA}, text  # template's </s> + EOD (= </s>)
                    seen += 1
                else:
                    assert text in {f"<|user|>{r['question']}<|assistant|>" for r in QA}, text
    assert seen >= 3
    with pytest.raises(MegasynthError, match="prompt_format: chat needs a tokenizer with a chat template"):
        from megasynth.data.tokenizer import train_bpe_tokenizer

        preprocess_qa_jsonl([src], tmp_path / "x", train_bpe_tokenizer(PROSE, 300, tmp_path / "bpe"), "chat")


def test_blend_with_natural_text(bpe, tmp_path):
    """A 70/30 blend of natural text and QA: realised shares as requested; natural samples count every
    token, QA samples only answers."""
    from megasynth.data.datasets import build_gpt_datasets, realised_token_shares
    from megasynth.data.preprocess import preprocess_jsonl
    from megasynth.data.qa import preprocess_qa_jsonl

    nat = _write_jsonl(tmp_path / "nat.jsonl", [{"text": t} for t in PROSE * 5])
    preprocess_jsonl([nat], tmp_path / "nat_text_document", bpe)
    preprocess_qa_jsonl([_write_jsonl(tmp_path / "qa.jsonl", QA * 4)], tmp_path / "qa_text_document", bpe)
    blend = ([str(tmp_path / "nat_text_document"), str(tmp_path / "qa_text_document")], [0.7, 0.3])
    n = 200
    shares = realised_token_shares(blend, bpe, SEQ, n, 3, tmp_path / "cache")
    assert shares[blend[0][0]] == pytest.approx(0.7, abs=0.01) and shares[blend[0][1]] == pytest.approx(0.3, abs=0.01)
    ds = build_gpt_datasets(blend, None, bpe, SEQ, n, 3, tmp_path / "cache")
    frac = {0: [], 1: []}
    for i in range(n):
        frac[int(ds.dataset_index[i])].append(float(ds[i]["loss_mask"].mean()))
    assert min(frac[0]) == 1.0  # natural: every token
    assert max(frac[1]) < 1.0 and 0.1 < sum(frac[1]) / len(frac[1]) < 0.7  # QA: answers only


def test_record_without_answer_names_file_and_line(bpe, tmp_path):
    from megasynth.data.qa import preprocess_qa_jsonl

    src = _write_jsonl(tmp_path / "bad.jsonl", [QA[0], QA[1], {"question": "Where is the bridge?"}])
    with pytest.raises(MegasynthError, match=r"bad\.jsonl:3: record has no answer \(key 'answer'"):
        preprocess_qa_jsonl([src], tmp_path / "bad", bpe)
    src = _write_jsonl(tmp_path / "empty.jsonl", [{"question": "Why?", "answer": "  "}])
    with pytest.raises(MegasynthError, match=r"empty\.jsonl:1: record has no answer"):
        preprocess_qa_jsonl([src], tmp_path / "empty", bpe)
    assert not list(tmp_path.glob("bad*.bin")) and not list(tmp_path.glob(".bad*"))  # nothing half-written


def test_synthllm_source_is_question_answer_data_in_the_study(tmp_path):
    """The preprocess stage tokenizes the ``synthllm`` source as QA (mask companion, answers only) in
    ``generation.synthllm.qa_prompt_format``; the mix stage blends it alone or with natural text; a record
    without an answer is ``file:line``; a changed format is refused naming the field."""
    from megasynth.config import StudyConfig
    from megasynth.corpora import run_corpora
    from megasynth.data.datasets import build_gpt_datasets
    from megasynth.data.mixtures import run_mix
    from megasynth.data.preprocess import preprocess_done, run_preprocess
    from megasynth.data.qa import loss_mask_prefix
    from megasynth.data.tokenizer import load_tokenizer
    from megasynth.layout import StudyLayout

    _write_jsonl(tmp_path / "toy.jsonl", [{"id": f"d{i}", "text": " ".join(PROSE[i:] + PROSE[:i]) * 2}
                                          for i in range(len(PROSE))])
    data = {"name": "qa", "study_dir": str(tmp_path / "study"),
            "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": str(tmp_path / "toy.jsonl")}]},
            "generation": {"styles": [], "synthllm": {"enabled": True}},
            "tokenizer": {"type": "bpe", "vocab_size": 400},
            "mixtures": [{"name": "qa100", "sources": {"synthllm": 1.0}},
                         {"name": "qa30", "sources": {"synthllm": 0.3, "toy": 0.7}}],
            "model": {"preset": "llama3-micro"},
            "train": {"seq_length": SEQ, "micro_batch_size": 2, "global_batch_size": 4, "train_iters": 10,
                      "optimizer": {"lr_warmup_iters": 1}}}
    cfg = StudyConfig.from_dict(data)
    layout = StudyLayout.of(cfg.study_dir)
    run_corpora(cfg, layout)
    recs = _write_synthllm_source(layout, 3)
    d = layout.synthetic_dir("synthllm")
    run_preprocess(cfg, layout)
    prefix = layout.tokenized_prefix("synthllm")
    stats = json.loads(layout.tokenized_stats("synthllm").read_text())
    assert stats["kind"] == "synthetic" and stats["prompt_format"] == "plain" and stats["documents"] == len(recs)
    assert 0 < stats["loss_tokens"] < stats["tokens"] and Path(f"{loss_mask_prefix(prefix)}.idx").is_file()
    assert preprocess_done(cfg, layout)
    run_mix(cfg, layout)
    tok = load_tokenizer(cfg.tokenizer, layout)
    only = build_gpt_datasets(None, str(prefix), tok, SEQ, 20, 1, tmp_path / "cache")
    assert max(float(only[i]["loss_mask"].mean()) for i in range(20)) < 1.0  # answers only
    mix = json.loads((layout.root / "mixtures" / "qa30.json").read_text())
    assert mix["realised_share"]["synthllm"] == pytest.approx(0.3, abs=0.05)

    # another prompt format than the tokenized one: refused, naming the field
    chat = StudyConfig.from_dict({**data, "generation": {"styles": [], "synthllm": {"enabled": True,
                                                                                    "qa_prompt_format": "chat"}}})
    with pytest.raises(MegasynthError, match=r"^generation\.synthllm\.qa_prompt_format: 'chat', but .*synthllm\.stats"
                                             r"\.json was tokenized as 'plain'"):
        preprocess_done(chat, layout)
    # a record without an answer (e.g. generation.synthllm.answer_max_tokens: 0): file:line
    _write_jsonl(d / "shard-00001.jsonl", [{**recs[0], "answer": None}])
    write_json(d / "manifest.json", {"style": "synthllm", "shards": ["shard-00000.jsonl", "shard-00001.jsonl"]})
    mark_done(d / "manifest.json")
    for p in layout.root.glob("tokenized/synthllm*"):
        p.unlink()
    with pytest.raises(MegasynthError, match=r"shard-00001\.jsonl:1: record has no answer"):
        run_preprocess(cfg, layout)
    with pytest.raises(MegasynthError, match=r"^generation\.synthllm\.qa_prompt_format: must be"):
        StudyConfig.from_dict({**data, "generation": {"styles": [], "synthllm": {"enabled": True,
                                                                                 "qa_prompt_format": "auto"}}})


def test_synthllm_level_sources_split_by_level(tmp_path):
    """``generation.synthllm.level_sources``: ``synthllm-l1/-l2/-l3`` are the synthllm records of one level each,
    tokenized as QA data at preprocess time, usable alone in mixtures; the report's level table puts their runs beside
    each level's diversity."""
    from megasynth.analysis.results import ResultRow
    from megasynth.analysis.synthllm_levels import level_section
    from megasynth.config import StudyConfig
    from megasynth.config.data import is_synthetic_source, source_style
    from megasynth.corpora import run_corpora
    from megasynth.data.mixtures import run_mix
    from megasynth.data.preprocess import preprocess_done, run_preprocess
    from megasynth.layout import StudyLayout

    _write_jsonl(tmp_path / "toy.jsonl", [{"id": f"d{i}", "text": " ".join(PROSE[i:] + PROSE[:i]) * 2}
                                          for i in range(len(PROSE))])
    data = {"name": "qa", "study_dir": str(tmp_path / "study"),
            "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": str(tmp_path / "toy.jsonl")}],
                        "eval": [{"name": "ev", "loader": "jsonl", "path": str(tmp_path / "toy.jsonl")}]},
            "generation": {"styles": [], "synthllm": {"enabled": True, "level_sources": True}},
            "decontamination": {"enabled": False},
            "tokenizer": {"type": "bpe", "vocab_size": 400},
            "mixtures": [{"name": f"l{k}", "sources": {f"synthllm-l{k}": 1.0}} for k in (1, 2, 3)],
            "model": {"preset": "llama3-micro"},
            "train": {"seq_length": SEQ, "micro_batch_size": 2, "global_batch_size": 4, "train_iters": 10,
                      "optimizer": {"lr_warmup_iters": 1}}}
    cfg = StudyConfig.from_dict(data)
    assert cfg.synthetic_sources == ["synthllm", "synthllm-l1", "synthllm-l2", "synthllm-l3"]
    assert source_style("synthllm-l2") == "synthllm" and is_synthetic_source("synthllm-l3")
    off = StudyConfig.from_dict({**data, "generation": {"styles": [], "synthllm": {"enabled": True}}, "mixtures": []})
    assert off.synthetic_sources == ["synthllm"]
    with pytest.raises(MegasynthError, match=r"^mixtures\[0\]\.sources.*synthllm-l1"):
        StudyConfig.from_dict({**data, "generation": {"styles": [], "synthllm": {"enabled": True}}})
    layout = StudyLayout.of(cfg.study_dir)
    run_corpora(cfg, layout)
    def levels_of(recs):
        return {str(k): {"kept": sum(r["level"] == k for r in recs), "distinct_n": {"2": 0.5 + 0.1 * k},
                         "pairwise_jaccard_3gram": 0.1 / k, "concept_coverage": 0.2 * k} for k in (1, 2, 3)}

    recs = _write_synthllm_source(layout, 4, levels_of)
    levels = levels_of(recs)
    run_preprocess(cfg, layout)
    all_stats = json.loads(layout.tokenized_stats("synthllm").read_text())
    per = {k: json.loads(layout.tokenized_stats(f"synthllm-l{k}").read_text()) for k in (1, 2, 3)}
    assert [per[k]["documents"] for k in (1, 2, 3)] == [sum(r["level"] == k for r in recs) for k in (1, 2, 3)]
    assert sum(per[k]["tokens"] for k in (1, 2, 3)) == all_stats["tokens"]  # a partition of the records
    assert sum(per[k]["loss_tokens"] for k in (1, 2, 3)) == all_stats["loss_tokens"]
    assert all(per[k]["level"] == k and per[k]["kind"] == "synthetic" for k in (1, 2, 3))
    assert preprocess_done(cfg, layout)
    run_mix(cfg, layout)
    for k in (1, 2, 3):
        mix = json.loads((layout.root / "mixtures" / f"l{k}.json").read_text())
        assert mix["realised_share"] == {f"synthllm-l{k}": 1.0}

    rows = [ResultRow(run=f"l{k}", mixture=f"l{k}", preset="llama3-micro", n_params=1, n_params_non_embedding=1,
                      tokens=tokens, synthetic_ratio=1.0, eval_set=es, loss=v + k / 10, metric=m,
                      synthetic_sources=f"synthllm-l{k}", schedule_complete=True)
            for k in (1, 2, 3) for tokens in (100, 200) for es, m, v in (("ev", "loss", 5.0), ("ev", "bpb", 2.0),
                                                                          ("gsm8k_bpb", "bpb", 1.5))]
    md, files = level_section(rows, layout, ["ev"])
    rec = json.loads(layout.fit("synthllm_levels").read_text())
    assert [(r["level"], r["tokens"]) for r in rec["runs"]] == [(1, 200), (2, 200), (3, 200)]
    assert rec["runs"][1]["values"] == {"ev:loss": 5.2, "ev:bpb": 2.2, "gsm8k_bpb:bpb": 1.7}
    assert rec["runs"][2]["diversity"]["kept"] == levels["3"]["kept"]
    assert "| 2 | l2 (llama3-micro) | 1.00 | 200 | 5.2000 | 2.2000 | 1.7000 |" in "\n".join(md)
    assert level_section([r for r in rows if r.mixture == "none"], layout, ["ev"]) == ([], [])
