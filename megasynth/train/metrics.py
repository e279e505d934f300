"""One metrics interface for a training run: JSONL files, TensorBoard events and a console line.

Files of ``runs/<mix>/`` (see docs/CONTRACTS.md):

- ``metrics.jsonl``: one row per optimizer step: ``step``, ``loss`` (mean training cross-entropy of
  the step, nats/token), ``lr``, ``grad_norm`` (L2 norm before clipping), ``consumed_tokens``,
  ``tokens_per_s`` (training tokens per wall second of the step).
- ``evals.jsonl``: one row per (evaluation step, eval set): ``step``, ``consumed_tokens``,
  ``eval_set``, ``loss`` (mean validation cross-entropy, nats/token).
- ``tb/``: TensorBoard events: ``train/loss``, ``train/lr``, ``train/grad_norm``,
  ``train/consumed_tokens``, ``train/tokens_per_s``, ``eval/<eval_set>/loss`` (x-axis: step).

Rows are appended as they happen so a live run can be followed; a run directory without its
completion marker is wiped and restarted, so partial files are never read as results.
Only rank 0 writes (like torchtitan's ``components/metrics.py``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

logger = logging.getLogger("megasynth.train")


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsLogger:
    """Writes the metrics of one run (rank 0 only; a no-op elsewhere).

    Args:
        run_dir: ``runs/<mix>``; ``metrics.jsonl``, ``evals.jsonl`` and ``tb/`` are created in it.
        name: run name for console lines.
        total_steps: optimizer steps of the run (for the ETA).
        log_interval: console line every this many steps (and at the last one).
        enabled: False on ranks other than 0.
    """

    def __init__(self, run_dir: str | Path, name: str, total_steps: int, log_interval: int, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.name, self.total_steps, self.log_interval, self.enabled = name, total_steps, log_interval, enabled
        self._tb = None
        self._metrics = self._evals = None
        self._start = time.monotonic()
        self._train_s = 0.0
        self._train_tokens = 0
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
            self._evals = open(self.run_dir / "evals.jsonl", "a", encoding="utf-8")

    def log_step(self, step: int, loss: float, lr: float, grad_norm: Optional[float], consumed_tokens: int,
                 step_tokens: int, step_s: float) -> None:
        """Record one optimizer step (``step`` counts from 1) that took ``step_s`` wall seconds."""
        self._train_s += step_s
        self._train_tokens += step_tokens
        if not self.enabled:
            return
        tps = step_tokens / max(step_s, 1e-9)
        row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "consumed_tokens": consumed_tokens, "tokens_per_s": round(tps, 1)}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for tag, value in (("train/loss", loss), ("train/lr", lr), ("train/grad_norm", grad_norm),
                           ("train/consumed_tokens", consumed_tokens), ("train/tokens_per_s", tps)):
            if value is not None:
                self._tb.add_scalar(tag, value, step)
        if step % self.log_interval == 0 or step == self.total_steps or step == 1:
            rate = self._train_tokens / max(self._train_s, 1e-9)
            elapsed = time.monotonic() - self._start
            eta = elapsed / step * (self.total_steps - step)
            gn = f"{grad_norm:.3f}" if grad_norm is not None else "n/a"
            logger.info("%s: step %d/%d | loss %.4f | lr %.3e | grad_norm %s | %.0f tokens/s | "
                        "elapsed %s | ETA %s", self.name, step, self.total_steps, loss, lr, gn, rate,
                        _fmt_duration(elapsed), _fmt_duration(eta))

    def log_eval(self, step: int, consumed_tokens: int, eval_set: str, loss: float) -> None:
        """Record the validation loss (nats/token) of one eval set at ``step``."""
        if not self.enabled:
            return
        row = {"step": step, "consumed_tokens": consumed_tokens, "eval_set": eval_set, "loss": loss}
        self._evals.write(json.dumps(row) + "\n")
        self._evals.flush()
        self._tb.add_scalar(f"eval/{eval_set}/loss", loss, step)
        logger.info("%s: step %d | eval %s loss %.4f", self.name, step, eval_set, loss)

    @property
    def train_tokens_per_s(self) -> float:
        """Training tokens per wall second of the optimizer steps so far (evaluation excluded)."""
        return self._train_tokens / max(self._train_s, 1e-9)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        for f in (self._metrics, self._evals):
            if f is not None:
                f.close()
        self._metrics = self._evals = None
