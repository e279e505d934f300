"""Tokenizers with Megatron-LM's ``--tokenizer-type`` semantics, on their fastest exact path.

What Megatron-LM's ``tools/preprocess_data.py`` calls per sentence is ``tokenizer.tokenize(text)``:

- ``HuggingFaceTokenizer`` (megatron-core ``HuggingFaceTokenizer.text_to_ids``): ``AutoTokenizer(text).input_ids``
  — the fast tokenizer's post-processor adds its special tokens (e.g. Llama-3's BOS) to every call
  unless ``include_special_tokens`` is off; ``vocab_size = len(AutoTokenizer)``; ``eod`` = eos token id.
  Here: the same ``tokenizers`` backend that ``AutoTokenizer`` builds, batch-encoded — read straight from
  ``tokenizer.json`` without importing transformers (and torch: 4-6 s) when the directory is a plain
  ``PreTrainedTokenizerFast`` that transformers would not alter (:func:`plain_fast_tokenizer`); and when that
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
from typing import Any, Callable, Optional

from megasynth.utils import MegasynthError

TOKENIZER_TYPES = ("HuggingFaceTokenizer", "Llama3Tokenizer", "llama3", "huggingface", "bpe")

PROBE_TEXTS = ["Hello world", "", " leading space", "The U.S. economy grew 3.5% in 2023 -- didn't it?\n\n  Yes.",
               "Ünïcödé ✓ 中文 日本語 한국어 emoji 🙂🙂", "tabs\tand\r\nnewlines\n\n\n   end   ",
               "special <|end_of_text|> and <|begin_of_text|> inline", "1234567890 12.5 x=y+z; {'a': [1, 2]}"]


@dataclass
class ToolTokenizer:
    """``tokenize_batch(texts) -> ids per text`` (one Megatron ``tokenize`` call each), ``eod``, ``vocab_size``.

    ``encode_plain(texts)`` (when set) gives the same ids without the per-call ``prefix`` / ``suffix`` ids
    (e.g. Llama-3's BOS), which the engine then adds with numpy instead of per-list Python copies:
    ``tokenize_batch(t)[i] == prefix + encode_plain(t)[i] + suffix``.
    """
    name: str
    tokenize_batch: Callable[[list[str]], list[list[int]]]
    eod: int
    vocab_size: int
    fast_path: str = ""
    encode_plain: Optional[Callable[[list[str]], list[list[int]]]] = None
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()


def _with_affixes(plain: Callable[[list[str]], list[list[int]]], prefix: list[int], suffix: list[int]):
    if not prefix and not suffix:
        return plain
    return lambda texts: [prefix + ids + suffix for ids in plain(texts)]


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

        def encode_plain(texts: list[str]) -> list[list[int]]:
            out = encode_batch_fast(enc, texts, threads, allowed_special=megatron)
            for i, t in enumerate(texts):  # llama_models splits these before encoding
                if len(t) > _MAX_NO_WHITESPACES_CHARS and (len(t) > _TIKTOKEN_MAX_ENCODE_CHARS or _LONG_RUN.search(t)):
                    ids: list[int] = []
                    for j in range(0, len(t), _TIKTOKEN_MAX_ENCODE_CHARS):
                        for sub in _split_whitespaces_or_nonwhitespaces(t[j: j + _TIKTOKEN_MAX_ENCODE_CHARS],
                                                                        _MAX_NO_WHITESPACES_CHARS):
                            ids.extend(enc.encode(sub, allowed_special="all") if megatron else enc.encode_ordinary(sub))
                    out[i] = ids
            return out

        prefix = [bos] if megatron else []
        return ToolTokenizer(tokenizer_type, _with_affixes(encode_plain, prefix, []), eod, enc.n_vocab, "tiktoken",
                             encode_plain, tuple(prefix), ())
    if tokenizer_type in ("huggingface", "bpe"):
        from megasynth.data.tokenizer import load_tokenizer_dir

        if not tokenizer_model:
            raise MegasynthError(f"--tokenizer-model: required for --tokenizer-type {tokenizer_type}")
        tok = load_tokenizer_dir(tokenizer_model)
        tok.num_threads = threads
        return ToolTokenizer(tok.name, tok.tokenize_batch, tok.eod, tok.vocab_size, "tokenizers")
    raise MegasynthError(f"--tokenizer-type: {tokenizer_type!r} not supported (known: {', '.join(TOKENIZER_TYPES)})")


_PLAIN_CONFIG_KEYS = {
    "tokenizer_class", "bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token",
    "additional_special_tokens", "extra_special_tokens", "added_tokens_decoder", "model_max_length",
    "clean_up_tokenization_spaces", "model_input_names", "chat_template", "padding_side", "truncation_side",
    "name_or_path", "backend", "tokenizer_file", "split_special_tokens"}
"""``tokenizer_config.json`` keys that do not change what ``AutoTokenizer(...)(text).input_ids`` returns for a
plain ``PreTrainedTokenizerFast`` (``split_special_tokens`` only when false)."""
_MISTRAL_TYPES = ("mistral", "mistral3", "voxtral", "ministral", "pixtral")


def _token_str(v) -> Optional[str]:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _read_json(path: Path):
    data = path.read_bytes()
    try:
        import msgspec

        return msgspec.json.decode(data)
    except ImportError:  # pragma: no cover
        return json.loads(data)


def _read_tokenizer_json(path: Path) -> dict:
    """``tokenizer.json`` as a dict, without ``model.merges`` (not needed here; a third of the decode time)."""
    data = path.read_bytes()
    try:
        import msgspec
    except ImportError:  # pragma: no cover
        return json.loads(data)

    model_t = msgspec.defstruct("Model", [(f, Any, None) for f in (
        "type", "vocab", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
        "byte_fallback", "ignore_merges")])
    tokenizer_t = msgspec.defstruct("TokenizerJson", [("model", model_t)] + [(f, Any, None) for f in (
        "added_tokens", "normalizer", "pre_tokenizer", "post_processor")])

    t = msgspec.json.decode(data, type=tokenizer_t)
    return {"model": msgspec.structs.asdict(t.model), "added_tokens": t.added_tokens or [],
            "normalizer": t.normalizer, "pre_tokenizer": t.pre_tokenizer, "post_processor": t.post_processor}


def plain_fast_tokenizer(path: str | os.PathLike):
    """``(tokenizer.json as a dict, eos token)`` when ``AutoTokenizer.from_pretrained(path)`` (transformers 5)
    would be a plain ``PreTrainedTokenizerFast`` whose ``__call__`` ids are exactly the ``tokenizer.json``
    backend's ``encode(text, add_special_tokens=True)`` ids; else None (load with transformers).

    Conditions (each a way ``TokenizersBackend.__init__`` / ``_post_init`` would change the backend):
    ``tokenizer_class`` ``PreTrainedTokenizerFast``/``TokenizersBackend``; no ``add_bos_token`` /
    ``add_eos_token`` / ``add_prefix_space`` or other unknown config keys; every named special token
    already a special, unstripped, unnormalised added token of ``tokenizer.json``; ``added_tokens_decoder``
    equal to those added tokens; no mistral regex patch (``config.json`` absent, or written by transformers
    >= 5, or with a non-mistral ``model_type``).
    """
    d = Path(path)
    tj, cj = d / "tokenizer.json", d / "tokenizer_config.json"
    if not (tj.is_file() and cj.is_file()):
        return None
    try:
        cfg = _read_json(cj)
    except Exception:  # noqa: BLE001 - let transformers report it
        return None
    if not isinstance(cfg, dict) or cfg.get("tokenizer_class") not in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return None
    if set(cfg) - _PLAIN_CONFIG_KEYS or cfg.get("split_special_tokens"):
        return None
    if cfg.get("tokenizer_file") not in (None, str(tj), "tokenizer.json"):
        return None
    if (d / "config.json").exists():
        try:
            mc = _read_json(d / "config.json")
        except Exception:  # noqa: BLE001
            return None
        ver = str(mc.get("transformers_version") or "")
        major = int(ver.split(".")[0]) if ver.split(".")[0].isdigit() else 0
        if not (major >= 5 or (ver and mc.get("model_type") is not None and mc.get("model_type") not in _MISTRAL_TYPES)):
            return None
    try:
        tjson = _read_tokenizer_json(tj)
    except Exception:  # noqa: BLE001 - let the loaders report it
        return None
    added = {t.get("content"): t for t in tjson.get("added_tokens") or []}
    named = [_token_str(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                                                "cls_token", "mask_token")]
    for k in ("additional_special_tokens", "extra_special_tokens"):
        v = cfg.get(k) or []
        named += [_token_str(x) for x in (v.values() if isinstance(v, dict) else v)]
    for name in named:
        if name is None:
            continue
        t = added.get(name)
        if t is None or not t.get("special") or t.get("lstrip") or t.get("rstrip") or t.get("single_word") \
                or t.get("normalized"):
            return None
    for sid, t in (cfg.get("added_tokens_decoder") or {}).items():
        a = added.get(t.get("content"))
        if a is None or str(a.get("id")) != str(sid) or any(bool(t.get(f)) != bool(a.get(f)) for f in
                                                              ("special", "lstrip", "rstrip", "single_word", "normalized")):
            return None
    eos = _token_str(cfg.get("eos_token"))
    return tjson, eos


def _hf_tokenizer(path: str, include_special_tokens: bool, threads: int) -> ToolTokenizer:
    from tokenizers import Tokenizer

    plain = plain_fast_tokenizer(path)
    if plain is not None:  # no transformers import (4-6 s): the same backend AutoTokenizer would build
        tjson, eos = plain
        try:
            backend = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001
            raise MegasynthError(f"--tokenizer-model: cannot load {path}/tokenizer.json "
                                 f"({type(e).__name__}: {e})".splitlines()[0]) from None
        if eos is None:
            raise MegasynthError(f"--tokenizer-model: {path} has no eos_token (Megatron's eod)")
        eod = backend.token_to_id(eos)
        vocab_size = backend.get_vocab_size(with_added_tokens=True)
    else:
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
        backend = Tokenizer.from_str(backend.to_str())  # a private copy: no padding/truncation state shared
        tjson = json.loads(backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    backend.encode_special_tokens = False
    add = bool(include_special_tokens)

    def hf_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add)]

    name = f"hf:{Path(path).name}"
    fast = _tiktoken_equivalent(backend, tjson, add, threads)
    if fast is not None:
        plain, prefix, suffix = fast
        full = _with_affixes(plain, prefix, suffix)
        ok = all(full([t]) == hf_batch([t]) for t in PROBE_TEXTS)
        if ok:
            return ToolTokenizer(name, full, eod, vocab_size, "tiktoken", plain, tuple(prefix), tuple(suffix))
    return ToolTokenizer(name, hf_batch, eod, vocab_size, "tokenizers")


def _tiktoken_equivalent(backend, j: dict, add_special: bool, threads: int):
    """``(encode_plain, prefix, suffix)``: a tiktoken encoder giving the ``backend``'s ids (``j``: its
    ``tokenizer.json``) without the post-processor's ``prefix`` / ``suffix`` ids, or None when the backend
    is not tiktoken-style."""
    try:
        import tiktoken
    except ImportError:  # pragma: no cover
        return None
    from megasynth.data.llama3_bpe import _bytes_to_unicode

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
    table = {ord(u): b for b, u in _bytes_to_unicode().items()}  # byte-level char -> its byte (as a latin-1 char)
    for c in range(256):  # a raw character outside the byte-level alphabet must not pass through as itself
        table.setdefault(c, 0x100)
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        return None
    try:
        ranks = {tok.translate(table).encode("latin-1"): i for tok, i in vocab.items() if tok not in specials}
    except UnicodeEncodeError:  # a character outside the byte-level alphabet
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

    def encode_plain(texts: list[str]) -> list[list[int]]:
        out = encode_batch_fast(enc, texts, threads, allowed_special=True)
        for i, t in enumerate(texts):  # very long runs: let the backend decide (tiktoken is quadratic there)
            if len(t) > _MAX_NO_WHITESPACES_CHARS and _LONG_RUN.search(t):
                out[i] = backend.encode(t, add_special_tokens=False).ids
        return out

    return encode_plain, prefix, suffix
