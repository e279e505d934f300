"""Downstream metrics from per-request log-likelihoods, as OLMES and olmo_eval define them.

For an instance with answer choices ``c`` (continuation texts), gold choice ``g`` and summed
continuation log-likelihoods ``LL_c`` (nats):

- ``acc`` (OLMES ``acc_raw``; olmo_eval ``metric_type="acc"``): ``argmax_c LL_c == g``.
- ``acc_norm`` (OLMES ``acc_per_char``; olmo_eval ``metric_type="len_norm"``, its "v2" with the
  leading space counted): ``argmax_c LL_c / chars(c) == g``, ``chars`` = ``len(continuation_str)``.
- ``bpb`` (OLMES ``logits_per_byte``; olmo_eval ``bpb_v2``): bits per UTF-8 byte of the gold answer,
  ``−LL_g / (ln 2 · bytes(g))``.

Each is averaged over instances (olmo_eval ``ICLMetric.compute``: ``sum(correct) / len(correct)``,
``sum(bpb) / len(bpb)``). Ties in the argmax go to the lowest choice index (``torch.argmax``).

Sources: Gu et al. 2024, "OLMES: A Standard for Language Model Evaluations", §3 (normalisation
choices); olmo_eval 0.9.0 ``metrics.py`` (``ICLMetric.update``/``compute``). The tests check these
numbers against ``olmo_eval.ICLMetric`` fed with real logits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from megasynth.evaluation.scoring import RequestScore
from megasynth.utils import MegasynthError

LN2 = math.log(2.0)


def task_metrics(requests: Sequence, scores: Sequence[RequestScore], kind: str = "mc") -> dict[str, float]:
    """``{"acc", "acc_norm", "bpb"}`` (``kind="mc"``) or ``{"bpb"}`` (``kind="bpb"``), means over instances.

    Args:
        requests: :class:`~megasynth.evaluation.tasks.TaskRequest` s (``doc_id``, ``cont_id``, ``label``,
            ``continuation_chars``, ``request.continuation_bytes``).
        scores: the :class:`RequestScore` of each request, in the same order.

    Raises:
        MegasynthError: lengths differ; an instance lacks a choice index below its largest, or its gold
            choice; a gold answer with 0 bytes.
    """
    if len(requests) != len(scores):
        raise MegasynthError(f"scores: {len(scores)} for {len(requests)} requests")
    by_doc: dict[int, dict[int, tuple]] = defaultdict(dict)
    gold: dict[int, int] = {}
    for r, s in zip(requests, scores):
        by_doc[r.doc_id].setdefault(r.cont_id, (s.loglikelihood, r.continuation_chars, s.num_bytes))
        gold.setdefault(r.doc_id, r.label)
    acc, acc_norm, bpb = [], [], []
    for doc, conts in by_doc.items():
        n = max(conts) + 1
        if len(conts) != n or gold[doc] not in conts:
            raise MegasynthError(f"requests: instance {doc} has choices {sorted(conts)} and gold {gold[doc]}")
        ll = np.array([conts[c][0] for c in range(n)])
        chars = np.array([conts[c][1] for c in range(n)], dtype=np.float64)
        g = gold[doc]
        gold_bytes = conts[g][2]
        if gold_bytes <= 0:
            raise MegasynthError(f"requests: instance {doc} has a gold answer of 0 bytes")
        bpb.append(-conts[g][0] / (LN2 * gold_bytes))
        if kind == "mc":
            acc.append(float(np.argmax(ll) == g))
            acc_norm.append(float(np.argmax(ll / chars) == g))
    out = {"bpb": float(np.mean(bpb))}
    if kind == "mc":
        out = {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), **out}
    return out
