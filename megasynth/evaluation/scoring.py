"""Log-likelihood scoring of (context, continuation) requests with a megatron-core ``GPTModel``.

The core of downstream evaluation (ranked classification and bits per byte, see
:mod:`megasynth.evaluation.metrics`) and of held-out document evaluation
(:mod:`megasynth.evaluation.heldout`): both reduce to *rows* whose last ``n_scored`` positions are
scored.

A request ``(context, continuation)`` (token ids) becomes one row, as in lm-evaluation-harness and
olmo_eval (``ICLMultiChoiceTaskDataset.prep_examples``)::

    input   = (context + continuation)[:-1][-seq_length:]     # left-truncated, whole continuation kept
    target  = (context + continuation)[1:][-seq_length:]
    scored  = the last len(continuation) positions

A continuation longer than ``seq_length`` (e.g. a whole held-out document, or a long MATH solution)
is cut into consecutive chunks of ``seq_length`` tokens, one row each, so every token is scored once
(:func:`request_rows`).

Rows are sorted by length (longest first), packed several per forward pass up to a token budget
(``rows × longest row ≤ max_batch_tokens``), right-padded, and run through the model with its causal
mask (padding after a row's end cannot influence its positions). A forward pre-hook on
``model.output_layer`` keeps only the scored positions of each row, so the output layer and the
cross-entropy run on ``[b, k]`` positions (``k`` = the longest continuation in the batch) instead of
``[b, s]``: for a 5-shot context of 600 tokens and a 5-token answer that is the difference between
``b·600·V`` and ``b·5·V`` logits.

Requests that share a context (the answer choices of a multiple-choice question) are by default scored
with the context run once: :func:`score_shared_context` prefills the contexts into megatron-core's
static-batching KV cache and runs each continuation from it (local spec; equivalent up to float
rounding). For OLMES tasks with 2–5 choices this divides the tokens run through the model by about the
number of choices.

Per-token losses use megatron-core's vocab-parallel cross-entropy building blocks
(``megatron.core.tensor_parallel.cross_entropy.VocabParallelCrossEntropy``, the code behind the
``labels`` path of ``GPTModel``): ``loss = log Σ_v exp(l_v − max) − (l_target − max)``, with the max,
the target logit and the sum all-reduced over the tensor-parallel group. A token is *greedy* when its
logit equals the maximum over the (padded) vocabulary, which is exact (the target logit is
all-reduced from one rank's value and zeros).

Supported layouts: tensor parallelism (TP ≥ 1, without sequence parallelism), data parallelism
(rows are split over the DP ranks and the results all-gathered on the DP group), no pipeline
parallelism (PP = 1); the local and Transformer Engine specs (context sharing: local spec only; other
specs score each request as its own row); fp32/bf16/fp16 parameters (the cross-entropy runs in fp32).
CPU tests cover TP = PP = DP = 1 only.

Shapes: megatron tensors inside the model are sequence-first ``[s, b, h]``; ``GPTModel`` takes
``input_ids``/``position_ids`` ``[b, s]`` and returns logits ``[b, k, V/tp]`` for the ``k`` kept
positions.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from megasynth.utils import MegasynthError, Progress

logger = logging.getLogger("megasynth.evaluation")

LN2 = math.log(2.0)

DEFAULT_MAX_BATCH_TOKENS = 16_384
"""Default token budget of one forward pass (rows × padded length)."""


@dataclass(frozen=True)
class Request:
    """One log-likelihood request in token ids.

    Attributes:
        context: context ids, including any start-of-document prefix (at least one id).
        continuation: continuation ids (at least one id), scored given the context.
        continuation_bytes: UTF-8 bytes of the continuation *text* (the bits-per-byte denominator);
            0 when unknown.
    """

    context: Sequence[int]
    continuation: Sequence[int]
    continuation_bytes: int = 0


@dataclass(frozen=True)
class RequestScore:
    """Result of one request.

    Attributes:
        loglikelihood: Σ log p(continuation token | preceding tokens), nats (≤ 0).
        num_tokens: continuation tokens scored.
        num_bytes: UTF-8 bytes of the continuation text (``Request.continuation_bytes``).
        is_greedy: every continuation token is the model's argmax (lm-evaluation-harness ``is_greedy``).
    """

    loglikelihood: float
    num_tokens: int
    num_bytes: int
    is_greedy: bool

    @property
    def bits_per_byte(self) -> float:
        """``−loglikelihood / (ln 2 · num_bytes)`` (bits per UTF-8 byte of the continuation; NaN if no bytes)."""
        return -self.loglikelihood / (LN2 * self.num_bytes) if self.num_bytes else float("nan")


@dataclass(frozen=True)
class Row:
    """A scoring row: ``inputs`` and ``targets`` ``[n]`` (targets[i] follows inputs[:i+1]); the last
    ``n_scored`` positions are scored."""

    inputs: Sequence[int]
    targets: Sequence[int]
    n_scored: int


def request_rows(request: Request, seq_length: int, where: str = "request") -> list[Row]:
    """The rows of ``request``: one row of at most ``seq_length`` tokens, left-truncated, when the
    continuation fits; otherwise the continuation is cut into consecutive chunks of ``seq_length``
    tokens, each scored once in a row that ends with it (its context: the tokens before it that fit).

    With ``full = context + continuation`` (``L = seq_length``), the chunk of targets ``full[a:e]``
    (``a`` from ``len(context)`` in steps of ``L``) gets the row ``inputs = full[s:e−1]``,
    ``targets = full[s+1:e]`` with ``s = max(0, e−1−L)``, scoring its last ``e − a`` positions. These are
    lm-evaluation-harness's rolling windows (``utils.get_rolling_token_windows`` with ``context_len=1``):
    a full chunk is predicted from its own tokens and the one before it; the last, partial chunk gets
    ``L`` tokens of input.

    Raises:
        MegasynthError: an empty context or continuation.
    """
    ctx, cont = list(request.context), list(request.continuation)
    if not ctx:
        raise MegasynthError(f"{where}: empty context (prefix a start-of-document token)")
    if not cont:
        raise MegasynthError(f"{where}: empty continuation")
    if seq_length < 1:
        raise MegasynthError(f"{where}: seq_length must be >= 1, got {seq_length}")
    full = ctx + cont
    rows = []
    for a in range(len(ctx), len(full), seq_length):
        e = min(a + seq_length, len(full))  # targets full[a:e] are predicted from inputs full[a-1:e-1]
        start = max(0, e - 1 - seq_length)
        rows.append(Row(full[start:e - 1], full[start + 1:e], e - a))
    return rows


def encode_requests(tokenizer, pairs: Sequence[tuple[str, str]], prefix_id: int | None = None) -> list[Request]:
    """Tokenize ``(context, continuation)`` strings into :class:`Request` s.

    Context and continuation are encoded separately (as olmo_eval does), without special tokens, and
    ``prefix_id`` (default: the tokenizer's ``eod``, which precedes every document in the study's
    training stream) is put before the context.

    Args:
        tokenizer: a :class:`megasynth.data.tokenizer.MegasynthTokenizer`.
        pairs: ``(context, continuation)`` texts; the continuation usually starts with a space.
    """
    prefix = tokenizer.eod if prefix_id is None else prefix_id
    texts = [t for pair in pairs for t in pair]
    ids = tokenizer.tokenize_batch(texts) if texts else []
    return [Request([prefix] + ids[2 * i], ids[2 * i + 1], len(cont.encode("utf-8")))
            for i, (_, cont) in enumerate(pairs)]


# --------------------------------------------------------------------------------------------------
# megatron-core forward
# --------------------------------------------------------------------------------------------------
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The ``GPTModel`` inside DDP / ``Float16Module`` wrappers (``.module`` chains)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _check_layout(model: torch.nn.Module) -> None:
    from megatron.core import parallel_state as ps

    inner = unwrap(model)
    if not hasattr(inner, "output_layer") or not getattr(inner, "pre_process", True):
        raise MegasynthError("evaluation: the scorer needs a whole GPTModel (pipeline_model_parallel_size 1)")
    if ps.model_parallel_is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
        raise MegasynthError("evaluation: pipeline_model_parallel_size > 1 is not supported by the scorer")
    if getattr(inner.config, "sequence_parallel", False):
        raise MegasynthError("evaluation: sequence_parallel is not supported by the scorer")


@contextlib.contextmanager
def _keep_positions(model: torch.nn.Module, index: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model.output_layer`` sees only hidden states ``[k, b, h]`` at ``index [k, b]``."""
    out = unwrap(model).output_layer

    def pre_hook(_module, args, kwargs):
        hidden = args[0]  # [s, b, h]
        idx = index.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        return (torch.gather(hidden, 0, idx),) + tuple(args[1:]), kwargs

    handle = out.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def token_losses(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                 vocab_parallel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy and greedy flags from (vocab-parallel) logits.

    Args:
        vocab_parallel_logits: ``[..., V/tp]`` this TP rank's slice of the logits (consumed: the
            buffer is overwritten when it is already fp32).
        target: ``[...]`` token ids (global vocabulary).
        vocab_parallel: ``False`` when the logits are already gathered over the TP group (whole vocabulary).

    Returns:
        ``(loss [...], greedy [...])``: ``−log p(target)`` in nats (fp32) and whether the target's
        logit is the maximum over the whole vocabulary.

    Source: megatron-core ``VocabParallelCrossEntropy`` (``calculate_logits_max``,
    ``calculate_predicted_logits``, ``calculate_cross_entropy_loss``), the forward of
    ``tensor_parallel.vocab_parallel_cross_entropy``.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy as VPCE
    from megatron.core.tensor_parallel.utils import VocabUtility

    tp = ps.get_tensor_model_parallel_world_size() if vocab_parallel and ps.model_parallel_is_initialized() else 1
    group = ps.get_tensor_model_parallel_group() if tp > 1 else None
    logits, logits_max = VPCE.calculate_logits_max(vocab_parallel_logits)
    if tp > 1:
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
    rank = ps.get_tensor_model_parallel_rank() if tp > 1 else 0
    start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(logits.size(-1), rank, tp)
    _, _, predicted, sum_exp, exp_logits = VPCE.calculate_predicted_logits(logits, target, logits_max, start, end)
    if tp > 1:
        dist.all_reduce(predicted, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM, group=group)
    greedy = predicted == 0.0  # target logit − max logit, exact
    _, loss = VPCE.calculate_cross_entropy_loss(exp_logits, predicted, sum_exp)
    return loss, greedy


