"""Llama-3 tiktoken constants and helpers (no megatron import: cheap to load in tools and workers)."""

from __future__ import annotations

import re
from pathlib import Path

from megasynth.utils import MegasynthError

# Llama-3 (llama_models/llama3/tokenizer.py): pre-tokenisation regex, special tokens, and the
# limits that keep tiktoken from panicking on very long inputs (tiktoken issue #195).
LLAMA3_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_RESERVED_SPECIAL_TOKENS = 256
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
]
_TIKTOKEN_MAX_ENCODE_CHARS = 400_000
_MAX_NO_WHITESPACES_CHARS = 25_000
# A run llama_models would split (``\s`` and ``str.isspace`` share CPython's Unicode whitespace table).
_LONG_RUN = re.compile(rf"\S{{{_MAX_NO_WHITESPACES_CHARS + 1}}}|\s{{{_MAX_NO_WHITESPACES_CHARS + 1}}}")



def _split_whitespaces_or_nonwhitespaces(s: str, max_len: int):
    """Split ``s`` so no piece has more than ``max_len`` consecutive (non-)whitespace characters.

    Same algorithm as ``llama_models.llama3.tokenizer.Tokenizer._split_whitespaces_or_nonwhitespaces``.
    """
    cur_len = 0
    cur_is_space = s[0].isspace() if len(s) > 0 else False
    start = 0
    for i in range(len(s)):
        is_space = s[i].isspace()
        if cur_is_space ^ is_space:
            cur_len = 1
            cur_is_space = is_space
        else:
            cur_len += 1
            if cur_len > max_len:
                yield s[start:i]
                start = i
                cur_len = 1
    yield s[start:]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (openai/gpt-2 ``encoder.py``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def llama3_model_path() -> Path:
    """Path of ``llama_models/llama3/tokenizer.model`` in the installed ``llama-models`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise MegasynthError("tokenizer.type: llama3 needs the llama-models package (pip install llama-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"


def load_llama3_encoding(model_path: str | Path | None = None):
    """``(tiktoken.Encoding, special_tokens)`` of Llama-3: ranks from ``model_path`` (default
    ``llama_models``'), :data:`LLAMA3_PAT_STR`, 256 special tokens after the ranks.

    Raises:
        MegasynthError: missing file or a line that is not ``base64 rank``.
    """
    import base64

    import tiktoken

    model_path = Path(model_path) if model_path else llama3_model_path()
    if not model_path.is_file():
        raise MegasynthError(f"{model_path}: Llama-3 tokenizer.model not found (pip install llama-models)")
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(model_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise MegasynthError(f"{model_path}:{lineno}: not a tiktoken 'base64 rank' line") from None
    n = len(ranks)
    specials = _LLAMA3_SPECIALS + [f"<|reserved_special_token_{2 + i}|>"
                                   for i in range(LLAMA3_NUM_RESERVED_SPECIAL_TOKENS - len(_LLAMA3_SPECIALS))]
    special_tokens = {t: n + i for i, t in enumerate(specials)}
    enc = tiktoken.Encoding(name=model_path.name, pat_str=LLAMA3_PAT_STR, mergeable_ranks=ranks,
                            special_tokens=special_tokens)
    return enc, special_tokens


def encode_batch_fast(enc, texts: list[str], threads: int, allowed_special: bool) -> list[list[int]]:
    """tiktoken ids per text; ``allowed_special``: special-token strings in the text become their ids
    (tiktoken ``allowed_special="all"``). One thread: direct calls (no thread-pool overhead)."""
    if threads > 1:
        if allowed_special:
            return enc.encode_batch(texts, num_threads=threads, allowed_special="all")
        return enc.encode_ordinary_batch(texts, num_threads=threads)
    core = enc._core_bpe
    if allowed_special:
        specials = enc.special_tokens_set
        return [core.encode(t, specials) if "<|" in t else core.encode_ordinary(t) for t in texts] \
            if all(s.startswith("<|") for s in specials) else [core.encode(t, specials) for t in texts]
    return [core.encode_ordinary(t) for t in texts]
