"""Tokenizers for the study, behind one megatron-core tokenizer interface.

Three kinds (``TokenizerConfig.type``):

- ``bpe``: a byte-level BPE trained with HF ``tokenizers`` on the natural training corpora (never on
  eval sets), GPT-2 style (ByteLevel pre-tokenizer and decoder, no normaliser), specials
  ``<|begin_of_text|>`` (bos, id 0), ``<|end_of_text|>`` (eod, id 1), ``<|pad|>`` (pad, id 2).
  Saved as ``<study>/tokenizer/tokenizer.json`` plus ``megasynth_tokenizer.json`` (metadata).
- ``llama3``: the real Llama-3 tokenizer: tiktoken BPE ranks from PyPI ``llama-models``
  (``llama_models/llama3/tokenizer.model``), Llama-3's pre-tokenisation regex and its 256 special
  tokens (128,256 ids in all); eod = ``<|end_of_text|>`` (128001), bos = ``<|begin_of_text|>``
  (128000), pad = ``<|finetune_right_pad_id|>`` (128004). Ids are identical to
  ``llama_models.llama3.tokenizer.Tokenizer.encode(text, bos=False, eos=False)``.
- ``huggingface``: a local HF tokenizer directory (``tokenizer.json``, or anything
  ``transformers.AutoTokenizer`` loads as a fast tokenizer); eod = its eos token.

:class:`MegasynthTokenizer` subclasses megatron-core's ``MegatronTokenizerBase``
(``megatron.core.tokenizers``; the older ``megatron.core.datasets.megatron_tokenizer`` class is
deprecated in megatron-core 0.16) so it can be passed as ``GPTDatasetConfig.tokenizer``. Document
text is encoded without special tokens; the preprocess stage appends ``eod`` to every document.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from megatron.core.tokenizers import MegatronTokenizerBase

from megasynth.data.llama3_bpe import (  # noqa: F401 - re-exported
    _LLAMA3_SPECIALS, _LONG_RUN, _MAX_NO_WHITESPACES_CHARS, _TIKTOKEN_MAX_ENCODE_CHARS, LLAMA3_NUM_RESERVED_SPECIAL_TOKENS,
    LLAMA3_PAT_STR, _bytes_to_unicode, _split_whitespaces_or_nonwhitespaces, llama3_model_path, load_llama3_encoding)
from megasynth.utils import MegasynthError, atomic_path, is_done, mark_done, read_json

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from megasynth.config import TokenizerConfig
    from megasynth.layout import StudyLayout

logger = logging.getLogger("megasynth.data")

BOS_TOKEN = "<|begin_of_text|>"
EOD_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
BPE_SPECIAL_TOKENS = (BOS_TOKEN, EOD_TOKEN, PAD_TOKEN)
"""Special tokens of the trained byte-level BPE, in id order (0, 1, 2)."""

META_FILE = "megasynth_tokenizer.json"
"""Metadata file beside the saved tokenizer: kind, name, special token strings."""



def _num_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class MegasynthTokenizer(MegatronTokenizerBase):
    """Common interface of the study's tokenizers (a megatron-core tokenizer).

    Attributes used by megatron-core datasets: ``vocab_size`` (real vocabulary size including
    special tokens; the model's embedding may be padded beyond it), ``eod``, ``pad``, ``bos``,
    ``unique_identifiers`` (hashed into megatron's dataset cache names).
    """

    kind: str = ""
    num_threads: Optional[int] = None
    """Threads for :meth:`tokenize_batch` (tiktoken); ``None`` = all CPUs this process may use. HF
    ``tokenizers`` reads ``RAYON_NUM_THREADS`` from the environment instead."""

    def __init__(self, path: str, name: str, eod: int, bos: Optional[int], pad: int, sha: str) -> None:
        super().__init__(path, {})
        self._name, self._eod, self._bos, self._pad = name, eod, bos, pad
        self.unique_identifiers = {"class": "MegasynthTokenizer", "kind": self.kind, "name": name,
                                   "vocab_size": self.vocab_size, "eod": eod, "sha": sha}

    # -------------------------------------------------------------- identity and special tokens
    @property
    def name(self) -> str:
        """Human-readable name, e.g. ``bpe-8192``, ``llama3``, ``hf:<dir>``."""
        return self._name

    @property
    def eod(self) -> int:
        """End-of-document id appended to every document."""
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    @property
    def bos(self) -> Optional[int]:
        return self._bos

    @property
    def pad(self) -> int:
        return self._pad

    @property
    def vocab_size(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def vocab(self) -> dict[str, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def inv_vocab(self) -> dict[int, str]:
        """id -> token string (inverse of :attr:`vocab`)."""
        if getattr(self, "_inv_vocab", None) is None:
            self._inv_vocab = {i: t for t, i in self.vocab.items()}
        return self._inv_vocab

    # -------------------------------------------------------------- encoding
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:  # pragma: no cover - overridden
        """Token ids of each text (no special tokens added), using all available threads."""
        raise NotImplementedError

    def detokenize(self, ids: Sequence[int]) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def token_bytes(self) -> "np.ndarray":
        """UTF-8 bytes each id stands for: ``[vocab_size]`` int64, 0 for special tokens (eod, bos, pad, ...).

        Summed over a token sequence this is the byte length of its text, the denominator of bits per
        byte (:mod:`megasynth.train.evaluator`). Exact for byte-level vocabularies (the trained BPE, Llama-3's
        tiktoken ranks, GPT-2-style HF tokenizers); other HF tokenizers count ``<0xNN>`` byte-fallback tokens
        as 1 byte and other tokens as the UTF-8 length of their text with ``▁`` read as a space. Cached.
        """
        if getattr(self, "_token_bytes", None) is None:
            self._token_bytes = self._compute_token_bytes()
        return self._token_bytes

    def _compute_token_bytes(self) -> "np.ndarray":  # pragma: no cover - overridden
        raise NotImplementedError

    def apply_chat_template(self, *args, **kwargs):
        raise NotImplementedError(f"{self.name}: the study's tokenizers have no chat template")

    def save(self, out_dir: str | os.PathLike) -> None:  # pragma: no cover - overridden
        """Write the tokenizer into ``out_dir`` so :func:`load_tokenizer_dir` reloads it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eod={self.eod})"


class HFTokenizer(MegasynthTokenizer):
    """A HF ``tokenizers.Tokenizer`` (the trained byte-level BPE or a local HF tokenizer)."""

    def __init__(self, tokenizer_json: str | os.PathLike, name: str, kind: str, eod_token: str,
                 bos_token: Optional[str], pad_token: Optional[str]) -> None:
        from tokenizers import Tokenizer

        tokenizer_json = Path(tokenizer_json)
        self.kind = kind
        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tokens = {"eod": eod_token, "bos": bos_token, "pad": pad_token}
        self._json = tokenizer_json
        eod = self._token_id(eod_token, "eod")
        bos = self._token_id(bos_token, "bos") if bos_token else None
        pad = self._token_id(pad_token, "pad") if pad_token else eod
        super().__init__(str(tokenizer_json), name, eod, bos, pad, _file_sha(tokenizer_json))

    def _token_id(self, token: str, what: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise MegasynthError(f"{self._json}: {what} token {token!r} not in the vocabulary")
        return i

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def _compute_token_bytes(self) -> "np.ndarray":
        import numpy as np
        from tokenizers import decoders

        out = np.zeros(self.vocab_size, dtype=np.int64)
        added = self._tok.get_added_tokens_decoder()  # id -> AddedToken
        byte_level = isinstance(self._tok.decoder, decoders.ByteLevel)
        u2b = {c: b for b, c in _bytes_to_unicode().items()}
        for tok, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i >= out.size:
                continue
            if i in added:
                out[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
            elif byte_level and all(c in u2b for c in tok):
                out[i] = len(tok)  # one alphabet character per byte
            elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                out[i] = 1  # sentencepiece byte fallback
            else:
                out[i] = len(tok.replace("\u2581", " ").encode("utf-8"))
        return out

    def save(self, out_dir: str | os.PathLike) -> None:
        out_dir = Path(out_dir)
        with atomic_path(out_dir / "tokenizer.json") as tmp:
            self._tok.save(str(tmp))
        meta = {"kind": self.kind, "name": self.name, "file": "tokenizer.json", "eod_token": self._tokens["eod"],
                "bos_token": self._tokens["bos"], "pad_token": self._tokens["pad"], "vocab_size": self.vocab_size}
        with atomic_path(out_dir / META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tok"] = self._tok.to_str()
        return state

    def __setstate__(self, state):
        from tokenizers import Tokenizer

        state["_tok"] = Tokenizer.from_str(state["_tok"])
        self.__dict__.update(state)


class TiktokenTokenizer(MegasynthTokenizer):
    """The Llama-3 tokenizer: tiktoken BPE ranks + Llama-3 regex + 256 special tokens.

    Encoding matches ``llama_models.llama3.tokenizer.Tokenizer.encode(s, bos=False, eos=False)``
    exactly, including its splitting of inputs longer than 400,000 characters or with runs of more
    than 25,000 (non-)whitespace characters.
    """

    kind = "llama3"

    def __init__(self, model_path: str | os.PathLike | None = None) -> None:
        model_path = Path(model_path) if model_path else llama3_model_path()
        self._enc, self.special_tokens = load_llama3_encoding(model_path)
        self._n_vocab = self._enc.n_vocab
        super().__init__(str(model_path), "llama3", self.special_tokens["<|end_of_text|>"],
                         self.special_tokens["<|begin_of_text|>"], self.special_tokens["<|finetune_right_pad_id|>"],
                         _file_sha(model_path))

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def vocab(self) -> dict[str, int]:
        """Token string -> id, token bytes shown in GPT-2's byte-to-unicode alphabet (as HF does)."""
        if getattr(self, "_vocab", None) is None:
            b2u = _bytes_to_unicode()
            v = {"".join(b2u[b] for b in tok): i for tok, i in self._enc._mergeable_ranks.items()}
            v.update(self.special_tokens)
            self._vocab = v
        return self._vocab

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        out = self._enc.encode_ordinary_batch(list(texts), num_threads=self.num_threads or _num_threads())
        for i, t in enumerate(texts):  # rare: inputs llama_models splits before encoding
            if len(t) > _MAX_NO_WHITESPACES_CHARS and (len(t) > _TIKTOKEN_MAX_ENCODE_CHARS or _LONG_RUN.search(t)):
                out[i] = self._encode_long(t)
        return out

    def _encode_long(self, s: str) -> list[int]:
        ids: list[int] = []
        for i in range(0, len(s), _TIKTOKEN_MAX_ENCODE_CHARS):
            for sub in _split_whitespaces_or_nonwhitespaces(s[i: i + _TIKTOKEN_MAX_ENCODE_CHARS],
                                                            _MAX_NO_WHITESPACES_CHARS):
                ids.extend(self._enc.encode_ordinary(sub))
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def _compute_token_bytes(self) -> "np.ndarray":
        import numpy as np

        specials = set(self.special_tokens.values())
        return np.array([0 if i in specials else len(self._enc.decode_single_token_bytes(i))
                         for i in range(self._n_vocab)], dtype=np.int64)

    def save(self, out_dir: str | os.PathLike) -> None:
        out_dir = Path(out_dir)
        with atomic_path(out_dir / "tokenizer.model") as tmp:
            shutil.copyfile(self.path, tmp)
        meta = {"kind": "llama3", "name": self.name, "file": "tokenizer.model", "vocab_size": self.vocab_size}
        with atomic_path(out_dir / META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# training, saving, loading
# --------------------------------------------------------------------------------------------------
def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike) -> MegasynthTokenizer:
    """Train a byte-level BPE (GPT-2 style) on ``texts`` and save it into ``out_dir``.

    ``vocab_size`` counts all ids: 256 byte tokens, the 3 specials and the learned merges (it is an
    upper bound: a small corpus may not yield enough merges). Writes ``out_dir/tokenizer.json`` and
    ``out_dir/megasynth_tokenizer.json`` atomically, then the marker ``out_dir/tokenizer.json.done``.

    Raises:
        MegasynthError: ``vocab_size`` < 300.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise MegasynthError(f"tokenizer.vocab_size: must be >= 300 for a byte-level BPE, got {vocab_size}")
    out_dir = Path(out_dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "tokenizer.json") as tmp:
        tok.save(str(tmp))
    name = f"bpe-{tok.get_vocab_size(with_added_tokens=True)}"
    result = HFTokenizer(out_dir / "tokenizer.json", name, "bpe", EOD_TOKEN, BOS_TOKEN, PAD_TOKEN)
    result.save(out_dir)
    mark_done(out_dir / "tokenizer.json", {"name": name, "vocab_size": result.vocab_size})
    logger.info("trained %s (requested vocab_size %d) -> %s", name, vocab_size, out_dir)
    return result


def load_tokenizer_dir(path: str | os.PathLike) -> MegasynthTokenizer:
    """Load a tokenizer written by :meth:`MegasynthTokenizer.save` (or a plain HF tokenizer directory).

    Raises:
        MegasynthError: missing directory or files, special token not in the vocabulary.
    """
    path = Path(path)
    if not path.is_dir():
        raise MegasynthError(f"{path}: tokenizer directory not found")
    meta_path = path / META_FILE
    if meta_path.exists():
        meta = read_json(meta_path)
        if meta.get("kind") == "llama3":
            return TiktokenTokenizer(path / meta.get("file", "tokenizer.model"))
        return HFTokenizer(path / meta.get("file", "tokenizer.json"), meta["name"], meta.get("kind", "huggingface"),
                           meta["eod_token"], meta.get("bos_token"), meta.get("pad_token"))
    return _load_hf_dir(path)


def _load_hf_dir(path: Path) -> MegasynthTokenizer:
    """A HF tokenizer directory: ``tokenizer.json`` + ``tokenizer_config.json``/``special_tokens_map.json``."""
    specials: dict[str, Optional[str]] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / fname
        if f.exists():
            d = read_json(f)
            for key in ("eos_token", "bos_token", "pad_token"):
                v = d.get(key)
                if isinstance(v, dict):
                    v = v.get("content")
                if v and key not in specials:
                    specials[key] = v
    tj = path / "tokenizer.json"
    if not tj.exists():
        # e.g. a sentencepiece-only directory: let transformers convert it to a fast tokenizer.
        try:
            from transformers import AutoTokenizer
        except ImportError:  # pragma: no cover
            raise MegasynthError(f"{path}: no tokenizer.json and transformers is not installed") from None
        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        except Exception as e:  # noqa: BLE001 - any loader failure is a bad directory
            raise MegasynthError(f"{path}: cannot load a HF tokenizer ({type(e).__name__}: {e})".splitlines()[0]) from None
        if not getattr(hf, "is_fast", False):
            raise MegasynthError(f"{path}: tokenizer has no fast (tokenizers) version")
        hf.backend_tokenizer.save(str(tj))
        specials.setdefault("eos_token", hf.eos_token)
        specials.setdefault("bos_token", hf.bos_token)
        specials.setdefault("pad_token", hf.pad_token)
    eos = specials.get("eos_token")
    if not eos:
        raise MegasynthError(f"{path}: tokenizer has no eos_token (needed as end-of-document)")
    return HFTokenizer(tj, f"hf:{path.name}", "huggingface", eos, specials.get("bos_token"), specials.get("pad_token"))


def load_tokenizer(cfg: "TokenizerConfig", layout: "StudyLayout | None" = None) -> MegasynthTokenizer:
    """The study's tokenizer for ``cfg`` (``bpe`` is loaded from ``layout.tokenizer_dir``).

    Raises:
        MegasynthError: ``bpe`` not trained yet (run the preprocess stage), bad ``tokenizer.path``.
    """
    if cfg.type == "llama3":
        return TiktokenTokenizer()
    if cfg.type == "huggingface":
        if not cfg.path:
            raise MegasynthError("tokenizer.path: required for tokenizer.type huggingface")
        return load_tokenizer_dir(cfg.path)
    if cfg.type == "bpe":
        if layout is None:
            raise MegasynthError("tokenizer.type: bpe needs the study layout (its trained tokenizer directory)")
        if not is_done(layout.tokenizer_file):
            raise MegasynthError(f"{layout.tokenizer_dir}: BPE tokenizer not trained yet (run `megasynth preprocess`)")
        return load_tokenizer_dir(layout.tokenizer_dir)
    raise MegasynthError(f"tokenizer.type: unknown type {cfg.type!r} (known: bpe, llama3, huggingface)")
