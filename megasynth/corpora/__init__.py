"""Natural corpora and held-out eval sets → normalised JSONL (``id``, ``text``, ``source``).

``run_corpora(cfg, layout)`` is the ``corpora`` stage and ``corpora_done(cfg, layout)`` its completion check
(see ``docs/CONTRACTS.md``);
``load_corpus(c)`` streams one corpus; ``LOADERS`` maps loader names to functions
(``sotu``, ``gensim_wiki``, ``lambada``, ``brown``, ``jsonl``); add one with ``register_loader``.
"""

from megasynth.corpora.loaders import LOADERS, register_loader
from megasynth.corpora.stage import corpora_done, get_loader, load_corpus, run_corpora
from megasynth.corpora.text import normalize_text, overlap_keys, wiki_to_prose

__all__ = ["LOADERS", "corpora_done", "get_loader", "load_corpus", "normalize_text", "overlap_keys", "register_loader",
           "run_corpora", "wiki_to_prose"]
