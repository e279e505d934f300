"""Downstream tasks on a finished run's final checkpoint, cached per run and checkpoint (the ``evaluate`` stage).

The model is built once per run at TP = PP = 1 (local spec, fp32; on the GPU when there is one) with the run's
``model.preset``, its weights read from the run's latest checkpoint with
:func:`megasynth.train.checkpoint.load_checkpoint` (model only: any TP/PP layout the run was trained with), and
every task not yet cached is scored (:func:`megasynth.evaluation.tasks.evaluate_tasks`).

Cache: ``runs/<run_id>/downstream/iter_NNNNNNN.json`` (:meth:`RunLayout.downstream`)::

    {"checkpoint": "runs/<id>/checkpoints/iter_NNNNNNN", "step": N, "tokens": D,
     "summary_sha256": "...", "tokenizer": "bpe-4096:<sha>", "seq_length": 256,
     "tasks": {"arc_easy": {"limit": 100, "kind": "mc", "primary_metric": "acc",
                            "metrics": {"acc": .., "acc_norm": .., "bpb": ..}, "num_instances": ..,
                            "num_requests": .., "num_tokens": .., "seconds": ..}, ...}}

A task is re-evaluated when its cached ``limit`` differs from the requested one; the whole file is ignored
when the run's ``summary.json`` (a retrained run), the tokenizer or the sequence length changed. Rerunning
the stage therefore evaluates only what is missing. A task the run evaluated in the training loop
(``evaluation.in_loop``) with the same ``limit`` is taken from its final step (``summary.json``'s
``final_downstream``: the same weights, requests and scorer) without building the model (``"source":
"in_loop"``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from megasynth.utils import MegasynthError, read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import EvaluationConfig, RunConfig
    from megasynth.layout import RunLayout, StudyLayout

logger = logging.getLogger("megasynth.evaluation")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def final_step(files: "RunLayout") -> int:
    """The step of a finished run's final checkpoint (``summary.json``'s ``train_iters``).

    Raises:
        MegasynthError: the run is not finished, or its summary lacks ``train_iters``.
    """
    if not files.summary.is_file():
        raise MegasynthError(f"{files.summary}: run not finished (train it first)")
    summary = read_json(files.summary)
    if not isinstance(summary, dict) or "train_iters" not in summary:
        raise MegasynthError(f"{files.summary}: missing key 'train_iters'")
    return int(summary["train_iters"])


def cached_results(files: "RunLayout", tokenizer_id: Optional[str] = None, seq_length: Optional[int] = None) -> dict:
    """The cache record of the run's final checkpoint (``{}`` when missing or stale; see the module docstring).

    ``tokenizer_id`` / ``seq_length``: when given, a record made with others is stale.
    """
    rec = _current_record(files, files.downstream_dir, files.downstream)
    if tokenizer_id is not None and rec.get("tokenizer") != tokenizer_id:
        return {}
    if seq_length is not None and rec.get("seq_length") != seq_length:
        return {}
    return rec


def _current_record(files: "RunLayout", directory: Path, path_of) -> dict:
    """The JSON record ``path_of(final step)`` in ``directory`` when it was made from the run's current training
    (its ``summary_sha256`` is that of ``summary.json``), else ``{}`` (also when ``directory`` does not exist: runs
    from before the cache)."""
    if not directory.is_dir():
        return {}
    path = path_of(final_step(files))
    if not path.is_file():
        return {}
    rec = read_json(path)
    return rec if isinstance(rec, dict) and rec.get("summary_sha256") == _sha(files.summary) else {}


def missing_tasks(files: "RunLayout", evaluation: "EvaluationConfig") -> list[str]:
    """Tasks of ``evaluation`` without a current cached result (same ``limit``) for the run's final checkpoint."""
    return [t for _, t in _todo(cached_results(files).get("tasks", {}), evaluation)]


