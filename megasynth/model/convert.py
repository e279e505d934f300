"""Hugging Face Llama checkpoints ↔ megatron-core ``dist_checkpointing`` checkpoints; ``train.init_from``.

Import (:func:`import_hf`): a local HF Llama directory (``config.json`` + ``*.safetensors``, any Llama-3.x
shape: tied or untied embeddings, GQA, Llama-3.1/3.2 RoPE scaling) becomes a *weights-only* megatron
checkpoint in the format :mod:`megasynth.train.checkpoint` writes (``<out>/iter_0000000/`` plus
``latest_checkpointed_iteration.txt``). The model is built once, at TP = PP = 1, by the same builder as
training (:func:`megasynth.model.builder.build_model`, local spec), the HF tensors are copied in one
layer at a time (shape-checked against ``config.json``) and ``dist_checkpointing`` saves its
``sharded_state_dict()``; keys are global, so the checkpoint loads at any TP/PP/VPP. The checkpoint's
common values record ``model_shape`` (the :class:`~megasynth.model.presets.LlamaShape`), ``hf_config``
(the source ``config.json``), ``vocab_size`` (HF embedding rows) and ``preset`` (the matching preset's
name, or None); tokenizer and generation files are copied to ``<out>/hf_assets/``.

Export (:func:`export_hf`): a megatron checkpoint (imported, or a training run's, any layout) becomes an
HF directory: ``config.json`` (published Llama-3.x format), ``model.safetensors`` or
``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``, and the tokenizer files. Tensors
are read from the checkpoint one layer at a time (no model is built), so memory stays at one layer
plus the embeddings.

Both write into a temporary directory beside the output and rename it when complete; an existing output
is refused unless ``overwrite``. Weight mapping: :mod:`megasynth.model.hf_compat` (its one home).

``train.init_from`` (:func:`load_pretrained`): weights of such a checkpoint into a run's freshly built
model chunks (any TP/PP/VPP), after checking every tensor's global shape, the architecture fields and
the vocabulary against the run's model and tokenizer; the optimizer's main parameters are refreshed
so training starts from the loaded weights with a fresh optimizer state and LR schedule.

Megatron-Bridge (NVIDIA's converter, PyPI ``megatron-bridge`` 0.3.1) was not used: it requires
``transformers<5`` (this project uses 5.x), ``transformer-engine[core_cu13]``, ``mamba-ssm`` and
``causal-conv1d`` (CUDA builds), and ``import megatron.bridge`` fails without Transformer Engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from megasynth.model.hf_compat import (hf_config_dict, hf_layer_to_megatron, hf_tensor_shapes,
                                       megatron_layer_to_hf, pad_vocab_rows, read_hf_config)
from megasynth.model.presets import LlamaShape, get_preset, preset_of
from megasynth.utils import MegasynthError, Progress

logger = logging.getLogger("megasynth.model")

HF_ASSETS = "hf_assets"
"""Subdirectory of an imported checkpoint holding the source's tokenizer and generation files."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")
"""Files copied along with the weights (those that exist)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

MAX_SHARD_BYTES = 5 * 2**30
"""Largest safetensors file written by :func:`export_hf` (bytes; HF's default shard size)."""


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------
def _dtype_name(name: str | None, where: str) -> str:
    if name is None:
        return "float32"
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    if name not in DTYPES:
        raise MegasynthError(f"{where}: unknown dtype {name!r} (known: {', '.join(DTYPES)})")
    return name


@contextlib.contextmanager
def _output_dir(out: Path, overwrite: bool, flag: str) -> Iterator[Path]:
    """A temporary directory beside ``out``, renamed onto ``out`` when the block succeeds."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise MegasynthError(f"{flag}: {out} exists (delete it, choose another path, or pass --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_assets(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def resolve_checkpoint(path: str | Path, field: str) -> Path:
    """The ``iter_NNNNNNN`` directory of ``path`` (itself, or the latest one of a checkpoints root).

    Raises:
        MegasynthError: naming ``field`` when there is no checkpoint at ``path``.
    """
    from megasynth.train.checkpoint import LATEST_FILE, latest_checkpoint

    path = Path(path)
    if (path / LATEST_FILE).is_file():
        return latest_checkpoint(path)
    if (path / "metadata.json").is_file():
        return path
    raise MegasynthError(f"{field}: {path} is not a megatron checkpoint (no {LATEST_FILE} or metadata.json)")


@contextlib.contextmanager
def _process_group() -> Iterator[None]:
    """A one-process gloo group (in-memory store) if none exists; dist_checkpointing needs one."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@functools.lru_cache(maxsize=1)
def _layer_keys_map() -> dict[str, str]:
    """Local-spec per-layer names → checkpoint names (megatron's ``sharded_state_dict_keys_map``)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return dict(get_gpt_layer_local_spec(normalization="RMSNorm").submodules.sharded_state_dict_keys_map)


def checkpoint_key(local_name: str) -> tuple[str, int | None]:
    """``(dist_checkpointing key, layer index or None)`` of a local-spec TP=1 state-dict name.

    ``decoder.layers.3.input_layernorm.weight`` → ``("decoder.layers.self_attention.linear_qkv.layer_norm_weight", 3)``.
    """
    parts = local_name.split(".")
    if parts[:2] != ["decoder", "layers"]:
        return local_name, None
    layer, rest = int(parts[2]), ".".join(parts[3:])
    for old, new in _layer_keys_map().items():
        if rest.startswith(old):
            rest = new + rest[len(old):]
    return f"decoder.layers.{rest}", layer


def _shape_from_common(common: dict) -> Optional[LlamaShape]:
    d = common.get("model_shape")
    if isinstance(d, dict):
        return LlamaShape(**d)
    preset = (common.get("resume_key") or {}).get("model.preset")
    return get_preset(preset) if preset else None


def _vocab_from_common(common: dict) -> Optional[int]:
    v = common.get("vocab_size")
    if v is None:
        v = (common.get("resume_key") or {}).get("vocab_size")
    return int(v) if v is not None else None


# --------------------------------------------------------------------------------------------------
# HF safetensors
# --------------------------------------------------------------------------------------------------
class HFWeights:
    """Tensors of a local HF directory's safetensors files, read one at a time (``safe_open``).

    Reads ``model.safetensors.index.json`` (sharded) or every ``*.safetensors`` file.

    Raises:
        MegasynthError: no safetensors files (``pytorch_model.bin`` is not read), an index naming a missing
            file, invalid JSON (``file:line``).
    """

    def __init__(self, model_dir: str | Path) -> None:
        from megasynth.utils import read_json

        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        self.where: dict[str, Path] = {}
        if index.is_file():
            wm = read_json(index).get("weight_map")
            if not isinstance(wm, dict):
                raise MegasynthError(f"{index}: no 'weight_map' object")
            for name, fname in wm.items():
                self.where[name] = self.dir / fname
            for f in set(self.where.values()):
                if not f.is_file():
                    raise MegasynthError(f"{index}: names {f.name}, which is missing")
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                other = [p.name for p in self.dir.glob("*.bin")] + [p.name for p in self.dir.glob("*.pth")]
                raise MegasynthError(f"{self.dir}: no *.safetensors files"
                                     + (f" (found {', '.join(other)}; only safetensors are read)" if other else ""))
            from safetensors import safe_open

            for f in files:
                with safe_open(str(f), framework="pt") as h:
                    for name in h.keys():
                        self.where[name] = f
        self._handles: dict[Path, object] = {}

    def _handle(self, f: Path):
        from safetensors import safe_open

        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self.where[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise MegasynthError(f"{self.dir}: tensor {name!r} not found in the safetensors files")
        return self._handle(self.where[name]).get_tensor(name)

    def check(self, shape: LlamaShape, vocab_size: int) -> None:
        """Every tensor the config implies exists with its shape; no unknown tensor is present.

        Raises:
            MegasynthError: naming the safetensors file and tensor (missing, wrong shape, unexpected).
        """
        want = hf_tensor_shapes(shape, vocab_size)
        for name, s in want.items():
            if name not in self.where:
                raise MegasynthError(f"{self.dir}: tensor {name!r} missing (config.json implies it)")
            got = self.shape(name)
            if got != s:
                raise MegasynthError(f"{self.where[name]}: {name} has shape {list(got)}, config.json implies {list(s)}")
        ignorable = {"lm_head.weight"} if shape.tie_word_embeddings else set()
        for name in self.where:
            if name not in want and name not in ignorable and not name.endswith("rotary_emb.inv_freq"):
                raise MegasynthError(f"{self.where[name]}: unexpected tensor {name!r} for a Llama of this config.json")


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------
def import_hf(hf_dir: str | Path, megatron_path: str | Path, dtype: str | None = None,
              overwrite: bool = False) -> Path:
    """Convert a local HF Llama directory into a weights-only megatron ``dist_checkpointing`` checkpoint.

    Runs in one process (it builds the TP = PP = 1 model: memory ≈ the weights in ``dtype``).

    Args:
        hf_dir: directory with ``config.json`` and ``*.safetensors`` (plus tokenizer files, copied).
        megatron_path: output root; the checkpoint is ``megatron_path/iter_0000000``.
        dtype: ``float32``/``bfloat16``/``float16`` of the saved weights; default ``float32`` (exact for
            every source dtype).
        overwrite: replace an existing ``megatron_path``.

    Returns:
        ``megatron_path``.

    Raises:
        MegasynthError: not a Llama directory (``config.json`` field named), missing/mis-shaped tensors
            (file and tensor named), unsupported RoPE scaling, ``megatron_path`` exists.
    """
    from megasynth.config import ModelConfig
    from megasynth.model import builder
    from megasynth.train.checkpoint import save_checkpoint

    hf_dir, megatron_path = Path(hf_dir), Path(megatron_path)
    cfg, shape = read_hf_config(hf_dir)
    weights = HFWeights(hf_dir)
    weights.check(shape, shape.vocab_size)
    dtype = _dtype_name(dtype, "--torch-dtype")
    preset = preset_of(shape)
    logger.info("import %s: %d layers, hidden %d, %d heads / %d KV groups, vocab %d, tied %s, rope scaling %s "
                "(preset %s), %s", hf_dir, shape.num_layers, shape.hidden_size, shape.num_attention_heads,
                shape.num_query_groups, shape.vocab_size, shape.tie_word_embeddings, shape.rope_scaling_factor,
                preset, dtype)
    with _output_dir(megatron_path, overwrite, "--megatron-path") as tmp:
        with _single_rank_parallel():
            model = builder.build_model(ModelConfig(preset=preset or "llama3-tiny", precision=_PRECISION[dtype]),
                                        shape.vocab_size, shape.max_position_embeddings, shape=shape)
            params = model.state_dict(keep_vars=True)
            rows = builder.padded_vocab_size(shape.vocab_size, 1)

            def put(name: str, value: torch.Tensor) -> None:
                p = params[name]
                if tuple(p.shape) != tuple(value.shape):  # a mapping bug, not bad input
                    raise RuntimeError(f"{name}: megatron {tuple(p.shape)} vs converted {tuple(value.shape)}")
                with torch.no_grad():
                    p.data.copy_(value.to(p.dtype))

            progress = Progress(f"import {hf_dir.name}", shape.num_layers + 1, unit="layers")
            put("embedding.word_embeddings.weight", pad_vocab_rows(weights.get("model.embed_tokens.weight"), rows))
            put("decoder.final_layernorm.weight", weights.get("model.norm.weight"))
            if not shape.tie_word_embeddings:
                put("output_layer.weight", pad_vocab_rows(weights.get("lm_head.weight"), rows))
            progress.update(1)
            for i in range(shape.num_layers):
                for name, value in hf_layer_to_megatron(weights.get, i, shape).items():
                    put(name, value)
                progress.update(1)
            progress.close()
            common = {"model_shape": dataclasses.asdict(shape), "hf_config": cfg, "vocab_size": shape.vocab_size,
                      "preset": preset, "converted_from": str(hf_dir.resolve()), "torch_dtype": dtype}
            save_checkpoint(model, tmp, 0, common=common)
        _copy_assets(hf_dir, tmp / HF_ASSETS)
    logger.info("import %s -> %s done", hf_dir, megatron_path)
    return megatron_path


@contextlib.contextmanager
def _single_rank_parallel() -> Iterator[None]:
    """megatron's parallel state for one process (TP = PP = 1), torn down afterwards if created here."""
    import torch.distributed as dist

    from megasynth.model import builder

    if dist.is_initialized() and dist.get_world_size() > 1:
        raise MegasynthError("convert: run the converter in a single process (not under torchrun)")
    created = not dist.is_initialized()
    builder.init_parallel(1, 1)
    try:
        yield
    finally:
        if created:
            builder.destroy_parallel()


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------
def _load_tensors(ckpt: Path, meta: dict, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Full (global) tensors of ``names`` (local-spec TP=1 names) from the checkpoint; one layer's slice
    of the stacked layer tensors."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    sharded = {}
    for name in names:
        key, i = checkpoint_key(name)
        st = meta[key]
        if i is None:
            sharded[name] = ShardedTensor.from_rank_offsets(key, torch.empty(st.global_shape, dtype=st.dtype))
        else:
            # layer i of the stacked [L, ...] tensor, as a [1, ...] block (a plain chunk for torch DCP)
            n_layers = st.global_shape[0]
            sharded[name] = ShardedTensor.from_rank_offsets(
                key, torch.empty((1, *st.global_shape[1:]), dtype=st.dtype), (0, i, n_layers))
    loaded = dist_checkpointing.load(sharded, str(ckpt), validate_access_integrity=False)
    return {name: loaded[name] if checkpoint_key(name)[1] is None else loaded[name][0] for name in names}


def _local_layer_names(i: int) -> list[str]:
    p = f"decoder.layers.{i}."
    return [p + n for n in ("self_attention.linear_qkv.weight", "self_attention.linear_proj.weight",
                            "mlp.linear_fc1.weight", "mlp.linear_fc2.weight", "input_layernorm.weight",
                            "pre_mlp_layernorm.weight")]


def _check_checkpoint_shapes(meta: dict, shape: LlamaShape, ckpt: Path, field: str) -> int:
    """Check the checkpoint's global tensor shapes against ``shape``; return its embedding rows."""
    h, f, d = shape.hidden_size, shape.ffn_hidden_size, shape.kv_channels
    n_h, n_g, L = shape.num_attention_heads, shape.num_query_groups, shape.num_layers
    emb = meta.get("embedding.word_embeddings.weight")
    if emb is None:
        raise MegasynthError(f"{field}: {ckpt} has no embedding.word_embeddings.weight")
    rows = emb.global_shape[0]
    want = {"embedding.word_embeddings.weight": (rows, h), "decoder.final_layernorm.weight": (h,)}
    if not shape.tie_word_embeddings:
        want["output_layer.weight"] = (rows, h)
    per = {"self_attention.linear_qkv.weight": ((n_h + 2 * n_g) * d, h), "self_attention.linear_proj.weight": (h, n_h * d),
           "mlp.linear_fc1.weight": (2 * f, h), "mlp.linear_fc2.weight": (h, f), "input_layernorm.weight": (h,),
           "pre_mlp_layernorm.weight": (h,)}
    for name, s in per.items():
        want[checkpoint_key(f"decoder.layers.0.{name}")[0]] = (L, *s)
    for key, s in want.items():
        if key not in meta:
            raise MegasynthError(f"{field}: {ckpt} has no tensor {key} (tied embeddings: {shape.tie_word_embeddings})")
        if tuple(meta[key].global_shape) != s:
            raise MegasynthError(f"{field}: {ckpt} tensor {key} has shape {list(meta[key].global_shape)}, the model "
                                 f"shape implies {list(s)}")
    return rows


class _ShardWriter:
    """Writes HF tensors into safetensors shards of at most ``max_bytes`` as they arrive, in a fixed order."""

    def __init__(self, out: Path, order: list[tuple[str, int]], max_bytes: int) -> None:
        self.out, self.shards, cur, size = out, [], [], 0
        for name, nbytes in order:
            if cur and size + nbytes > max_bytes:
                self.shards.append(cur)
                cur, size = [], 0
            cur.append(name)
            size += nbytes
        if cur:
            self.shards.append(cur)
        self.total = sum(n for _, n in order)
        self.pending: dict[str, torch.Tensor] = {}
        self.next = 0
        self.weight_map: dict[str, str] = {}

    def _fname(self, k: int) -> str:
        n = len(self.shards)
        return "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        self.pending.update(tensors)
        while self.next < len(self.shards) and all(n in self.pending for n in self.shards[self.next]):
            names = self.shards[self.next]
            fname = self._fname(self.next)
            save_file({n: self.pending.pop(n).contiguous() for n in names}, str(self.out / fname),
                      metadata={"format": "pt"})
            self.weight_map.update({n: fname for n in names})
            self.next += 1

    def close(self) -> None:
        if self.next != len(self.shards):  # pragma: no cover - a bug in the caller's order
            raise RuntimeError(f"export: {len(self.shards) - self.next} shards not written")
        if len(self.shards) > 1:
            (self.out / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}, indent=2) + "\n")