def _batches(rows: Sequence[Row], order: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Split ``order`` (row indices, longest first) into batches within the token budget."""
    batches: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        n = len(rows[i].inputs)
        w = max(width, n)
        if cur and (w * (len(cur) + 1) > max_batch_tokens or len(cur) >= max_batch_size):
            batches.append(cur)
            cur, w = [], n
        cur.append(i)
        width = w
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def score_rows(model: torch.nn.Module, rows: Sequence[Row], *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
               max_batch_size: int = 256, progress: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-token losses and greedy flags of the scored positions of every row.

    Args:
        model: a megatron-core ``GPTModel`` (wrapped or not), whole (PP = 1); put in eval mode for the
            call and restored after.
        rows: rows of at most the model's sequence length; padding uses id 0.
        max_batch_tokens: budget of one forward pass, rows × longest row (tokens); a row longer than
            the budget runs alone.
        max_batch_size: at most this many rows per forward pass.
        progress: name of a progress log line (rate and ETA), or ``None``.

    Returns:
        For each row, in order: ``(loss [n_scored] fp32 nats, greedy [n_scored] bool)`` on CPU. With
        data parallelism every DP rank scores a share of the rows and all ranks return all results.

    Raises:
        MegasynthError: pipeline or sequence parallelism; a row with ``n_scored`` outside ``[1, len]``.
    """
    from megatron.core import parallel_state as ps

    _check_layout(model)
    for i, r in enumerate(rows):
        if not (1 <= r.n_scored <= len(r.inputs)) or len(r.inputs) != len(r.targets):
            raise MegasynthError(f"rows[{i}]: n_scored {r.n_scored} outside [1, {len(r.inputs)}] "
                                 f"or inputs/targets of different lengths")
    dp = ps.get_data_parallel_world_size() if ps.model_parallel_is_initialized() else 1
    dp_rank = ps.get_data_parallel_rank() if dp > 1 else 0
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].inputs), i))[dp_rank::dp]
    batches = _batches(rows, order, max_batch_tokens, max_batch_size)
    device = next(unwrap(model).parameters()).device
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = Progress(progress, total=len(order), unit="rows") if progress else None
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            b, s = len(batch), max(len(rows[i].inputs) for i in batch)
            k = max(rows[i].n_scored for i in batch)
            tokens = torch.zeros((b, s), dtype=torch.long)
            targets = torch.zeros((b, k), dtype=torch.long)
            index = torch.zeros((k, b), dtype=torch.long)  # position of scored token j of row c
            for c, i in enumerate(batch):
                r = rows[i]
                n = len(r.inputs)
                tokens[c, :n] = torch.as_tensor(r.inputs, dtype=torch.long)
                pos = torch.arange(n - r.n_scored, n)
                index[: r.n_scored, c] = pos
                index[r.n_scored:, c] = n - 1
                targets[c, : r.n_scored] = torch.as_tensor(list(r.targets[n - r.n_scored:]), dtype=torch.long)
            position_ids = torch.arange(s, dtype=torch.long).unsqueeze(0).expand(b, -1)
            with _keep_positions(model, index):
                logits = model(tokens.to(device), position_ids.to(device), None)  # [b, k, V/tp]
            loss, greedy = token_losses(logits.float(), targets.to(device))  # [b, k]
            loss, greedy = loss.cpu(), greedy.cpu()
            for c, i in enumerate(batch):
                n_sc = rows[i].n_scored
                results[i] = (loss[c, :n_sc].clone(), greedy[c, :n_sc].clone())
            if bar:
                bar.update(b)
    finally:
        model.train(was_training)
        if bar:
            bar.close()
    _gather_over_dp(results, dp)
    return [results[i] for i in range(len(rows))]


