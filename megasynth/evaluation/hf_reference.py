"""Independent reference scorer: Hugging Face ``transformers`` (the HF ``LlamaForCausalLM`` twin of a
megatron model, :func:`megasynth.model.hf_compat.to_hf_llama`).

Used by the tests (agreement of per-request log-likelihoods with :func:`~megasynth.evaluation.scoring.score_requests`)
and by ``benchmarks/downstream_eval.py`` (throughput). It scores the way lm-evaluation-harness's
``HFLM._loglikelihood_tokens`` does: rows left-truncated to ``seq_length`` with the whole continuation
kept, batches of right-padded rows with an attention mask, full logits ``[b, s, V]``,
``log_softmax`` in fp32, the continuation's log-probabilities gathered and summed.
"""

from __future__ import annotations

from typing import Sequence

import torch

from megasynth.evaluation.scoring import Request, RequestScore, combine_rows, request_rows


@torch.no_grad()
def hf_score_requests(hf_model, requests: Sequence[Request], seq_length: int, batch_size: int = 16) -> list[RequestScore]:
    """Score ``requests`` with a HF causal LM (``model(input_ids, attention_mask).logits`` ``[b, s, V]``).

    Rows are sorted longest first and run ``batch_size`` at a time; returns one :class:`RequestScore`
    per request, in order.
    """
    rows, owner = [], []
    for i, r in enumerate(requests):
        for row in request_rows(r, seq_length, f"requests[{i}]"):
            rows.append(row)
            owner.append(i)
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].inputs), i))
    device = next(hf_model.parameters()).device
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hf_model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        s = max(len(rows[i].inputs) for i in batch)
        ids = torch.zeros((len(batch), s), dtype=torch.long)
        mask = torch.zeros((len(batch), s), dtype=torch.long)
        for c, i in enumerate(batch):
            n = len(rows[i].inputs)
            ids[c, :n] = torch.as_tensor(rows[i].inputs)
            mask[c, :n] = 1
        logprobs = torch.log_softmax(hf_model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(),
                                     dim=-1).cpu()  # [b, s, V]
        for c, i in enumerate(batch):
            r = rows[i]
            n = len(r.inputs)
            lp = logprobs[c, n - r.n_scored:n]  # [k, V]
            tgt = torch.as_tensor(list(r.targets[n - r.n_scored:]))
            out[i] = (-lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1), lp.argmax(-1) == tgt)
    return combine_rows(requests, owner, [out[j] for j in range(len(rows))])
