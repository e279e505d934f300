"""Question–answer training data: loss on answer tokens only, packed and blended like natural text.

SynthLLM (and any JSONL with ``question``/``answer`` keys) becomes two parallel Megatron indexed datasets:

- ``<prefix>.{bin,idx}``: one document per record: ``prompt ids + answer ids + [eod]``. With the ``plain``
  format the prompt is ``"Question: {question}\\nAnswer:"`` and the answer ``" {answer}"``; with ``chat``
  the tokenizer's chat template renders the user turn (``add_generation_prompt=True``) as the prompt and
  the rest of the rendered ``[user, assistant]`` conversation as the answer (for Llama-3 Instruct: the
  answer text and ``<|eot_id|>``). Prompt and answer are tokenized separately, so the boundary is exact.
- ``<prefix>_loss_mask.{bin,idx}`` (uint8, the same sequence lengths): 1 on every answer token and on the
  ``eod`` that ends the record (the model learns where an answer stops), 0 on prompt tokens.

:class:`LossMaskedGPTDataset` is megatron-core's ``GPTDataset`` (documents packed into samples of
``seq_length + 1`` tokens across EOD boundaries, shuffled, blended by ``BlendedMegatronDatasetBuilder``)
that, for a prefix with a ``_loss_mask`` companion, reads the mask bits of the same sample span and
multiplies them into megatron's ``loss_mask`` at the *label* positions (``loss_mask[i]`` weights the
prediction of ``labels[i] = tokens[i + 1]``). Prefixes without the companion behave exactly as
``GPTDataset``, so a blend of natural text and QA data is one ``BlendedDataset`` whose natural samples
count every token and whose QA samples count answer tokens only. megatron-core 0.16.1 has no SFT dataset
in ``megatron.core.datasets`` (Megatron-LM's ``SFTDataset`` lives in ``megatron.training`` and pads one
conversation per sample instead of packing).

Raises :class:`~megasynth.utils.MegasynthError` with ``file:line`` for a record without a question or an
answer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Literal, Optional

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megasynth.utils import MegasynthError, Progress, read_jsonl_numbered

logger = logging.getLogger("megasynth.data")

LOSS_MASK_SUFFIX = "_loss_mask"
"""Suffix of the loss-mask indexed dataset beside a QA prefix."""
PLAIN_PROMPT = "Question: {question}\nAnswer:"
PLAIN_ANSWER = " {answer}"
PromptFormat = Literal["plain", "chat", "auto"]
BATCH_RECORDS = 1000


def loss_mask_prefix(prefix: str | os.PathLike) -> str:
    """The loss-mask companion prefix of ``prefix`` (``<prefix>_loss_mask``)."""
    return f"{prefix}{LOSS_MASK_SUFFIX}"


def _chat_renderer(tokenizer):
    """``transformers`` tokenizer carrying the chat template of the study's HF tokenizer directory, or None."""
    if getattr(tokenizer, "kind", None) != "huggingface":
        return None
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(Path(tokenizer.path).parent), local_files_only=True)
    return hf if getattr(hf, "chat_template", None) else None


def _records(paths: Iterable[Path], question_key: str, answer_key: str, level: Optional[int] = None):
    for path in paths:
        for lineno, rec in read_jsonl_numbered(path):
            if level is not None and rec.get("level") != level:
                continue
            for key in (question_key, answer_key):
                v = rec.get(key)
                if not isinstance(v, str) or not v.strip():
                    raise MegasynthError(f"{path}:{lineno}: record has no {'answer' if key == answer_key else 'question'}"
                                         f" (key {key!r} missing, empty or not a string)")
            yield rec[question_key], rec[answer_key]