def _todo(cached: dict, evaluation: "EvaluationConfig") -> list[tuple[int, str]]:
    """``(index, name)`` of the tasks of ``evaluation`` that ``cached`` (a record's ``tasks``) lacks at its ``limit``."""
    return [(i, t) for i, t in enumerate(evaluation.tasks)
            if t not in cached or cached[t].get("limit") != evaluation.limit]


def evaluate_run_checkpoint(run: "RunConfig", layout: "StudyLayout", evaluation: "EvaluationConfig",
                            reuse_in_loop: bool = True) -> dict:
    """Score ``evaluation.tasks`` on the final checkpoint of the finished run ``run`` (cached tasks skipped;
    with ``reuse_in_loop``, tasks of the run's in-loop evaluation at the same ``limit`` taken from its final step).

    Single process (it creates a one-process group when none exists and tears it down after).

    Returns:
        The cache record (module docstring), with every task of ``evaluation``.

    Raises:
        MegasynthError: run not finished, no readable checkpoint, unknown task or missing task files
            (``evaluation.tasks[i]: ...``), under ``torchrun`` with more than one process.
    """
    import torch.distributed as dist

    from megasynth.config import ModelConfig
    from megasynth.data.tokenizer import load_tokenizer
    from megasynth.evaluation.tasks import evaluate_tasks, load_task
    from megasynth.model import builder
    from megasynth.train.checkpoint import latest_checkpoint, load_checkpoint

    files = layout.run(run.run_id)
    step = final_step(files)
    evaluation.validate("evaluation")
    tokenizer = load_tokenizer(run.tokenizer, layout)
    tok_id = f"{tokenizer.name}:{tokenizer.unique_identifiers.get('sha')}"
    seq = run.train.seq_length
    rec = cached_results(files, tok_id, seq)
    cached = rec.get("tasks", {})
    todo = _todo(cached, evaluation)
    rec = {"checkpoint": layout.relative(files.checkpoints), "step": step, "tokens": step * run.train.tokens_per_step,
           "summary_sha256": _sha(files.summary), "tokenizer": tok_id, "seq_length": seq, "tasks": dict(cached)}
    in_loop = read_json(files.summary).get("final_downstream") or {}
    if reuse_in_loop and run.evaluation.in_loop and run.evaluation.limit == evaluation.limit:
        for _, t in [x for x in todo if x[1] in run.evaluation.tasks and x[1] in in_loop]:
            rec["tasks"][t] = {"limit": evaluation.limit, "metrics": dict(in_loop[t]), "source": "in_loop"}
            todo.remove(next(x for x in todo if x[1] == t))
            logger.info("%s: %s from the in-loop evaluation at step %d", run.run_id, t, step)
    if not todo:
        if rec["tasks"] != cached:
            write_json(files.downstream(step), rec)
        logger.info("%s: downstream tasks cached (%s)", run.run_id, files.downstream(step))
        return rec
    ckpt = latest_checkpoint(files.checkpoints)
    if dist.is_initialized() and dist.get_world_size() > 1:
        raise MegasynthError("evaluate: run the evaluate stage in one process (not under torchrun)")
    # The tasks first: an unknown task or missing task files fail before any model is built.
    tasks = [load_task(name, tokenizer, seq, evaluation.limit, f"evaluation.tasks[{i}]") for i, name in todo]
    created = not dist.is_initialized()
    builder.init_parallel(1, 1, seed=run.train.seed)
    try:
        t0 = time.monotonic()
        model = builder.build_model(ModelConfig(preset=run.model.preset), tokenizer.vocab_size, seq)
        common = load_checkpoint(model, ckpt)
        if int(common.get("iteration", -1)) != step:
            raise MegasynthError(f"{ckpt}: iteration {common.get('iteration')} is not the run's last step {step}")
        logger.info("%s: loaded %s (%.1fs); downstream tasks %s", run.run_id, ckpt, time.monotonic() - t0,
                    ", ".join(t for _, t in todo))
        results = evaluate_tasks(model, tasks, seq, max_batch_tokens=evaluation.max_batch_tokens, progress=True)
    finally:
        if created:
            builder.destroy_parallel()
    rec["checkpoint"] = layout.relative(ckpt)
    for r in results:
        rec["tasks"][r.task] = {"limit": evaluation.limit, "kind": r.kind, "primary_metric": r.primary_metric,
                                "metrics": r.metrics, "num_instances": r.num_instances,
                                "num_requests": r.num_requests, "num_tokens": r.num_tokens,
                                "seconds": round(r.seconds, 3)}
    write_json(files.downstream(step), rec)
    return rec


