"""Tokenizers with Megatron-LM's ``--tokenizer-type`` semantics, on their fastest exact path.

What Megatron-LM's ``tools/preprocess_data.py`` calls per sentence is ``tokenizer.tokenize(text)``:

- ``HuggingFaceTokenizer`` (megatron-core ``HuggingFaceTokenizer.text_to_ids``): ``AutoTokenizer(text).input_ids``
  — the fast tokenizer's post-processor adds its special tokens (e.g. Llama-3's BOS) to every call
  unless ``include_special_tokens`` is off; ``vocab_size = len(AutoTokenizer)``; ``eod`` = eos token id.
  Here: the same ``tokenizers`` backend that ``AutoTokenizer`` builds, batch-encoded; and when that
  backend is a tiktoken-style byte BPE (Llama-3: ``ignore_merges``, a single ``Split`` regex +
  non-regex ``ByteLevel``, no normaliser, plain special tokens) tiktoken encodes instead, with the
  post-processor's prefix/suffix ids added — checked against the backend on probe texts at load.
- ``Llama3Tokenizer`` (Megatron-LM's ``create_llama3_tokenizer``: ``encode(s, bos=True, eos=False,
  allowed_special='all')``): tiktoken with ``llama_models``' ``tokenizer.model``, BOS per call,
  eod = ``<|end_of_text|>``.
- ``llama3``, ``huggingface``/``bpe``: megasynth's study tokenizers (no special tokens added).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from megasynth.utils import MegasynthError

TOKENIZER_TYPES = ("HuggingFaceTokenizer", "Llama3Tokenizer", "llama3", "huggingface", "bpe")

PROBE_TEXTS = ["Hello world", "", " leading space", "The U.S. economy grew 3.5% in 2023 -- didn't it?\n\n  Yes.",
               "Ünïcödé ✓ 中文 日本語 한국어 emoji 🙂🙂", "tabs\tand\r\nnewlines\n\n\n   end   ",
               "special <|end_of_text|> and <|begin_of_text|> inline", "1234567890 12.5 x=y+z; {'a': [1, 2]}"]


@dataclass
class ToolTokenizer:
    """``tokenize_batch(texts) -> ids per text`` (one Megatron ``tokenize`` call each), ``eod``, ``vocab_size``."""
    name: str
    tokenize_batch: Callable[[list[str]], list[list[int]]]
    eod: int
    vocab_size: int
    fast_path: str = ""


def _threads(workers: int) -> int:
    if workers > 1:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def build_tool_tokenizer(tokenizer_type: str, tokenizer_model: Optional[str], include_special_tokens: bool = True,
                         workers: int = 1) -> ToolTokenizer:
    """The tokenizer for Megatron-LM flags ``--tokenizer-type`` / ``--tokenizer-model``.

    Raises:
        MegasynthError: unknown type, missing ``--tokenizer-model``, or a directory that does not load.
    """
    threads = _threads(workers)
    if tokenizer_type == "HuggingFaceTokenizer":
        if not tokenizer_model:
            raise MegasynthError("--tokenizer-model: required for --tokenizer-type HuggingFaceTokenizer")
        return _hf_tokenizer(tokenizer_model, include_special_tokens, threads)
    if tokenizer_type in ("Llama3Tokenizer", "llama3"):
        from megasynth.data.llama3_bpe import (_LONG_RUN, _MAX_NO_WHITESPACES_CHARS, _TIKTOKEN_MAX_ENCODE_CHARS,
                                               _split_whitespaces_or_nonwhitespaces, encode_batch_fast,
                                               load_llama3_encoding)

        enc, specials = load_llama3_encoding(tokenizer_model)
        bos, eod = specials["<|begin_of_text|>"], specials["<|end_of_text|>"]
        megatron = tokenizer_type == "Llama3Tokenizer"  # Megatron-LM: encode(s, bos=True, allowed_special='all')

        def tokenize_batch(texts: list[str]) -> list[list[int]]:
            out = encode_batch_fast(enc, texts, threads, allowed_special=megatron)
            for i, t in enumerate(texts):  # llama_models splits these before encoding
                if len(t) > _MAX_NO_WHITESPACES_CHARS and (len(t) > _TIKTOKEN_MAX_ENCODE_CHARS or _LONG_RUN.search(t)):
                    ids: list[int] = []
                    for j in range(0, len(t), _TIKTOKEN_MAX_ENCODE_CHARS):
                        for sub in _split_whitespaces_or_nonwhitespaces(t[j: j + _TIKTOKEN_MAX_ENCODE_CHARS],
                                                                        _MAX_NO_WHITESPACES_CHARS):
                            ids.extend(enc.encode(sub, allowed_special="all") if megatron else enc.encode_ordinary(sub))
                    out[i] = ids
            if megatron:
                for ids in out:
                    ids.insert(0, bos)
            return out

        return ToolTokenizer(tokenizer_type, tokenize_batch, eod, enc.n_vocab, "tiktoken")
    if tokenizer_type in ("huggingface", "bpe"):
        from megasynth.data.tokenizer import load_tokenizer_dir

        if not tokenizer_model:
            raise MegasynthError(f"--tokenizer-model: required for --tokenizer-type {tokenizer_type}")
        tok = load_tokenizer_dir(tokenizer_model)
        tok.num_threads = threads
        return ToolTokenizer(tok.name, tok.tokenize_batch, tok.eod, tok.vocab_size, "tokenizers")
    raise MegasynthError(f"--tokenizer-type: {tokenizer_type!r} not supported (known: {', '.join(TOKENIZER_TYPES)})")


def _hf_tokenizer(path: str, include_special_tokens: bool, threads: int) -> ToolTokenizer:
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad --tokenizer-model
        raise MegasynthError(f"--tokenizer-model: cannot load a HF tokenizer from {path} "
                             f"({type(e).__name__}: {e})".splitlines()[0]) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise MegasynthError(f"--tokenizer-model: {path} has no fast (tokenizers) version")
    if hf.eos_token is None:
        raise MegasynthError(f"--tokenizer-model: {path} has no eos_token (Megatron's eod)")
    eod = hf.convert_tokens_to_ids(hf.eos_token)
    vocab_size = len(hf)
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(backend.to_str())  # a private copy: no padding/truncation state shared
    backend.no_padding()
    backend.no_truncation()
    add = bool(include_special_tokens)

    def hf_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add)]

    fast = _tiktoken_equivalent(backend, add, threads)
    if fast is not None:
        ok = all(fast([t]) == hf_batch([t]) for t in PROBE_TEXTS)
        if ok:
            return ToolTokenizer(f"hf:{Path(path).name}", fast, eod, vocab_size, "tiktoken")
    return ToolTokenizer(f"hf:{Path(path).name}", hf_batch, eod, vocab_size, "tokenizers")


def _tiktoken_equivalent(backend, add_special: bool, threads: int):
    """A tiktoken encoder giving the backend's ids, or None when the backend is not tiktoken-style."""
    try:
        import tiktoken
    except ImportError:  # pragma: no cover
        return None
    from megasynth.data.llama3_bpe import _bytes_to_unicode

    j = json.loads(backend.to_str())
    model, pre = j.get("model") or {}, j.get("pre_tokenizer") or {}
    if j.get("normalizer") is not None or model.get("type") != "BPE" or not model.get("ignore_merges"):
        return None
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    if pre.get("type") != "Sequence" or len(pre.get("pretokenizers", [])) != 2:
        return None
    split, bl = pre["pretokenizers"]
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert") \
            or "Regex" not in (split.get("pattern") or {}):
        return None
    if bl.get("type") != "ByteLevel" or bl.get("use_regex") or bl.get("add_prefix_space"):
        return None
    specials: dict[str, int] = {}
    for t in j.get("added_tokens", []):
        if not t.get("special") or t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized"):
            return None
        specials[t["content"]] = t["id"]
    u2b = {u: b for b, u in _bytes_to_unicode().items()}
    try:
        ranks = {bytes(u2b[c] for c in tok): i for tok, i in model["vocab"].items() if tok not in specials}
    except KeyError:
        return None
    try:
        enc = tiktoken.Encoding(name="hf-bytelevel-bpe", pat_str=split["pattern"]["Regex"], mergeable_ranks=ranks,
                                special_tokens=specials)
    except Exception:  # noqa: BLE001 - tiktoken refuses this vocabulary/pattern
        return None
    probe = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    prefix: list[int] = []
    suffix: list[int] = []
    if add_special:
        n = len(plain)
        k = next((i for i in range(len(probe) - n + 1) if probe[i: i + n] == plain), None)
        if k is None:
            return None
        prefix, suffix = probe[:k], probe[k + n:]
        if backend.encode("", add_special_tokens=True).ids != prefix + suffix:
            return None
    from megasynth.data.llama3_bpe import _LONG_RUN, _MAX_NO_WHITESPACES_CHARS, encode_batch_fast

    def tokenize_batch(texts: list[str]) -> list[list[int]]:
        out = encode_batch_fast(enc, texts, threads, allowed_special=True)
        for i, t in enumerate(texts):  # very long runs: let the backend decide (tiktoken is quadratic there)
            if len(t) > _MAX_NO_WHITESPACES_CHARS and _LONG_RUN.search(t):
                out[i] = backend.encode(t, add_special_tokens=False).ids
        if prefix or suffix:
            out = [prefix + ids + suffix for ids in out]
        return out

    return tokenize_batch
