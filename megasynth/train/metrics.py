"""One metrics interface for a training run: JSONL files, TensorBoard events and a console line.

Files of ``runs/<run_id>/`` (see docs/CONTRACTS.md; paths from :class:`~megasynth.layout.RunLayout`):

- ``metrics.jsonl``: one row per optimizer step: ``step``, ``loss`` (mean training cross-entropy of
  the step, nats/token), ``lr``, ``grad_norm`` (L2 norm before clipping), ``consumed_tokens``,
  ``tokens_per_s`` (training tokens per wall second of the step, all devices), ``step_s``,
  ``tflops_per_device`` (model FLOP/s per device / 1e12), ``mfu`` (fraction of the device's dense
  BF16 peak; ``None`` without a peak), ``peak_mem_gib`` (GPU: ``max_memory_allocated``; CPU: peak RSS).
- ``evals.jsonl``: one row per (evaluation step, eval set or task, metric): ``step``, ``consumed_tokens``,
  ``eval_set`` (a held-out set, or a downstream task's name), ``metric`` and ``value``: ``loss`` (mean
  validation cross-entropy, nats/token) and ``bpb`` (bits per UTF-8 byte) of every held-out set; ``acc``,
  ``acc_norm``, ``bpb`` of downstream tasks evaluated in the loop (:mod:`megasynth.train.evaluator`). Rows
  written before the ``metric`` field existed are ``{..., "loss": x}`` and read as metric ``loss``
  (:func:`megasynth.train.record.eval_row_value`).
- ``tb/``: TensorBoard events: ``train/loss``, ``train/lr``, ``train/grad_norm``,
  ``train/consumed_tokens``, ``train/tokens_per_s``, ``train/tflops_per_device``, ``train/mfu``,
  ``train/peak_mem_gib``, ``eval/<eval_set>/{loss,bpb}``, ``downstream/<task>/{acc,acc_norm,bpb}`` (x-axis: step).

Model FLOPs per token are :meth:`megasynth.model.presets.LlamaShape.train_flops_per_token`
(6N + attention, Kaplan et al. 2020), so TFLOP/s per device = flops_per_token · tokens/s / devices / 1e12
and MFU = that / peak (PaLM's definition, Chowdhery et al. 2022, App. B; no recomputation FLOPs counted).

Rows are appended as they happen so a live run can be followed. A resumed run (``start_step``) first
drops rows after its checkpoint step (and TensorBoard events after it, ``purge_step``).
Only rank 0 writes (like torchtitan's ``components/metrics.py``).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from megasynth.layout import RunLayout
from megasynth.model.presets import PEAK_TFLOPS_BF16  # noqa: F401  (re-exported)
from megasynth.train.record import eval_row_value

logger = logging.getLogger("megasynth.train")


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def peak_tflops(override: Optional[float] = None, device_name: Optional[str] = None) -> Optional[float]:
    """Peak dense BF16 TFLOP/s of this device: ``override`` if given, else from :data:`PEAK_TFLOPS_BF16`
    by ``device_name`` (default ``torch.cuda.get_device_name()``); ``None`` on CPU or an unknown GPU."""
    if override is not None:
        return float(override)
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in device_name.upper():
            return value
    logger.warning("no peak TFLOP/s known for %r: set train.peak_tflops to log MFU", device_name)
    return None


def peak_memory_gib() -> float:
    """Peak memory of this process in GiB: CUDA ``max_memory_allocated`` on GPU, peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def _truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Keep rows with ``step <= last_step`` (rewritten atomically); return them."""
    from megasynth.utils import atomic_path

    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if row.get("step", 0) <= last_step:
            rows.append(row)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


class MetricsLogger:
    """Writes the metrics of one run (rank 0 only; a no-op elsewhere).

    Args:
        run_dir: ``runs/<run_id>``; ``metrics.jsonl``, ``evals.jsonl`` and ``tb/`` are created in it.
        name: run name for console lines.
        total_steps: optimizer steps of the run (for the ETA).
        log_interval: console line every this many steps (and at the last one).
        enabled: False on ranks other than 0.
        flops_per_token: model training FLOPs per token (for TFLOP/s and MFU).
        num_devices: devices of the run (world size).
        peak_tflops: peak TFLOP/s per device (:func:`peak_tflops`); ``None`` logs no MFU.
        start_step: the step a resumed run restarts after; later rows are dropped.
    """

    def __init__(self, run_dir: str | Path, name: str, total_steps: int, log_interval: int, enabled: bool = True,
                 flops_per_token: float = 0.0, num_devices: int = 1, peak_tflops: Optional[float] = None,
                 start_step: int = 0):
        self.files = RunLayout.at(run_dir)
        self.name, self.total_steps, self.log_interval, self.enabled = name, total_steps, log_interval, enabled
        self.flops_per_token, self.num_devices, self.peak_tflops = flops_per_token, max(1, num_devices), peak_tflops
        self.start_step = start_step
        self._tb = None
        self._metrics = self._evals = None
        self._start = time.monotonic()
        self._train_s = 0.0
        self._train_tokens = 0
        self.resumed_train_s = 0.0
        """Training seconds of the steps before ``start_step`` (from the kept rows)."""
        self.last_loss = float("nan")
        self.last_evals: dict[str, dict[str, float]] = {}
        """``{eval_set or task: {metric: value}}`` of the latest evaluation (restored on resume)."""
        if start_step:
            rows = _truncate_jsonl(self.files.metrics, start_step) if enabled else []
            evals = _truncate_jsonl(self.files.evals, start_step) if enabled else []
            self._broadcast_resume_state(rows, evals)
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.files.dir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(log_dir=str(self.files.tb), purge_step=start_step + 1 if start_step else None)
            self._metrics = open(self.files.metrics, "a", encoding="utf-8")
            self._evals = open(self.files.evals, "a", encoding="utf-8")

    def _broadcast_resume_state(self, rows: list[dict], evals: list[dict]) -> None:
        """Last loss, last evals and earlier training time from rank 0's kept rows, on every rank."""
        import torch.distributed as dist

        state = [None]
        if self.enabled:
            last_eval_step = max((e["step"] for e in evals), default=None)
            last: dict[str, dict[str, float]] = {}
            for e in evals:
                if e["step"] == last_eval_step:
                    metric, value = eval_row_value(e)
                    last.setdefault(e["eval_set"], {})[metric] = value
            state = [{"loss": rows[-1]["loss"] if rows else float("nan"), "evals": last,
                      "train_s": sum(r.get("step_s", 0.0) for r in rows),
                      "tokens": rows[-1]["consumed_tokens"] if rows and all("step_s" in r for r in rows) else 0}]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(state, src=0)
        self.last_loss = state[0]["loss"]
        self.last_evals = {k: dict(v) for k, v in state[0]["evals"].items()}
        self.resumed_train_s = state[0]["train_s"]
        if state[0]["tokens"]:  # rates over the whole run, not just this invocation
            self._train_s, self._train_tokens = self.resumed_train_s, state[0]["tokens"]

    def log_step(self, step: int, loss: float, lr: float, grad_norm: Optional[float], consumed_tokens: int,
                 step_tokens: int, step_s: float) -> None:
        """Record one optimizer step (``step`` counts from 1) that took ``step_s`` wall seconds."""
        self._train_s += step_s
        self._train_tokens += step_tokens
        self.last_loss = loss
        if not self.enabled:
            return
        tps = step_tokens / max(step_s, 1e-9)
        tflops = self._tflops(tps)
        mfu = tflops / self.peak_tflops if self.peak_tflops else None
        mem = peak_memory_gib()
        row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "consumed_tokens": consumed_tokens, "tokens_per_s": round(tps, 1), "step_s": round(step_s, 6),
               "tflops_per_device": round(tflops, 6), "mfu": None if mfu is None else round(mfu, 6),
               "peak_mem_gib": round(mem, 4)}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for tag, value in (("train/loss", loss), ("train/lr", lr), ("train/grad_norm", grad_norm),
                           ("train/consumed_tokens", consumed_tokens), ("train/tokens_per_s", tps),
                           ("train/tflops_per_device", tflops), ("train/mfu", mfu), ("train/peak_mem_gib", mem)):
            if value is not None:
                self._tb.add_scalar(tag, value, step)
        if step % self.log_interval == 0 or step == self.total_steps or step == self.start_step + 1:
            rate = self.train_tokens_per_s
            elapsed = time.monotonic() - self._start
            done = step - self.start_step
            eta = elapsed / max(done, 1) * (self.total_steps - step)
            gn = f"{grad_norm:.3f}" if grad_norm is not None else "n/a"
            util = f" | MFU {self.mfu:.1%}" if self.mfu is not None else ""
            logger.info("%s: step %d/%d | loss %.4f | lr %.3e | grad_norm %s | %.0f tokens/s | %.2f TFLOP/s/device%s"
                        " | peak mem %.2f GiB | elapsed %s | ETA %s", self.name, step, self.total_steps, loss, lr, gn,
                        rate, self.tflops_per_device, util, mem, _fmt_duration(elapsed), _fmt_duration(eta))

    def log_eval(self, step: int, consumed_tokens: int, eval_set: str, values: dict[str, float] | float,
                 group: str = "eval") -> None:
        """Record the metrics of one eval set (or task) at ``step``: ``values`` ``{metric: value}`` (a float is
        ``{"loss": value}``, nats/token). TensorBoard tags ``<group>/<eval_set>/<metric>``."""
        if not isinstance(values, dict):
            values = {"loss": float(values)}
        self.last_evals.setdefault(eval_set, {}).update(values)
        if not self.enabled:
            return
        for metric, value in values.items():
            row = {"step": step, "consumed_tokens": consumed_tokens, "eval_set": eval_set, "metric": metric,
                   "value": value}
            self._evals.write(json.dumps(row) + "\n")
            self._tb.add_scalar(f"{group}/{eval_set}/{metric}", value, step)
        self._evals.flush()
        logger.info("%s: step %d | %s %s %s", self.name, step, group, eval_set,
                    " | ".join(f"{m} {v:.4f}" for m, v in values.items()))

    @property
    def last_eval_losses(self) -> dict[str, float]:
        """``{eval_set: loss}`` (nats/token) of the latest evaluation."""
        return {k: v["loss"] for k, v in self.last_evals.items() if "loss" in v}

    @property
    def train_tokens_per_s(self) -> float:
        """Training tokens per wall second of the optimizer steps so far (evaluation excluded)."""
        return self._train_tokens / max(self._train_s, 1e-9)

    def _tflops(self, tokens_per_s: float) -> float:
        return self.flops_per_token * tokens_per_s / self.num_devices / 1e12

    @property
    def tflops_per_device(self) -> float:
        """Model TFLOP/s per device over the steps so far."""
        return self._tflops(self.train_tokens_per_s)

    @property
    def mfu(self) -> Optional[float]:
        """Model FLOPs utilisation over the steps so far (fraction of ``peak_tflops``), or None."""
        return self.tflops_per_device / self.peak_tflops if self.peak_tflops else None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        for f in (self._metrics, self._evals):
            if f is not None:
                f.close()
        self._metrics = self._evals = None
