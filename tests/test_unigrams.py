"""Unigram statistics over real Megatron indexed datasets written in the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megasynth.analysis.cli import main
from megasynth.analysis.unigrams import (compare_corpora, count_unigrams, coverage, distribution_stats, kl_divergence,
                                         loss_by_type, rare_loss_contributors, read_index_dtype)
from megasynth.utils import MegasynthError


def _write(prefix, docs, dtype=np.uint16):
    b = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for d in docs:
        b.add_document(np.asarray(d, dtype=dtype), [len(d)])
    b.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture
def corpora(tmp_path):
    rng = np.random.default_rng(0)
    train = [rng.zipf(1.5, 500) % 300 for _ in range(20)]
    ev = [rng.zipf(1.3, 300) % 400 for _ in range(5)]
    return (_write(tmp_path / "train", train), np.concatenate(train),
            _write(tmp_path / "eval", ev, np.int32), np.concatenate(ev))


def test_counts_kl_coverage_equal_direct_numpy(corpora):
    tp, t, ep, e = corpora
    assert read_index_dtype(tp)[0] == np.uint16 and read_index_dtype(ep)[0] == np.int32
    V = 400
    ct = count_unigrams(tp, V, chunk_tokens=777)  # several chunks
    ce = count_unigrams(ep + ".bin", V)
    np.testing.assert_array_equal(ct, np.bincount(t, minlength=V))
    np.testing.assert_array_equal(ce, np.bincount(e, minlength=V))
    # Direct computation.
    p = np.bincount(e, minlength=V) / e.size
    q = (np.bincount(t, minlength=V) + 0.5) / (t.size + 0.5 * V)
    kl = sum(p[i] * np.log(p[i] / q[i]) for i in range(V) if p[i] > 0)
    assert kl_divergence(ce, ct, smoothing=0.5) == pytest.approx(kl, rel=1e-12)
    ev_types = set(e.tolist())
    seen = ev_types & set(t.tolist())
    cov = coverage(ce, ct)
    assert cov["type_coverage"] == pytest.approx(len(seen) / len(ev_types))
    assert cov["token_coverage"] == pytest.approx(np.isin(e, list(seen)).mean())
    assert cov["eval_types_unseen"] == len(ev_types - seen) > 0
    with pytest.raises(MegasynthError, match="infinite"):
        kl_divergence(ce, ct, smoothing=0.0)
    st = distribution_stats(ct, top_k=10)
    pt = np.bincount(t) / t.size
    assert st["entropy_nats"] == pytest.approx(-(pt[pt > 0] * np.log(pt[pt > 0])).sum())
    assert st["tail_mass_beyond_top_k"] == pytest.approx(np.sort(pt)[::-1][10:].sum())
    assert st["types"] == len(set(t.tolist())) and st["tokens"] == t.size


def test_rare_unigram_loss_attribution(corpora):
    tp, t, ep, e = corpora
    V = 400
    losses = np.where(np.bincount(t, minlength=V)[e] == 0, 9.0, 2.0)  # unseen types cost more
    losses[0] = np.nan  # first token has no prediction
    s, n = loss_by_type(ep, losses, V)
    assert n.sum() == e.size - 1 and s.sum() == pytest.approx(np.nansum(losses))
    ct = count_unigrams(tp, V)
    res = rare_loss_contributors(s, n, ct, rare_count=0, top=5)
    assert res["mean_loss_rare"] == pytest.approx(9.0) and res["mean_loss_other"] == pytest.approx(2.0)
    assert all(r["train_count"] == 0 for r in res["top"]) and len(res["top"]) == 5
    with pytest.raises(MegasynthError, match="aligned"):
        loss_by_type(ep, losses[:-1], V)


def test_compare_corpora_and_cli(corpora, tmp_path, capsys):
    tp, t, ep, e = corpora
    res = compare_corpora({"nat": tp}, {"ev": ep}, vocab_size=400)
    assert res["pairs"][0]["kl_nats"] > 0 and res["corpora"]["nat"]["role"] == "train"
    np.save(tmp_path / "loss.npy", np.full(e.size, 3.0))
    out = tmp_path / "u.json"
    rc = main(["analyze", "unigrams", "--train", f"nat={tp}", "--eval", f"ev={ep}", "--vocab-size", "400",
               "--losses", f"ev={tmp_path / 'loss.npy'}", "--out", str(out), "--png", str(tmp_path / "u.png")])
    assert rc == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["pairs"][0]["kl_nats"] == pytest.approx(res["pairs"][0]["kl_nats"])
    assert d["rare_loss"]["ev"]["mean_loss_rare"] == pytest.approx(3.0)
    assert (tmp_path / "u.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" + bytes(40))
    assert main(["analyze", "unigrams", "--train", f"x={tmp_path / 'bad'}", "--eval", f"ev={ep}",
                 "--out", str(out)]) == 2
    assert "bad header" in capsys.readouterr().err
