"""Evaluation in the training loop, as a callback (OLMo-core's ``train/callbacks``: the loop calls hooks, the
hooks own what they do).

:class:`Callback` is the hook interface :func:`megasynth.train.run.train_one` drives: ``post_step(step)`` after
every optimizer step, ``summary()`` for ``summary.json``. :class:`EvaluatorCallback` evaluates every
``train.eval_interval`` steps and at the last step:

- every held-out set (``run.eval_sets``), in nats per token (``loss``) and bits per byte (``bpb``):

  * ``train.eval_iters: N`` — the same ``N × micro_batch_size`` samples of ``seq_length`` tokens each time
    (megatron-core ``GPTDataset``; documents concatenated with ``eod``). ``loss = Σ nats / tokens`` and
    ``bpb = Σ nats / (ln 2 · Σ bytes)`` over the predicted (label) tokens of the samples, ``bytes`` = the
    UTF-8 bytes each predicted token stands for (:meth:`MegasynthTokenizer.token_bytes`; 0 for ``eod``,
    whose loss still counts), i.e. exactly the bytes of the text the sampled tokens spell;
  * ``train.eval_iters: all`` — every document once (the first ``evaluation.max_documents``):
    :func:`megasynth.evaluation.heldout.evaluate_documents`, ``bpb = Σ nats / (ln 2 · Σ UTF-8 bytes of the
    document texts)`` (Gao et al. 2020, "The Pile", §4), ``loss = Σ nats / Σ tokens`` (``eod`` included);

- the downstream tasks of ``evaluation.tasks`` when ``evaluation.in_loop`` (``acc``, ``acc_norm``, ``bpb``,
  :func:`megasynth.evaluation.tasks.evaluate_tasks`; loaded once, before the first step);

and at the last step, with ``evaluation.token_losses``, scores every document of each held-out set (already
done with ``eval_iters: all``) and saves each token's id and loss to ``runs/<run_id>/token_losses/<eval_set>.npy``
(:func:`megasynth.evaluation.heldout.save_token_losses`), for the report's rare-unigram analysis.

Rows go to ``evals.jsonl`` and TensorBoard through :class:`~megasynth.train.metrics.MetricsLogger` (rank 0).
The document and task scorers support TP (without sequence parallelism) and DP, not PP: the config refuses
``eval_iters: all`` and in-loop tasks with PP > 1; the token-loss pass is skipped there with a warning.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from megasynth.utils import MegasynthError

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import RunConfig
    from megasynth.data.tokenizer import MegasynthTokenizer
    from megasynth.layout import StudyLayout
    from megasynth.train.metrics import MetricsLogger

logger = logging.getLogger("megasynth.train")

LN2 = math.log(2.0)


class Callback:
    """A hook of the training loop (after OLMo-core's ``Callback``); every method is optional."""

    def post_step(self, step: int) -> None:
        """After optimizer step ``step`` (counted from 1) and its metrics row."""

    def summary(self) -> dict[str, Any]:
        """Fields this callback adds to ``summary.json``."""
        return {}


class EvaluatorCallback(Callback):
    """Held-out and downstream evaluation of one run (see the module docstring).

    Args:
        run: the run (``train``, ``eval_sets``, ``evaluation``).
        layout: the study's paths (eval-set prefixes, ``token_losses/``).
        tokenizer: the study's tokenizer (``eod``, :meth:`token_bytes`, task encoding).
        state: the run's model and data (:class:`megasynth.train.run._Run`: ``model``, ``eval_ds``,
            ``evaluate_sampled``, ``eval_mode``).
        metrics: the run's :class:`MetricsLogger`.

    Raises:
        MegasynthError: an eval set with no tokens, an unknown task or missing task files
            (``evaluation.tasks[i]: ...``), raised before the first step.
    """

    def __init__(self, run: "RunConfig", layout: "StudyLayout", tokenizer: "MegasynthTokenizer", state,
                 metrics: "MetricsLogger", rank0: bool):
        t, ev = run.train, run.evaluation
        self.run, self.layout, self.tokenizer, self.state, self.metrics, self.rank0 = (
            run, layout, tokenizer, state, metrics, rank0)
        self.files = layout.run(run.run_id)
        p = t.parallel
        self.scorer_ok = p.pipeline_model_parallel_size == 1 and not p.sequence_parallel
        self.token_bytes = torch.as_tensor(_padded(tokenizer.token_bytes(), state.padded_vocab))
        self.tasks = []
        if ev.in_loop and ev.tasks:
            from megasynth.evaluation.tasks import load_tasks

            self.tasks = load_tasks(ev, tokenizer, t.seq_length, "evaluation")
            logger.info("%s: in-loop downstream tasks %s (%d requests)", run.run_id,
                        ", ".join(f"{x.name} ({x.num_instances} instances)" for x in self.tasks),
                        sum(len(x.requests) for x in self.tasks))
        self.final_documents: dict[str, dict] = {}
        self.document_bytes: dict[str, Any] = {}
        """Per eval set, the UTF-8 bytes of each scored document (detokenized once, reused by every evaluation)."""
        self.seconds = {"heldout": 0.0, "token_losses": 0.0, "downstream": 0.0}
        """Wall seconds of this invocation's evaluations: held-out sets (sampled or documents), the final
        document pass for per-token losses when the evaluations are sampled, downstream tasks."""

    # ------------------------------------------------------------------ hooks
    def post_step(self, step: int) -> None:
        t = self.run.train
        if step % t.eval_interval == 0 or step == t.train_iters:
            self.evaluate(step, final=step == t.train_iters)

    def summary(self) -> dict[str, Any]:
        last = self.metrics.last_evals
        out: dict[str, Any] = {"final_eval_bpb": {e: last[e]["bpb"] for e in self.run.eval_sets
                                                  if "bpb" in last.get(e, {})}}
        if self.tasks:
            out["final_downstream"] = {x.name: dict(last.get(x.name, {})) for x in self.tasks}
        if self.final_documents:
            out["token_losses"] = self.final_documents
        out["eval_seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int, final: bool = False) -> None:
        """Evaluate every held-out set and (in-loop) every task after ``step`` steps; log the rows."""
        t = self.run.train
        consumed = step * t.tokens_per_step
        want_tokens = final and self.run.evaluation.token_losses
        if want_tokens and not self.scorer_ok and not t.eval_documents:
            logger.warning("%s: per-token losses not saved: the document scorer needs pipeline_model_parallel_size "
                           "1 and no sequence_parallel", self.run.run_id)
            want_tokens = False
        with self.state.eval_mode():
            for name in self.run.eval_sets:
                t0 = time.monotonic()
                res = None
                if t.eval_documents:
                    res = self._documents(name)
                    values = {"loss": res.nats_per_token, "bpb": res.bits_per_byte}
                else:
                    nats, tokens, nbytes = self.state.evaluate_sampled(self.state.eval_ds[name], self.token_bytes)
                    values = {"loss": nats / max(tokens, 1), "bpb": nats / (LN2 * nbytes) if nbytes else float("nan")}
                self.seconds["heldout"] += time.monotonic() - t0
                self.metrics.log_eval(step, consumed, name, values)
                if want_tokens:
                    t0 = time.monotonic()
                    if res is None:  # sampled evaluations: score the documents once, at the last step
                        res = self._documents(name)
                    self._save_token_losses(name, res)
                    self.seconds["token_losses"] += time.monotonic() - t0
            for task in self.tasks:
                from megasynth.evaluation.tasks import evaluate_task

                t0 = time.monotonic()
                r = evaluate_task(self._model, task, t.seq_length,
                                  max_batch_tokens=self.run.evaluation.max_batch_tokens)
                self.seconds["downstream"] += time.monotonic() - t0
                self.metrics.log_eval(step, consumed, task.name, r.metrics, group="downstream")

    @property
    def _model(self) -> torch.nn.Module:
        return self.state.model[0]

    def _documents(self, name: str):
        from megasynth.evaluation.heldout import document_text_bytes, evaluate_documents, read_documents

        prefix, max_documents = self.layout.tokenized_prefix(name), self.run.evaluation.max_documents
        if name not in self.document_bytes:
            self.document_bytes[name] = document_text_bytes(read_documents(prefix, max_documents)[1], self.tokenizer)
        return evaluate_documents(self._model, prefix, self.tokenizer, self.run.train.seq_length,
                                  max_documents=max_documents, document_bytes=self.document_bytes[name],
                                  max_batch_tokens=self.run.evaluation.max_batch_tokens,
                                  progress=f"{self.run.run_id}: documents of {name}")

    def _save_token_losses(self, name: str, res) -> None:
        from megasynth.evaluation.heldout import save_token_losses

        path = self.files.token_losses(name)
        if self.rank0:
            save_token_losses(path, res)
        self.final_documents[name] = {"documents": int(res.documents.size), "tokens": res.num_tokens,
                                      "bytes": res.num_bytes, "nats_per_token": res.nats_per_token,
                                      "bits_per_byte": res.bits_per_byte,
                                      "path": self.layout.relative(path)}
        logger.info("%s: per-token losses of %s (%d documents, %d tokens) -> %s", self.run.run_id, name,
                    res.documents.size, res.num_tokens, path)


def _padded(token_bytes, size: int):
    """``token_bytes`` extended with zeros to the model's padded vocabulary (ids beyond the tokenizer's)."""
    import numpy as np

    out = np.zeros(max(size, len(token_bytes)), dtype=np.int64)
    out[:len(token_bytes)] = token_bytes
    return out


def check_eval_sets(run: "RunConfig", layout: "StudyLayout") -> None:
    """Raise naming the eval set when its tokenized data is missing or holds no tokens.

    Raises:
        MegasynthError: ``eval_sets[1] ('wiki'): eval set has no tokens (tokenized/wiki_text_document.bin is empty)``.
    """
    for i, name in enumerate(run.eval_sets):
        prefix = layout.tokenized_prefix(name)
        binf = prefix.with_name(prefix.name + ".bin")
        if not binf.is_file() or not prefix.with_name(prefix.name + ".idx").is_file():
            raise MegasynthError(f"eval_sets[{i}] ({name!r}): indexed dataset not found at {prefix} "
                                 "(run the preprocess stage)")
        if binf.stat().st_size == 0:
            raise MegasynthError(f"eval_sets[{i}] ({name!r}): eval set has no tokens ({layout.relative(binf)} is empty)")
