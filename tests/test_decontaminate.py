"""Eval-set decontamination (megasynth.data.decontaminate) on small real texts written in the test."""

from __future__ import annotations

import json

import pytest

from megasynth.data.decontaminate import build_eval_index, decontaminate, words
from megasynth.utils import MegasynthError

# Eval passages (real prose). EVAL_A has 27 words; SHORT has 9 words (one 9-gram); TINY has 5 (ignored).
EVAL_A = ("The committee met in the old library on Tuesday evening, and after a long debate it voted to "
          "restore the east wing before the winter rains arrived.")
SHORT = "Mountain goats climb the steep cliffs without any fear."
TINY = "Bread rises in warm kitchens."
EVAL_B = ("Sailors on the northern route reported that the ice had broken up three weeks earlier than in "
          "any year anyone could remember, opening the strait for trade.")


def _write(path, texts):
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _source_texts():
    return [
        # 0: 13 consecutive words of EVAL_A, with other case and punctuation -> removed (evalA)
        "In other news, AFTER a long debate -- it voted to restore the east wing; before the winter... "
        "Nobody was surprised.",
        # 1: only 12 consecutive words of EVAL_A -> kept
        "Reporters wrote that after a long debate it voted to restore the east wing of the hall.",
        # 2: the whole 9-word SHORT eval document inside a longer text -> removed (evalA)
        "Guides told us that mountain goats climb the steep cliffs without any fear, even in snow.",
        # 3: the 5-word TINY document -> kept (too short to count)
        "Everyone knows bread rises in warm kitchens, and so do tempers.",
        # 4: unrelated -> kept
        "A railway was built beside the river in 1870, and the journey to the coast took three hours.",
        # 5: 13 words of EVAL_B -> removed (evalB)
        "Old logs say the ice had broken up three weeks earlier than in any year anyone could recall.",
    ]


@pytest.fixture
def evals(tmp_path):
    return {"evalA": _write(tmp_path / "a.jsonl", [EVAL_A, SHORT, TINY]),
            "evalB": _write(tmp_path / "b.jsonl", [EVAL_B])}


def test_words_lowercase_and_delete_punctuation():
    assert words("Don't STOP—the U.S. “rocks”, 1,000 times!\nNext_line") == [
        "dont", "stopthe", "us", "rocks", "1000", "times", "nextline"]


def test_eval_index_caps_ngram_size_at_short_documents(evals):
    idx = build_eval_index(evals, n=13, min_n=8)
    assert idx.lengths == [13, 9]  # 13-grams plus the 9-word SHORT document
    a = idx.info["evalA"]
    assert a["documents"] == 3 and a["documents_too_short"] == 1
    assert len(words(EVAL_A)) == 27 and len(words(SHORT)) == 9
    assert a["ngrams"] == (27 - 13 + 1) + 1 and idx.info["evalB"]["ngrams"] == len(words(EVAL_B)) - 13 + 1
    with pytest.raises(MegasynthError, match="min_n"):
        build_eval_index(evals, n=5, min_n=8)


def test_decontaminate_removes_overlapping_documents_and_counts(tmp_path, evals):
    src = _write(tmp_path / "src.jsonl", _source_texts())
    out = tmp_path / "out" / "clean.jsonl"
    r = decontaminate(src, evals, out, n=13, workers=1)
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert kept == ["d1", "d3", "d4"]
    assert (r["documents_checked"], r["documents_removed"], r["documents_kept"]) == (6, 3, 3)
    a, b = r["eval_sets"]["evalA"], r["eval_sets"]["evalB"]
    assert a["documents_checked"] == b["documents_checked"] == 6
    assert (a["documents_removed"], b["documents_removed"]) == (2, 1)
    assert a["ngrams_matched"] == 3 and b["ngrams_matched"] == 2  # documents 0 and 5 hold 14 words of one
    assert a["examples"] == ["after a long debate it voted to restore the east wing before the",
                             "a long debate it voted to restore the east wing before the winter",
                             "mountain goats climb the steep cliffs without any fear"]
    assert b["examples"] == ["the ice had broken up three weeks earlier than in any year anyone",
                             "ice had broken up three weeks earlier than in any year anyone could"]
    # kept lines are byte-for-byte the source lines
    src_lines = src.read_text().splitlines()
    assert out.read_text().splitlines() == [src_lines[1], src_lines[3], src_lines[4]]
    assert not [p for p in out.parent.iterdir() if p.name != "clean.jsonl"]  # no temporary files left


def test_ngram_in_too_many_documents_is_ignored_as_common(tmp_path, evals):
    common = "after a long debate it voted to restore the east wing before the winter"
    src = _write(tmp_path / "src.jsonl", [f"Story {i}: {common} came up again." for i in range(3)]
                 + _source_texts()[2:3])
    r = decontaminate(src, evals, tmp_path / "o.jsonl", workers=1, max_matches=2)
    assert r["documents_removed"] == 1  # only the SHORT match; the 13-gram is in 3 > 2 documents
    assert r["eval_sets"]["evalA"]["ngrams_ignored_common"] == 2  # the 14 words hold two 13-grams
    assert r["eval_sets"]["evalA"]["ngrams_matched"] == 1
    r = decontaminate(src, evals, tmp_path / "o.jsonl", workers=1, max_matches=None)
    assert r["documents_removed"] == 4


def test_workers_give_the_same_output_in_source_order(tmp_path, evals):
    texts = _source_texts() * 40  # 240 documents, many chunks
    src = _write(tmp_path / "src.jsonl", texts)
    r1 = decontaminate(src, evals, tmp_path / "one.jsonl", workers=1, max_matches=None, chunk_bytes=2000)
    r2 = decontaminate(src, evals, tmp_path / "two.jsonl", workers=2, max_matches=None, chunk_bytes=2000)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert r1["documents_removed"] == r2["documents_removed"] == 120 and r2["workers"] == 2
    assert r1["eval_sets"] == r2["eval_sets"]


def test_malformed_source_is_a_file_line_error_and_nothing_is_written(tmp_path, evals):
    src = tmp_path / "src.jsonl"
    src.write_text(json.dumps({"text": "fine"}) + "\n\n" + '{"text": "broken\n')
    out = tmp_path / "out.jsonl"
    for workers in (1, 2):
        with pytest.raises(MegasynthError, match=r"src.jsonl:3: malformed JSON"):
            decontaminate(src, evals, out, workers=workers)
        assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".out*")) == []
    with pytest.raises(MegasynthError, match="missing.jsonl: file not found"):
        decontaminate(tmp_path / "missing.jsonl", evals, out)
    with pytest.raises(MegasynthError, match=r"b.jsonl:1: missing key 'text'"):
        decontaminate(src, {"x": _write(tmp_path / "a2.jsonl", [EVAL_A]),
                            "y": tmp_path / "b.jsonl"} if (tmp_path / "b.jsonl").write_text('{"t": 1}\n') else {},
                      out)
