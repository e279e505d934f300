"""CPU-only workarounds that let megatron-core 0.16.1-0.19.x (local spec, gloo) run without CUDA.

Everything here is a **no-op when CUDA is available**: the GPU tier runs megatron-core untouched.

megatron-core assumes a GPU in a handful of places that the local (pure PyTorch) spec still reaches:

=====================================================  ============================================
megatron-core assumption                               workaround (this module)
=====================================================  ============================================
``torch.cuda.current_device()`` as a device            :func:`enable` → returns ``"cpu"``
(rotary embeddings, grad buffers, optimizer)
``torch.cuda.synchronize()`` (DDP, timers)             :func:`enable` → no-op
``torch.cuda.current_stream().wait_event(...)``        :func:`enable` → torch's CPU stream stub
(DDP gradient reduce, megatron-core >= 0.19)           (``torch.cpu.current_stream``, no-op waits)
causal mask ``torch.triu(..., device="cuda")``         :func:`enable` → the same mask built on CPU
(``transformer/utils.get_default_causal_mask``)        (cached per sequence length)
``torch.tensor(..., device="cuda")`` in schedules,     :func:`cpu_device_mode` (a ``TorchFunctionMode``)
optimizer, grad clipping; ``tensor.cuda()``            rewrites ``"cuda"`` devices to CPU
``param.type() == "torch.cuda.FloatTensor"`` asserts   :func:`cpu_device_mode` reports CPU tensors as
(optimizer, ``clip_grads``)                            the matching ``torch.cuda.*Tensor`` type name
CUDA RNG tracker (``model_parallel_cuda_manual_seed``)  callers pass ``inference_rng_tracker=True``
                                                       (:func:`manual_seed`); dropout is 0 in the study
CUDA RNG save/restore in activation recomputation      :func:`enable` → ``_get/_set_cuda_rng_state``
(``tensor_parallel.random``)                           are no-ops
denormal floats (tiny gradients late in training make  ``torch.set_flush_denormal(True)``
CPU steps ~15x slower)
=====================================================  ============================================

Transformer Engine and apex are absent on CPU; megatron-core guards their imports itself and falls back
to torch norms and ``torch.optim.AdamW``. The patches hold with both torch builds on a machine without a
GPU: the CPU build (Python 3.11, ``make test``) and PyPI's CUDA build (Python 3.12,
``make test-mcore-latest``), where ``torch.cuda.is_available()`` is False as well.

Usage::

    cpu_compat.enable()                 # once per process, before building the model
    with cpu_compat.cpu_device_mode():  # around forward_backward_func(...) and optimizer.step()
        ...
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger("megasynth.model")

_ENABLED = False

if not torch.cuda.is_available():
    # megatron-core warns at import time that Transformer Engine / apex are missing: expected on CPU.
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).* not installed.*")
    warnings.filterwarnings("ignore", message=r".*Apex is not installed.*")

# CPU tensor type names reported as their CUDA names inside cpu_device_mode (megatron asserts on them).
_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def cuda_available() -> bool:
    """True when a CUDA device is usable (then every function here is a no-op)."""
    return torch.cuda.is_available()


def enable() -> None:
    """Patch the process-wide CUDA assumptions of megatron-core for a CPU-only run (idempotent).

    Patches ``torch.cuda.current_device`` (→ ``"cpu"``), ``torch.cuda.synchronize`` (→ no-op),
    ``torch.cuda.current_stream`` (→ ``torch.cpu.current_stream``), megatron-core's default causal mask
    (→ built on CPU) and its CUDA RNG state save/restore used by activation recomputation (→ no-ops),
    and flushes denormals to zero. Does nothing when CUDA is available.
    """
    global _ENABLED
    if _ENABLED or cuda_available():
        return
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]
    # megatron-core >= 0.19 waits on CUDA-graph events of the current stream before every gradient
    # reduce (``_ParamAndGradBucketGroup.start_grad_sync``): torch's CPU stream stub has no-op waits.
    torch.cuda.current_stream = torch.cpu.current_stream  # type: ignore[assignment]
    torch.set_flush_denormal(True)

    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.tensor_parallel.random as tp_random
    import megatron.core.transformer.utils as transformer_utils

    transformer_utils.get_default_causal_mask = _cpu_causal_mask
    fused_softmax.get_default_causal_mask = _cpu_causal_mask
    # Activation recomputation saves/restores the CUDA RNG state around the recomputed forward; on CPU
    # there is none (the CPU state is saved by megatron's CheckpointFunction itself).
    tp_random._get_cuda_rng_state = lambda *args, **kwargs: None
    tp_random._set_cuda_rng_state = lambda *args, **kwargs: None
    _ENABLED = True
    logger.debug("cpu_compat: megatron-core CPU workarounds enabled")


@functools.lru_cache(maxsize=8)
def _cpu_causal_mask(sq: int) -> torch.Tensor:
    """Causal mask ``[sq, sq]`` (True = masked, above the diagonal), as megatron builds it, on CPU."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def manual_seed(seed: int) -> None:
    """Seed torch and megatron-core's model-parallel RNG tracker.

    On CPU the CUDA RNG tracker cannot fork CUDA generator states, so megatron's inference tracker
    (whose ``fork`` is a no-op) is used; dropout then draws from the default CPU generator.
    """
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    torch.manual_seed(seed)
    if cuda_available():
        model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
    else:
        model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True, force_reset_rng=True)


def _is_cuda_device(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return isinstance(dev, int) and not isinstance(dev, bool)


class _CPUDeviceMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU and reports CPU float tensors as CUDA types."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        dev = kwargs.get("device")
        if dev is not None and _is_cuda_device(dev):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_device_mode() -> Iterator[None]:
    """Context in which megatron-core's ``device="cuda"`` allocations land on CPU.

    Use around ``forward_backward_func`` and the optimizer step. A no-op when CUDA is available.
    """
    if cuda_available():
        yield
        return
    enable()
    with _CPUDeviceMode():
        yield