def preprocess_qa_jsonl(paths: Iterable[str | os.PathLike], output_prefix: str | os.PathLike, tokenizer,
                        prompt_format: PromptFormat = "plain", question_key: str = "question",
                        answer_key: str = "answer", level: Optional[int] = None) -> dict:
    """Tokenize question–answer JSONL into ``output_prefix.{bin,idx}`` and ``output_prefix_loss_mask.{bin,idx}``.

    Args:
        paths: JSONL files, one record per line with string ``question_key`` and ``answer_key``.
        output_prefix: Megatron data prefix (parents created).
        tokenizer: the study's tokenizer (:class:`megasynth.data.tokenizer.MegasynthTokenizer`); ``eod`` ends
            every record.
        prompt_format: ``plain`` (``Question: …\\nAnswer: …``), ``chat`` (the chat template of a
            ``huggingface`` tokenizer directory), ``auto`` (chat when the tokenizer has a template).
        level: only the records whose ``level`` is this (SynthLLM's concept-combination level, 1-3); ``None``: all.

    Returns:
        Stats: ``documents`` (records), ``tokens`` (incl. EOD), ``loss_tokens`` (answer tokens + EOD),
        ``prompt_format`` (the one used), ``tokenizer``, ``tokenizer_sha``, ``vocab_size``, ``dtype``, ``inputs``, ``level`` (when given).

    Files are written under temporary names and renamed when complete: the mask first, the token
    ``.idx`` last, so a prefix whose ``.idx`` exists has its mask.

    Raises:
        MegasynthError: a missing file; ``file:line`` for malformed JSON or a record without a question
            or answer; ``prompt_format: chat`` with a tokenizer that has no chat template.
    """
    from megasynth.data.indexed import IndexedWriter, optimal_dtype

    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise MegasynthError(f"{p}: input file not found")
    if prompt_format not in ("plain", "chat", "auto"):
        raise MegasynthError(f"prompt_format: must be one of plain, chat, auto, got {prompt_format!r}")
    chat = _chat_renderer(tokenizer) if prompt_format in ("chat", "auto") else None
    if prompt_format == "chat" and chat is None:
        raise MegasynthError(f"prompt_format: chat needs a tokenizer with a chat template ({tokenizer.name} has none; "
                             "use tokenizer.type huggingface with an instruct model's tokenizer directory)")
    used = "chat" if chat is not None else "plain"
    out = Path(output_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    mask_out = Path(loss_mask_prefix(out))
    tmp = {p: p.parent / f".{p.name}.tmp{os.getpid()}" for p in (out, mask_out)}
    dtype = optimal_dtype(tokenizer.vocab_size)
    tokens_w = IndexedWriter(f"{tmp[out]}.bin", dtype)
    mask_w = IndexedWriter(f"{tmp[mask_out]}.bin", np.uint8)
    stats = {"documents": 0, "tokens": 0, "loss_tokens": 0}
    progress = Progress(f"tokenize QA {out.name}", None, unit="records")

    def flush(batch: list[tuple[str, str]]) -> None:
        prompts, answers = _render(batch, chat)
        p_ids, a_ids = tokenizer.tokenize_batch(prompts), tokenizer.tokenize_batch(answers)
        ids, bits, lens = [], [], []
        for p, a in zip(p_ids, a_ids):
            ids.append(np.asarray([*p, *a, tokenizer.eod], dtype=np.int64))
            bits.append(np.concatenate([np.zeros(len(p), np.uint8), np.ones(len(a) + 1, np.uint8)]))
            lens.append(len(p) + len(a) + 1)
        lens_a = np.asarray(lens, np.int32)
        ones = np.ones(len(lens), np.int64)
        tokens_w.append(np.concatenate(ids), lens_a, ones)
        mask_w.append(np.concatenate(bits), lens_a, ones)
        stats["documents"] += len(batch)
        stats["tokens"] += int(lens_a.sum())
        stats["loss_tokens"] += int(sum(int(b.sum()) for b in bits))
        progress.update(len(batch))

    try:
        batch: list[tuple[str, str]] = []
        for qa in _records(paths, question_key, answer_key, level):
            batch.append(qa)
            if len(batch) >= BATCH_RECORDS:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        mask_w.finalize(f"{tmp[mask_out]}.idx")
        tokens_w.finalize(f"{tmp[out]}.idx")
        for p in (mask_out, out):  # the token .idx last
            os.replace(f"{tmp[p]}.bin", f"{p}.bin")
            os.replace(f"{tmp[p]}.idx", f"{p}.idx")
    finally:
        tokens_w.close()
        mask_w.close()
        for p in tmp.values():
            for ext in (".bin", ".idx"):
                Path(f"{p}{ext}").unlink(missing_ok=True)
    progress.close()
    stats.update(prompt_format=used, tokenizer=tokenizer.name,
                 tokenizer_sha=getattr(tokenizer, "unique_identifiers", {}).get("sha"), vocab_size=tokenizer.vocab_size,
                 dtype=dtype.name, inputs=[str(p) for p in paths])
    if level is not None:
        stats["level"] = level
    logger.info("tokenized QA %s: %d records, %d tokens (%d with loss), %s format -> %s", out.name,
                stats["documents"], stats["tokens"], stats["loss_tokens"], used, out)
    return stats


def _render(batch: list[tuple[str, str]], chat) -> tuple[list[str], list[str]]:
    """(prompt texts, answer texts) of ``(question, answer)`` pairs."""
    if chat is None:
        return ([PLAIN_PROMPT.format(question=q) for q, _ in batch], [PLAIN_ANSWER.format(answer=a) for _, a in batch])
    prompts, answers = [], []
    for q, a in batch:
        user = [{"role": "user", "content": q}]
        prompt = chat.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = chat.apply_chat_template(user + [{"role": "assistant", "content": a}], tokenize=False)
        if not full.startswith(prompt):
            raise MegasynthError("prompt_format: the chat template's generation prompt is not a prefix of the rendered "
                                 "conversation; use prompt_format: plain")
        prompts.append(prompt)
        answers.append(full[len(prompt):])
    return prompts, answers


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------
class LossMaskedGPTDataset(GPTDataset):
    """megatron-core ``GPTDataset`` that applies a prefix's ``_loss_mask`` companion, if it has one.

    ``ds[i]`` is GPTDataset's dict (``tokens``, ``labels``, ``loss_mask``, ``position_ids``, each ``[s]``);
    with a companion, ``loss_mask`` is additionally 0 where ``labels`` is a prompt token. Not thread-safe
    (the mask is read through the same index walk as the tokens); DataLoader worker processes are fine.

    Raises:
        MegasynthError: a companion whose sequence lengths differ from the token dataset's.
    """

    def __init__(self, indexed_dataset, dataset_path: Optional[str], *args, **kwargs) -> None:
        super().__init__(indexed_dataset, dataset_path, *args, **kwargs)
        self.loss_mask_dataset = None
        companion = loss_mask_prefix(dataset_path) if dataset_path else None
        if companion and Path(f"{companion}.idx").is_file():
            mask = IndexedDataset(companion, mmap=self.config.mmap_bin_files)
            if not np.array_equal(mask.sequence_lengths, indexed_dataset.sequence_lengths):
                raise MegasynthError(f"{companion}.idx: sequence lengths differ from {dataset_path}.idx "
                                     "(re-run the QA preprocessing)")
            self.loss_mask_dataset = mask

    def _answer_bits(self, idx: Optional[int]) -> np.ndarray:
        """The mask bits of sample ``idx``'s ``seq_length + 1`` tokens (GPTDataset's own index walk)."""
        tokens = self.dataset
        self.dataset = self.loss_mask_dataset
        try:
            # (ids, document ids) in megatron-core 0.16; 0.19 adds per-document lengths
            bits = self._query_document_sample_shuffle_indices(0 if idx is None else idx)[0]
        finally:
            self.dataset = tokens
        return bits

    def __getitem__(self, idx):
        sample = super().__getitem__(idx)
        if self.loss_mask_dataset is None:
            return sample
        bits = torch.from_numpy(self._answer_bits(idx))
        if self.config.add_extra_token_to_sequence:
            answer = bits[1:]
        else:
            answer = torch.roll(bits, shifts=-1)
            answer[-1] = 0
        # padding positions hold the pad id, not a bit; GPTDataset already zeroed their loss
        sample["loss_mask"] = sample["loss_mask"] * (answer == 1).to(sample["loss_mask"].dtype)
        return sample