def _gather_over_dp(results: dict, dp: int) -> None:
    """Merge into ``results`` (row index -> result) every data-parallel rank's share of the rows."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if dp > 1:
        gathered: list = [None] * dp
        dist.all_gather_object(gathered, results, group=ps.get_data_parallel_group())
        for part in gathered:
            results.update(part)


def score_requests(model: torch.nn.Module, requests: Sequence[Request], seq_length: int | None = None, *,
                   max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_batch_size: int = 256,
                   share_context: bool = True, progress: str | None = None) -> list[RequestScore]:
    """Score ``requests`` with a megatron-core ``GPTModel``.

    Args:
        model: ``GPTModel`` (see :func:`score_rows` for the layouts supported).
        requests: token-id requests (:func:`encode_requests` makes them from text).
        seq_length: longest row in tokens (default: the model's ``max_sequence_length``); longer
            contexts are left-truncated, keeping the whole continuation; a continuation longer than
            ``seq_length`` is scored in consecutive chunks (:func:`request_rows`).
        max_batch_tokens, max_batch_size, progress: see :func:`score_rows`.
        share_context: run a context shared by several requests (the answer choices of a question) once
            and its continuations from its KV cache (:func:`score_shared_context`; local spec only). The
            group's context is left-truncated once, to ``seq_length − longest continuation + 1`` tokens,
            so every choice is conditioned on the same tokens; without sharing each request is truncated
            on its own (olmo_eval's and lm-evaluation-harness's rule), which differs only when the
            context does not fit.

    Returns:
        One :class:`RequestScore` per request, in order.

    Raises:
        MegasynthError: an empty context or continuation (``requests[i]: ...``), an unsupported
            parallel layout.
    """
    seq_length = seq_length or unwrap(model).max_sequence_length
    shared, view = group_shared_contexts(requests, seq_length) if share_context and _local_attention(model) \
        else ([], list(requests))
    in_shared = {i for ids in shared for i in ids}
    rows, owner = [], []
    for i, r in enumerate(requests):
        if i not in in_shared:
            for row in request_rows(r, seq_length, f"requests[{i}]"):
                rows.append(row)
                owner.append(i)
    out = score_rows(model, rows, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                     progress=progress) if rows else []
    if shared:
        res = score_shared_context(model, view, shared, max_batch_tokens=max_batch_tokens, progress=progress)
        owner = owner + sorted(res)
        out = list(out) + [res[i] for i in sorted(res)]
    return combine_rows(requests, owner, out)


def group_shared_contexts(requests: Sequence[Request], seq_length: int) -> tuple[list[list[int]], list[Request]]:
    """Groups of requests with the same context, and the requests as :func:`score_requests` scores them.

    A group is two or more requests with identical ``context`` whose longest continuation fits
    ``seq_length``; its context is left-truncated once to ``seq_length − longest continuation + 1``
    tokens for all members. Returns ``(groups as lists of request indices, requests with the group
    contexts applied)``; requests outside groups are returned unchanged.
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        if len(r.context) and len(r.continuation):
            groups.setdefault(tuple(r.context), []).append(i)
    shared, view = [], list(requests)
    for ctx, ids in groups.items():
        keep = seq_length - max(len(requests[i].continuation) for i in ids) + 1
        if len(ids) > 1 and keep >= 1:
            shared.append(ids)
            for i in ids:
                view[i] = Request(list(ctx[-keep:]), requests[i].continuation, requests[i].continuation_bytes)
    return shared, view


def _local_attention(model: torch.nn.Module) -> bool:
    """Whether the model's core attention is megatron-core's ``DotProductAttention`` (local spec), whose
    static-batching KV cache and explicit attention masks :func:`score_shared_context` relies on."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    inner = unwrap(model)
    layers = getattr(getattr(inner, "decoder", None), "layers", None)
    return bool(layers) and isinstance(layers[0].self_attention.core_attention, DotProductAttention) \
        and not getattr(inner.config, "flash_decode", False)


@torch.no_grad()
def score_shared_context(model: torch.nn.Module, requests: Sequence[Request], groups: Sequence[Sequence[int]], *,
                         max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                         progress: str | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per-token losses and greedy flags of requests that share a context, the context run once.

    Each group (indices of requests with the same ``context`` that fit whole in the model's sequence
    length with their continuation) is scored with megatron-core's static-batching KV cache
    (``megatron.core.inference.contexts.StaticInferenceContext``):

    1. *prefill*: the contexts of several groups, left-padded to the longest ``P`` → ``[G, P]`` with an
       explicit mask (causal, padding keys masked; RoPE is relative, so a left-padded row gives the
       unpadded row's numbers); the last position's logits predict each continuation's first token;
    2. *continuations*: the cache rows are repeated for each member (``index_select`` on the batch
       dimension), and the continuations without their last token, right-padded to ``S`` → ``[B, S]``,
       run at offset ``P`` with a mask over ``[B, 1, S, P + S]`` (the group's padding and the causal
       part among the continuation's tokens).

    Prefill batches hold groups while ``G × P`` stays within ``max_batch_tokens``; the continuations of a
    batch run longest first in chunks whose cache rows (``rows × (P + S)``) stay within it.
    Equivalent to :func:`score_rows` up to float rounding (tested against the HF twin).

    Returns:
        ``{request index: (loss [len(continuation)], greedy [len(continuation)])}`` for every member of
        every group, on every DP rank.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.inference.contexts import StaticInferenceContext

    _check_layout(model)
    dp = ps.get_data_parallel_world_size() if ps.model_parallel_is_initialized() else 1
    dp_rank = ps.get_data_parallel_rank() if dp > 1 else 0
    order = sorted(range(len(groups)), key=lambda g: (-len(requests[groups[g][0]].context), g))[dp_rank::dp]
    batches: list[list[int]] = []
    cur: list[int] = []
    for g in order:  # prefill batches: groups × longest context within the budget
        if cur and (len(cur) + 1) * len(requests[groups[cur[0]][0]].context) > max_batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(g)
    if cur:
        batches.append(cur)

    device = next(unwrap(model).parameters()).device
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = Progress(f"{progress} (shared contexts)", total=len(order), unit="contexts") if progress else None
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ctxs = [list(requests[groups[g][0]].context) for g in batch]
            member = [i for g in batch for i in groups[g]]
            owner = torch.tensor([c for c, g in enumerate(batch) for _ in groups[g]])
            conts = [list(requests[i].continuation) for i in member]
            G, P, B = len(batch), max(map(len, ctxs)), len(member)
            S = max(map(len, conts)) - 1
            pad = torch.tensor([P - len(c) for c in ctxs])
            tokens = torch.zeros((G, P), dtype=torch.long)
            for c, ctx in enumerate(ctxs):
                tokens[c, P - len(ctx):] = torch.as_tensor(ctx)
            pos = torch.arange(P + S)
            # True = masked (megatron's attention_mask_func): padding keys and keys after the query.
            mask = (pos[None, None, :P] < pad[:, None, None]) | (pos[None, None, :P] > pos[None, :P, None])
            cache = StaticInferenceContext(G, P)
            logits = model(tokens.to(device), pos[:P].expand(G, -1).to(device), mask[:, None].to(device),
                           inference_context=cache, runtime_gather_output=True)  # [G, 1, V]
            first = torch.tensor([c[0] for c in conts])
            # (inference mode gathers the logits over TP: whole vocabulary on every rank)
            loss0, greedy0 = token_losses(logits[owner.to(device), -1].float(), first.to(device), vocab_parallel=False)
            loss0, greedy0 = loss0.cpu(), greedy0.cpu()
            # Continuations longest first, in chunks whose cache rows (members × (P + S)) fit the budget.
            by_len = sorted(range(B), key=lambda b: -len(conts[b]))
            chunks: list[list[int]] = []
            for b in by_len:
                if len(conts[b]) == 1:  # (its only token was predicted by the prefill)
                    break
                if not chunks or (len(chunks[-1]) + 1) * (P + len(conts[chunks[-1][0]]) - 1) > max_batch_tokens:
                    chunks.append([])
                chunks[-1].append(b)
            rest_loss: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            for chunk in chunks:
                Sc = len(conts[chunk[0]]) - 1
                idx = owner[chunk].to(device)
                rest = StaticInferenceContext(len(chunk), P + Sc)
                rest.materialize_only_last_token_logits = False
                for layer, kv in cache.key_value_memory_dict.items():
                    rows = []
                    for t in kv:  # [P, G, groups, d] → [P + Sc, rows, groups, d], first P filled
                        buf = t.new_empty((P + Sc, len(chunk)) + tuple(t.shape[2:]))
                        buf[:P] = t.index_select(1, idx)
                        rows.append(buf)
                    rest.key_value_memory_dict[layer] = tuple(rows)
                rest.sequence_len_offset = P
                inputs = torch.zeros((len(chunk), Sc), dtype=torch.long)
                targets = torch.zeros((len(chunk), Sc), dtype=torch.long)
                for r, b in enumerate(chunk):
                    n = len(conts[b]) - 1
                    inputs[r, :n] = torch.as_tensor(conts[b][:-1])
                    targets[r, :n] = torch.as_tensor(conts[b][1:])
                q = pos[P:P + Sc]  # absolute positions of the continuation inputs
                mask2 = ((pos[None, None, :P + Sc] < pad[owner[chunk]][:, None, None])
                         | (pos[None, None, :P + Sc] > q[None, :, None]))
                logits2 = model(inputs.to(device), q.expand(len(chunk), -1).to(device), mask2[:, None].to(device),
                                inference_context=rest, runtime_gather_output=True)  # [rows, Sc, V]
                loss, greedy = token_losses(logits2.float(), targets.to(device), vocab_parallel=False)
                loss, greedy = loss.cpu(), greedy.cpu()
                for r, b in enumerate(chunk):
                    n = len(conts[b]) - 1
                    rest_loss[b] = (loss[r, :n], greedy[r, :n])
                del rest
            del cache
            for b, i in enumerate(member):
                lo, gr = loss0[b:b + 1], greedy0[b:b + 1]
                if b in rest_loss:
                    lo, gr = torch.cat([lo, rest_loss[b][0]]), torch.cat([gr, rest_loss[b][1]])
                results[i] = (lo.clone(), gr.clone())
            if bar:
                bar.update(G)
    finally:
        model.train(was_training)
        if bar:
            bar.close()
    _gather_over_dp(results, dp)
    return results


def combine_rows(requests: Sequence[Request], owner: Sequence[int],
                 row_results: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[RequestScore]:
    """Sum the rows of each request (``owner[j]`` = request of row ``j``) into :class:`RequestScore` s."""
    ll = [0.0] * len(requests)
    n = [0] * len(requests)
    greedy = [True] * len(requests)
    for i, (loss, g) in zip(owner, row_results):
        ll[i] -= float(loss.double().sum())
        n[i] += len(loss)
        greedy[i] = greedy[i] and bool(g.all())
    return [RequestScore(ll[i], n[i], r.continuation_bytes, greedy[i]) for i, r in enumerate(requests)]