# --------------------------------------------------------------------------------------------------
# Generative math (MATH-500, GSM8K) of the final checkpoint
# --------------------------------------------------------------------------------------------------
def _math_settings(evaluation: "EvaluationConfig") -> dict:
    """What a cached math result depends on besides the weights (a change rescores the task)."""
    return {"limit": evaluation.math_limit, "max_new_tokens": evaluation.math_max_new_tokens,
            "max_model_len": evaluation.math_max_model_len, "dtype": evaluation.math_dtype}


def cached_math(files: "RunLayout") -> dict:
    """The math cache record of the run's final checkpoint (``{}`` when missing or made from an earlier training:
    ``summary_sha256``).

    ``runs/<run_id>/math/iter_NNNNNNN.json``: ``{checkpoint, step, tokens, summary_sha256, hf_model, tasks: {task:
    {settings: {limit, max_new_tokens, max_model_len, dtype}, rows: [{task, metric, value, level, n}], samples,
    seconds}}}``.
    """
    return _current_record(files, files.math_dir, files.math)


def missing_math_tasks(files: "RunLayout", evaluation: "EvaluationConfig") -> list[str]:
    """Tasks of ``evaluation.math_tasks`` without a current cached result (same settings) for the final checkpoint."""
    return _math_todo(cached_math(files).get("tasks", {}), evaluation)


def _math_todo(cached: dict, evaluation: "EvaluationConfig") -> list[str]:
    """The tasks of ``evaluation.math_tasks`` that ``cached`` (a record's ``tasks``) lacks at the current settings."""
    want = _math_settings(evaluation)
    return [t for t in evaluation.math_tasks if t not in cached or cached[t].get("settings") != want]


def hf_tokenizer_dir(run: "RunConfig", layout: "StudyLayout") -> Path:
    """The HF tokenizer directory an exported model of ``run`` carries: the study's BPE, ``tokenizer.path``, or for
    ``tokenizer.type: llama3`` the tokenizer files of an imported ``base.hf_model`` (``base/megatron/hf_assets/``:
    the same Llama-3 vocabulary as HF files).

    Raises:
        MegasynthError: ``tokenizer.type: llama3`` (tiktoken) without an imported base model's tokenizer files.
    """
    if run.tokenizer.type == "bpe":
        return layout.tokenizer_dir
    if run.tokenizer.type == "huggingface" and run.tokenizer.path:
        return Path(run.tokenizer.path)
    assets = layout.base_import / "hf_assets"
    if run.tokenizer.type == "llama3" and (assets / "tokenizer.json").is_file():
        return assets
    raise MegasynthError("tokenizer.type: the math evaluation exports each model with an HF tokenizer for vLLM; "
                         "use tokenizer.type bpe or huggingface (or llama3 with a base.hf_model)")