def _write_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy HF tokenizer files from ``src``; a megasynth BPE directory also gets a ``tokenizer_config.json``."""
    from megasynth.data.tokenizer import META_FILE
    from megasynth.utils import read_json

    if not src.is_dir():
        raise MegasynthError(f"--tokenizer: directory not found: {src}")
    meta = read_json(src / META_FILE) if (src / META_FILE).is_file() else None
    if meta and meta.get("kind") == "llama3":
        raise MegasynthError(f"--tokenizer: {src} is the tiktoken Llama-3 tokenizer; pass an HF Llama-3 tokenizer "
                             "directory (tokenizer.json) instead")
    copied = _copy_assets(src, dst)
    if meta and "tokenizer_config.json" not in copied:
        (dst / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": meta.get("bos_token"),
            "eos_token": meta.get("eod_token"), "pad_token": meta.get("pad_token"), "clean_up_tokenization_spaces": False,
        }, indent=2) + "\n")
        copied.append("tokenizer_config.json")
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        raise MegasynthError(f"--tokenizer: {src} has no tokenizer.json or tokenizer.model")
    return copied


def export_hf(megatron_path: str | Path, hf_path: str | Path, tokenizer: str | Path | None = None,
              preset: str | None = None, dtype: str | None = None, overwrite: bool = False,
              max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Convert a megatron checkpoint (imported or trained, any TP/PP/VPP) into a HF Llama directory.

    Args:
        megatron_path: an ``iter_NNNNNNN`` directory or a checkpoints root (its latest checkpoint).
        hf_path: output directory (``config.json``, safetensors, tokenizer files).
        tokenizer: tokenizer directory to copy (HF files, or a megasynth BPE directory); default the
            ``hf_assets`` an import saved, if any.
        preset: model shape for checkpoints that do not record one (a training run's records its preset).
        dtype: dtype of the written tensors; default the checkpoint's.
        max_shard_bytes: largest safetensors file.

    Returns:
        ``hf_path``.

    Raises:
        MegasynthError: no checkpoint, no shape known (``--preset``), tensor shapes that do not match the
            shape (tensor named), ``hf_path`` exists.
    """
    from megatron.core import dist_checkpointing

    from megasynth.train.checkpoint import read_common

    ckpt = resolve_checkpoint(megatron_path, "--megatron-path")
    hf_path = Path(hf_path)
    with _process_group():
        common = read_common(ckpt)
        shape = get_preset(preset) if preset else _shape_from_common(common)
        if shape is None:
            raise MegasynthError(f"--preset: {ckpt} does not record its model shape; name the preset it was trained with")
        meta = dict(dist_checkpointing.load_tensors_metadata(str(ckpt)))
        rows = _check_checkpoint_shapes(meta, shape, ckpt, "--megatron-path")
        vocab = _vocab_from_common(common) or rows
        if vocab > rows:
            raise MegasynthError(f"--megatron-path: {ckpt} records vocab_size {vocab} but has {rows} embedding rows")
        src_dtype = meta["embedding.word_embeddings.weight"].dtype
        out_dtype = DTYPES[_dtype_name(dtype, "--torch-dtype")] if dtype else src_dtype
        dtype_name = {v: k for k, v in DTYPES.items()}[out_dtype]
        itemsize = torch.empty((), dtype=out_dtype).element_size()
        order = [(n, itemsize * int(torch.tensor(s).prod())) for n, s in hf_tensor_shapes(shape, vocab).items()]
        hf_cfg = dict(common.get("hf_config") or {})
        config = hf_config_dict(shape, vocab, dtype_name, hf_cfg.get("bos_token_id"), hf_cfg.get("eos_token_id"))
        if "pad_token_id" in hf_cfg:
            config["pad_token_id"] = hf_cfg["pad_token_id"]
        logger.info("export %s -> %s: %d layers, vocab %d, %s", ckpt, hf_path, shape.num_layers, vocab, dtype_name)
        with _output_dir(hf_path, overwrite, "--hf-path") as tmp:
            writer = _ShardWriter(tmp, order, max_shard_bytes)

            def cast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                return {k: v.to(out_dtype) for k, v in tensors.items()}

            progress = Progress(f"export {ckpt.name}", shape.num_layers + 1, unit="layers")
            top = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight"]
            if not shape.tie_word_embeddings:
                top.append("output_layer.weight")
            t = _load_tensors(ckpt, meta, top)
            first = {"model.embed_tokens.weight": t["embedding.word_embeddings.weight"][:vocab],
                     "model.norm.weight": t["decoder.final_layernorm.weight"]}
            if not shape.tie_word_embeddings:
                first["lm_head.weight"] = t["output_layer.weight"][:vocab]
            writer.add(cast(first))
            progress.update(1)
            for i in range(shape.num_layers):
                t = _load_tensors(ckpt, meta, _local_layer_names(i))
                writer.add(cast(megatron_layer_to_hf(t.__getitem__, i, shape)))
                progress.update(1)
            writer.close()
            progress.close()
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            if tokenizer is not None:
                _write_tokenizer(Path(tokenizer), tmp)
            elif (ckpt.parent / HF_ASSETS).is_dir():
                _copy_assets(ckpt.parent / HF_ASSETS, tmp)
    logger.info("export %s -> %s done", ckpt, hf_path)
    return hf_path


