"""Llama-3-architecture presets: a table of named shapes (torch-free).

All presets share the Llama-3 recipe: RMSNorm (eps 1e-5), SwiGLU MLP, RoPE with base 500,000,
grouped-query attention, no linear biases. ``llama3-1b``, ``llama3-3b`` and ``llama3-8b`` are the
published Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B configurations (``LlamaShape.hf_model``; layers,
hidden, FFN, heads, KV groups, RoPE base and Llama-3.1/3.2 RoPE scaling factor, tied embeddings for
3.2-1B/3B, untied for 3.1-8B, 131,072 positions, vocab 128,256), so a checkpoint imported from those
HF models (:mod:`megasynth.model.convert`) trains under the preset's name; ``llama3-100m``/``llama3-300m``
are scaled-down, untied members of the family used by the study; the ``llama3-tiny``/``llama3-micro``
presets are CPU-sized for the quickstart and tests. Any other Llama shape comes from its HF
``config.json`` (:func:`megasynth.model.hf_compat.shape_from_hf_config`).

The vocabulary is a property of the tokenizer, not of the preset: the model pads the tokenizer's
vocabulary to a multiple of 128 (Megatron's ``make_vocab_size_divisible_by``), and the counts below
take ``vocab_size`` as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

LLAMA3_ROPE_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
"""The Llama-3.1/3.2 RoPE scaling parameters besides ``factor``: the values of every published Llama-3.1/3.2
``config.json`` and the only ones megatron-core 0.16.1 implements (``RotaryEmbedding._apply_scaling``
defaults; ``GPTModel`` exposes only ``rope_scaling_factor``)."""


PEAK_TFLOPS_BF16 = {
    # Dense (no sparsity) BF16 tensor-core peaks per GPU, vendor datasheets (SXM parts).
    "H200": 989.4,
    "H100": 989.4,
    "A100": 312.0,
}
"""Peak dense BF16 TFLOP/s by GPU name substring (MFU in ``megasynth.train.metrics``, device-hours in
``megasynth sweep plan``). MFU is always against the BF16 peak (FP8 runs too: their speed-up then shows as a
higher MFU; the FP8 peak is twice these)."""

VOCAB_DIVISIBLE_BY = 128
"""Padding multiple of the embedding rows (Megatron's ``--make-vocab-size-divisible-by``)."""


def padded_vocab_size(vocab_size: int, tp: int = 1, divisible_by: int = VOCAB_DIVISIBLE_BY) -> int:
    """Tokenizer vocabulary padded up to a multiple of ``divisible_by * tp`` (Megatron's rule).

    Raises:
        MegasynthError: ``vocab_size`` is not positive.
    """
    from megasynth.utils import MegasynthError

    if vocab_size <= 0:
        raise MegasynthError(f"vocab_size: must be > 0, got {vocab_size}")
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class LlamaShape:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    """KV heads (grouped-query attention groups)."""
    rotary_base: int = 500_000
    vocab_size: int = 128_256
    """Published vocabulary (Llama-3 tokenizer); the trained model uses its tokenizer's."""
    max_position_embeddings: int = 8192
    norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    """Output layer shares the input embedding matrix (megatron's ``share_embeddings_and_output_weights``)."""
    rope_scaling_factor: Optional[float] = None
    """Llama-3.1/3.2 RoPE frequency scaling (HF ``rope_scaling.rope_type: llama3``) with this ``factor``;
    ``None``: plain RoPE. The other parameters are fixed at :data:`LLAMA3_ROPE_SCALING` (megatron-core
    0.16 implements only those)."""
    hf_model: Optional[str] = None
    """The published Hugging Face model this shape is (``meta-llama/Llama-3.2-1B`` …); ``None`` for the
    study's own sizes."""

    @property
    def kv_channels(self) -> int:
        """Head dimension ``hidden_size / num_attention_heads``."""
        return self.hidden_size // self.num_attention_heads

    def non_embedding_params(self) -> int:
        """Parameters outside the input and output embeddings (N in Kaplan et al. 2020).

        Per layer: Q and O projections ``2·h²``, K and V ``2·h·g·d`` (g KV groups of head dim d),
        SwiGLU MLP ``3·h·f``, two RMSNorm weights ``2·h``; plus the final RMSNorm ``h``.
        """
        h, f, d, g = self.hidden_size, self.ffn_hidden_size, self.kv_channels, self.num_query_groups
        per_layer = 2 * h * h + 2 * h * g * d + 3 * h * f + 2 * h
        return self.num_layers * per_layer + h

    def total_params(self, vocab_size: int | None = None) -> int:
        """Non-embedding parameters plus the input and output embeddings: ``2·V·h`` untied, ``V·h`` tied."""
        v = self.vocab_size if vocab_size is None else vocab_size
        return self.non_embedding_params() + (1 if self.tie_word_embeddings else 2) * v * self.hidden_size

    def train_flops_per_token(self, seq_length: int, vocab_size: int | None = None) -> float:
        """Training FLOPs per token: ``6·N + 6·n_layer·n_ctx·d_attn`` (forward + backward).

        Source: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1
        (C_forward ≈ 2N + 2·n_layer·n_ctx·d_attn; training ≈ 3× forward). N here includes the
        output embedding (logits matmul) but not the input embedding lookup.
        """
        v = self.vocab_size if vocab_size is None else vocab_size
        n = self.non_embedding_params() + v * self.hidden_size
        return 6.0 * n + 6.0 * self.num_layers * seq_length * self.hidden_size


PRESETS: dict[str, LlamaShape] = {
    # CPU-sized: tests (head_dim 16; 2 KV groups so TP=2 splits them) and the quickstart (head_dim 64).
    "llama3-micro": LlamaShape(num_layers=2, hidden_size=64, ffn_hidden_size=192, num_attention_heads=4,
                               num_query_groups=2, max_position_embeddings=1024),
    "llama3-tiny": LlamaShape(num_layers=4, hidden_size=256, ffn_hidden_size=768, num_attention_heads=4,
                              num_query_groups=2, max_position_embeddings=2048),
    # Study ladder.
    "llama3-100m": LlamaShape(num_layers=12, hidden_size=768, ffn_hidden_size=2048, num_attention_heads=12,
                              num_query_groups=4),
    "llama3-300m": LlamaShape(num_layers=24, hidden_size=1024, ffn_hidden_size=2816, num_attention_heads=16,
                              num_query_groups=8),
    # Published configurations: Llama-3.2-1B, Llama-3.2-3B, Llama-3.1-8B (their config.json files).
    "llama3-1b": LlamaShape(num_layers=16, hidden_size=2048, ffn_hidden_size=8192, num_attention_heads=32,
                            num_query_groups=8, max_position_embeddings=131_072, tie_word_embeddings=True,
                            rope_scaling_factor=32.0, hf_model="meta-llama/Llama-3.2-1B"),
    "llama3-3b": LlamaShape(num_layers=28, hidden_size=3072, ffn_hidden_size=8192, num_attention_heads=24,
                            num_query_groups=8, max_position_embeddings=131_072, tie_word_embeddings=True,
                            rope_scaling_factor=32.0, hf_model="meta-llama/Llama-3.2-3B"),
    "llama3-8b": LlamaShape(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                            num_query_groups=8, max_position_embeddings=131_072, tie_word_embeddings=False,
                            rope_scaling_factor=8.0, hf_model="meta-llama/Llama-3.1-8B"),
}


def preset_of(shape: LlamaShape) -> Optional[str]:
    """The name of the preset whose architecture equals ``shape`` (``hf_model`` and ``vocab_size`` aside), or None."""
    from dataclasses import replace

    key = replace(shape, hf_model=None, vocab_size=0)
    for name, s in PRESETS.items():
        if replace(s, hf_model=None, vocab_size=0) == key:
            return name
    return None


VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Head dimensions vLLM's CPU attention backend serves (``CPUAttentionBackend.get_supported_head_sizes`` in
``vllm/v1/attention/backends/cpu_attn.py`` of the vllm-cpu release the CPU pins install). Exported models are
sampled with vLLM (the math evaluation, the recursive loop); a preset outside this list cannot be served there."""


def check_vllm_head_dim(preset: str, where: str, why: str) -> None:
    """Refuse ``preset`` when vLLM's CPU attention cannot serve its head dimension.

    Raises:
        MegasynthError: ``<where>: preset 'llama3-micro' has head_dim 16, which vLLM's CPU attention cannot serve
            (supported: 32, 64, ...); <why>``.
    """
    from megasynth.utils import MegasynthError

    d = get_preset(preset).kv_channels
    if d not in VLLM_CPU_HEAD_SIZES:
        raise MegasynthError(f"{where}: preset {preset!r} has head_dim {d}, which vLLM's CPU attention cannot serve "
                             f"(supported: {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}); {why}")


def get_preset(name: str) -> LlamaShape:
    """Return the named shape; raise :class:`~megasynth.utils.MegasynthError` for an unknown name."""
    from megasynth.utils import MegasynthError

    if name not in PRESETS:
        raise MegasynthError(f"model.preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]