def export_final_hf(run: "RunConfig", layout: "StudyLayout", dtype: str = "float32") -> Path:
    """The finished run's final checkpoint as a HF Llama directory ``runs/<run_id>/hf/iter_NNNNNNN/``
    (:func:`megasynth.model.convert.export_hf` with the study's tokenizer), exported once: the marker
    ``iter_NNNNNNN.done`` holds the run's ``summary.json`` SHA-256 and the dtype; a retrained run or another dtype
    re-exports.

    Raises:
        MegasynthError: run not finished, no readable checkpoint, a tokenizer vLLM cannot load (as
            :func:`hf_tokenizer_dir`).
    """
    from megasynth.model.convert import export_hf
    from megasynth.train.checkpoint import latest_checkpoint
    from megasynth.utils import is_done, mark_done, marker_path

    files = layout.run(run.run_id)
    step = final_step(files)
    out = files.hf_export(step)
    want = {"summary_sha256": _sha(files.summary), "dtype": dtype}
    if out.is_dir() and is_done(out):
        old = read_json(marker_path(out))
        if all(old.get(k) == v for k, v in want.items()):
            return out
    tokenizer = hf_tokenizer_dir(run, layout)
    ckpt = latest_checkpoint(files.checkpoints)
    export_hf(ckpt, out, tokenizer=tokenizer, preset=run.model.preset, dtype=dtype, overwrite=True)
    mark_done(out, {**want, "checkpoint": layout.relative(ckpt), "run_id": run.run_id})
    return out


def evaluate_run_math(run: "RunConfig", layout: "StudyLayout", evaluation: "EvaluationConfig") -> dict:
    """Generative error rates (``evaluation.math_tasks``) of the finished run's final checkpoint: exported to HF
    (:func:`export_final_hf`), sampled greedily with vLLM and checked with math-verify
    (:func:`megasynth.evaluation.math.evaluate_math`). Cached per run and checkpoint in
    ``runs/<run_id>/math/iter_NNNNNNN.json`` (:func:`cached_math`): tasks with a current result of the same
    settings are skipped, and nothing is exported or started when all are.

    Returns:
        The cache record, with every task of ``evaluation.math_tasks``.

    Raises:
        MegasynthError: run not finished, no readable checkpoint, unknown task (``evaluation.math_tasks[i]``),
            a preset whose head size vLLM cannot serve (``model.preset``), vLLM / math-verify / olmo_eval missing.
    """
    from megasynth.evaluation.math import evaluate_math
    from megasynth.model.presets import check_vllm_head_dim

    files = layout.run(run.run_id)
    step = final_step(files)
    evaluation.validate("evaluation")
    rec = cached_math(files)
    todo = _math_todo(rec.get("tasks", {}), evaluation)
    rec = {"checkpoint": layout.relative(files.checkpoints), "step": step, "tokens": step * run.train.tokens_per_step,
           "summary_sha256": _sha(files.summary), "hf_model": rec.get("hf_model"), "tasks": dict(rec.get("tasks", {}))}
    if not todo:
        logger.info("%s: math tasks cached (%s)", run.run_id, files.math(step))
        return rec
    check_vllm_head_dim(run.model.preset, "model.preset", "evaluation.math_tasks samples it with vLLM")
    hf = export_final_hf(run, layout, evaluation.math_dtype)
    rec["hf_model"] = layout.relative(hf)
    from megasynth.generate.backends import make_engine

    positions = read_json(hf / "config.json").get("max_position_embeddings") or evaluation.math_max_model_len
    engine = make_engine(hf, dtype=evaluation.math_dtype, max_model_len=min(evaluation.math_max_model_len, positions),
                         max_num_seqs=16, seed=run.train.seed)
    try:
        for task in todo:
            t0 = time.monotonic()
            samples = files.math_samples(step, task)
            rows = evaluate_math(hf, [task], limit=evaluation.math_limit,
                                 max_new_tokens=evaluation.math_max_new_tokens, engine=engine,
                                 samples_path=samples, seed=run.train.seed)
            rec["tasks"][task] = {"settings": _math_settings(evaluation), "rows": rows,
                                  "samples": layout.relative(samples), "seconds": round(time.monotonic() - t0, 3)}
            write_json(files.math(step), rec)  # each finished task survives an interruption of the next
    finally:
        engine.shutdown()
    return rec