# --------------------------------------------------------------------------------------------------
# train.init_from
# --------------------------------------------------------------------------------------------------
_ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "rotary_base", "norm_epsilon", "tie_word_embeddings", "rope_scaling_factor")


def load_pretrained(model, path: str | Path, shape: LlamaShape, vocab_size: int, optimizer=None,
                    field: str = "train.init_from", preset: str | None = None) -> dict:
    """Load the weights of a megatron checkpoint into freshly built model chunks (any TP/PP/VPP).

    For continued pre-training: only the model weights are read; the optimizer state and LR schedule
    stay fresh. ``optimizer.reload_model_params()`` copies the loaded weights into the optimizer's
    main (fp32) parameters, so the first step starts from them. Collective: call on every rank.

    Args:
        model: this rank's model chunks (possibly wrapped in DDP / ``Float16Module``) or one GPTModel.
        path: an ``iter_NNNNNNN`` directory or a checkpoints root (its latest checkpoint).
        shape: the run's model shape; vocab_size: the run's tokenizer vocabulary (ids).
        optimizer: the run's megatron optimizer (main parameters refreshed), or None.
        field / preset: named in error messages.

    Returns:
        The checkpoint's common values.

    Raises:
        MegasynthError: one line naming ``field``: no checkpoint; an architecture field (layers, hidden,
            heads, KV groups, RoPE base/scaling, tying, norm epsilon) or a tensor's global shape that
            differs from the run's model; a vocabulary that differs from the tokenizer's.
    """
    from megatron.core import dist_checkpointing

    from megasynth.model.builder import _sharded_tensors
    from megasynth.train.checkpoint import load_checkpoint, read_common

    ckpt = resolve_checkpoint(path, field)
    what = f"model.preset {preset!r}" if preset else "the run's model"
    common = read_common(ckpt)
    saved = _shape_from_common(common)
    if saved is not None:
        for k in _ARCH_FIELDS:
            a, b = getattr(saved, k), getattr(shape, k)
            if a != b:
                raise MegasynthError(f"{field}: {ckpt} has {k} = {a}, {what} has {b}")
    v = _vocab_from_common(common)
    if v is not None and v != vocab_size:
        raise MegasynthError(f"{field}: {ckpt} has a vocabulary of {v} ids, the tokenizer has {vocab_size} "
                             "(use the checkpoint's tokenizer)")
    meta = dict(dist_checkpointing.load_tensors_metadata(str(ckpt)))
    for chunk in (model if isinstance(model, (list, tuple)) else [model]):
        while isinstance(getattr(chunk, "module", None), torch.nn.Module):  # DDP / Float16Module
            chunk = chunk.module
        for st in _sharded_tensors(chunk.sharded_state_dict()):
            if st.key not in meta:
                raise MegasynthError(f"{field}: {ckpt} has no tensor {st.key} ({what}; tied embeddings: "
                                     f"{shape.tie_word_embeddings})")
            got, want = tuple(meta[st.key].global_shape), tuple(st.global_shape)
            if st.allow_shape_mismatch:  # vocabulary rows: padding differs with TP; the tokenizer's ids must fit
                ok = got[1:] == want[1:] and got[0] >= vocab_size
            else:
                ok = got == want
            if not ok:
                raise MegasynthError(f"{field}: {ckpt} tensor {st.key} has shape {list(got)}, {what} expects "
                                     f"{list(want)}")
    common = load_checkpoint(model, ckpt)
    if optimizer is not None:
        from megasynth.model import cpu_compat

        with cpu_compat.cpu_device_mode():
            optimizer.reload_model_params()
    logger.info("%s: loaded weights of %s", field, ckpt)
    return common


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="convert_checkpoint.py",
        description="Convert Hugging Face Llama checkpoints to megatron-core dist_checkpointing checkpoints and back "
                    "(subcommands and flag names as Megatron-Bridge's examples/conversion/convert_checkpoints.py).")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF Llama directory -> megatron checkpoint (loads at any TP/PP)")
    imp.add_argument("--hf-model", required=True, help="local HF directory: config.json + *.safetensors")
    imp.add_argument("--megatron-path", required=True, help="output checkpoint root (iter_0000000 inside)")
    imp.add_argument("--torch-dtype", default=None, choices=sorted(DTYPES),
                     help="dtype of the saved weights (default float32)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --megatron-path")
    exp = sub.add_parser("export", help="megatron checkpoint -> HF Llama directory")
    exp.add_argument("--megatron-path", required=True, help="checkpoint root (latest) or an iter_NNNNNNN directory")
    exp.add_argument("--hf-path", required=True, help="output HF directory")
    exp.add_argument("--tokenizer", default=None, help="tokenizer directory to copy (default: the import's hf_assets)")
    exp.add_argument("--preset", default=None, help="model preset, for checkpoints that do not record their shape")
    exp.add_argument("--torch-dtype", default=None, choices=sorted(DTYPES), help="dtype of the written tensors "
                     "(default: the checkpoint's)")
    exp.add_argument("--max-shard-size-gb", type=float, default=MAX_SHARD_BYTES / 2**30,
                     help="largest safetensors file in GiB")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing --hf-path")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/convert_checkpoint.py``; returns the exit status (2 on bad input)."""
    import sys

    from megasynth.utils import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "import":
            import_hf(args.hf_model, args.megatron_path, args.torch_dtype, args.overwrite)
        else:
            export_hf(args.megatron_path, args.hf_path, args.tokenizer, args.preset, args.torch_dtype,
                      args.overwrite, int(args.max_shard_size_gb * 2**30))
    except MegasynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
