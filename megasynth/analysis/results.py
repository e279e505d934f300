"""The evaluate stage's table: every finished run's evaluations → one ``results.csv``.

``results.csv`` has one row per (run, budget, eval set or task, metric) with the columns of :data:`COLUMNS`
(``tokens`` = consumed training tokens D at that evaluation; ``seed`` and ``schedule`` of the run;
``schedule_complete`` true for the evaluation at the run's last step). ``metric`` says what ``loss`` holds:

- ``loss``: held-out cross-entropy in nats per token (the column's original meaning; tables written before
  the ``metric`` column hold only these rows and are read as such);
- ``bpb``: bits per UTF-8 byte, of a held-out set (``Σ nats / (ln 2 · bytes)``, tokenizer-independent) or of a
  downstream task's gold answers;
- ``acc``, ``acc_norm``: a downstream task's accuracy (OLMES raw and per-character normalised);
- ``math_error``, ``gsm8k_error``: generative error rate (1 − accuracy, a fraction) on MATH-500
  (``eval_set`` ``minerva_math_500``, and ``minerva_math_500_level<k>`` per difficulty level 1–5) or GSM8K
  (``gsm8k``), from the ``evaluate`` stage's math cache (``runs/<run_id>/math/iter_NNNNNNN.json``).

For task rows ``eval_set`` holds the task name (``arc_easy``, ``gsm8k_bpb``; task names and held-out set
names never coincide: the config refuses it). A held-out set always has ``loss`` rows and a task never does,
which is how readers tell them apart (:func:`task_names`). Rows come from ``runs/<run_id>/evals.jsonl``
(held-out sets at every evaluation; in-loop tasks) and from the ``evaluate`` stage's downstream cache of the
final checkpoint (``runs/<run_id>/downstream/iter_NNNNNNN.json``), which replaces an in-loop row of the same
key. Rows are sorted by (run, tokens, eval_set, metric). Scaling-law fits use the ``loss`` rows
(:func:`metric_rows`).

Rerun policy: the completion marker ``results.csv.done`` stores a SHA-256 of the inputs (the
``summary.json``, ``evals.jsonl`` and downstream cache of every finished run); :func:`results_up_to_date`
compares it, and the study runner skips the stage when it matches. A run that finished since, or changed
files, regenerates the table (it is cheap).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megasynth.config import RunConfig
from megasynth.layout import RunLayout, StudyLayout
from megasynth.utils import MegasynthError, atomic_path, is_done, mark_done, marker_path, read_json, read_jsonl_numbered

logger = logging.getLogger("megasynth.analysis")

COLUMNS = ("run", "mixture", "preset", "n_params", "n_params_non_embedding", "tokens", "synthetic_ratio",
           "eval_set", "loss", "synthetic_sources", "seed", "schedule", "schedule_complete", "generator", "metric")
REQUIRED_COLUMNS = COLUMNS[:9]  # tables written before the later columns existed still parse
METRICS = ("loss", "bpb", "acc", "acc_norm", "math_error", "gsm8k_error")
"""Values of the ``metric`` column."""
SUMMARY_KEYS = ("mixture", "preset", "n_params", "n_params_non_embedding", "synthetic_ratio")
EVAL_KEYS = ("step", "consumed_tokens", "eval_set")


@dataclass(frozen=True)
class ResultRow:
    """One row of ``results.csv``: the value (``loss``) of ``metric`` of ``run`` on ``eval_set`` (a held-out set
    or a task) after ``tokens`` consumed training tokens."""

    run: str
    mixture: str
    preset: str
    n_params: int
    n_params_non_embedding: int
    tokens: int
    synthetic_ratio: float
    eval_set: str
    loss: float
    synthetic_sources: str = ""
    """Synthetic sources of the mixture with a non-zero share, ``+``-joined (``""`` for all-natural)."""
    seed: Optional[int] = None
    """``train.seed`` of the run (initial weights and data order); None in tables written before the column."""
    schedule: str = ""
    """The run's LR schedule: ``cosine``, ``linear``, ``constant`` or ``wsd`` (``train.optimizer.lr_decay_style``)."""
    schedule_complete: Optional[bool] = None
    """True for the evaluation at the end of the run's schedule (its last step, after the LR decay), False for
    evaluations before it, whose LR had not decayed; None in tables written before the column. Fits use the
    complete rows (:func:`complete_rows`)."""
    generator: str = ""
    """Generator(s) of those sources (their manifests' ``generator.name``), ``+``-joined in order (``""``: none)."""

    metric: str = "loss"
    """What ``loss`` holds: ``loss`` (nats/token), ``bpb``, ``acc`` or ``acc_norm`` (module docstring)."""

    @property
    def sort_key(self) -> tuple:
        """The row's key: (run, tokens, eval set, metric); one row per key (``megasynth results merge`` dedups
        by it)."""
        return (self.run, self.tokens, self.eval_set, self.metric)


def metric_rows(rows: list[ResultRow], metric: str = "loss") -> list[ResultRow]:
    """The rows of one ``metric`` (``loss`` rows are what the scaling-law fits use)."""
    return [r for r in rows if r.metric == metric]


def task_names(rows: list[ResultRow]) -> list[str]:
    """Downstream tasks of a table: ``eval_set`` values with no ``loss`` row, in first-appearance order."""
    heldout = {r.eval_set for r in rows if r.metric == "loss"}
    return list(dict.fromkeys(r.eval_set for r in rows if r.eval_set not in heldout))


def _int_field(value, where: str) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value)):
        raise MegasynthError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _float_field(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MegasynthError(f"{where}: expected a number, got {value!r}")
    return float(value)


def collect_run(run: str, run_dir: Path, synthetic_sources: str = "", generator: str = "", *,
                seed: Optional[int] = None, schedule: str = "", train_iters: Optional[int] = None) -> list[ResultRow]:
    """Rows of one finished run from ``run_dir/{summary.json, evals.jsonl}`` and its downstream cache.

    A repeated (step, eval set, metric) — e.g. re-evaluated after a resume — keeps the last occurrence; a task
    of the downstream cache of the final checkpoint replaces the in-loop row of the same key. The evaluation at
    step ``train_iters`` (default: the summary's) is ``schedule_complete``, as are the downstream cache's rows (the
    final checkpoint); ``seed`` and ``schedule`` default to the summary's.

    Raises:
        MegasynthError: missing/malformed ``evals.jsonl`` or ``summary.json`` field (``file:line``).
    """
    from megasynth.train.record import eval_row_value

    files = RunLayout.at(run_dir)
    summary_path, evals_path = files.summary, files.evals
    summary = read_json(summary_path)
    if not isinstance(summary, dict):
        raise MegasynthError(f"{summary_path}: expected a JSON object")
    for key in SUMMARY_KEYS:
        if key not in summary:
            raise MegasynthError(f"{summary_path}: missing key {key!r}")
    base = dict(
        run=run, mixture=str(summary["mixture"]), preset=str(summary["preset"]),
        n_params=_int_field(summary["n_params"], f"{summary_path}: n_params"),
        n_params_non_embedding=_int_field(summary["n_params_non_embedding"], f"{summary_path}: n_params_non_embedding"),
        synthetic_ratio=_float_field(summary["synthetic_ratio"], f"{summary_path}: synthetic_ratio"),
        synthetic_sources=synthetic_sources, seed=seed if seed is not None else summary.get("seed"),
        schedule=schedule or str(summary.get("schedule", "")), generator=generator)
    last = train_iters if train_iters is not None else summary.get("train_iters")
    by_key: dict[tuple, ResultRow] = {}
    for lineno, rec in read_jsonl_numbered(evals_path, EVAL_KEYS):
        where = f"{evals_path}:{lineno}"
        tokens = _int_field(rec["consumed_tokens"], f"{where}: consumed_tokens")
        if tokens < 0:
            raise MegasynthError(f"{where}: consumed_tokens must be >= 0, got {tokens}")
        try:
            metric, value = eval_row_value(rec)
        except KeyError as e:
            raise MegasynthError(f"{where}: missing key {e.args[0]!r}") from None
        if metric not in METRICS:
            raise MegasynthError(f"{where}: metric: unknown {metric!r} (known: {', '.join(METRICS)})")
        value = _float_field(value, f"{where}: {'value' if 'metric' in rec else 'loss'}")
        if not math.isfinite(value):
            logger.warning("%s: non-finite %s %r kept in results.csv (the report skips it)", where, metric, value)
        step = _int_field(rec["step"], f"{where}: step")
        by_key[(tokens, str(rec["eval_set"]), metric)] = ResultRow(
            tokens=tokens, eval_set=str(rec["eval_set"]), loss=value, metric=metric,
            schedule_complete=None if last is None else step == last, **base)
    if not by_key:
        logger.warning("%s: no evaluations recorded", evals_path)
    for task, tokens, metric, value in _downstream_rows(files) + _math_rows(files):
        by_key[(tokens, task, metric)] = ResultRow(tokens=tokens, eval_set=task, loss=value, metric=metric,
                                                   schedule_complete=None if last is None else True, **base)
    return list(by_key.values())


def _downstream_rows(files: RunLayout) -> list[tuple[str, int, str, float]]:
    """``(task, tokens, metric, value)`` of the current downstream cache of the run's final checkpoint."""
    from megasynth.evaluation.checkpoints import cached_results

    rec = cached_results(files)
    out = []
    for task, res in rec.get("tasks", {}).items():
        for metric, value in res.get("metrics", {}).items():
            out.append((task, int(rec["tokens"]), metric, float(value)))
    return out


def math_eval_set(task: str, level: Optional[int]) -> str:
    """The ``eval_set`` of a math error row: the task, or ``<task>_level<k>`` for a MATH difficulty level."""
    return task if level is None else f"{task}_level{level}"


def _math_rows(files: RunLayout) -> list[tuple[str, int, str, float]]:
    """``(eval_set, tokens, metric, value)`` of the current math cache of the run's final checkpoint."""
    from megasynth.evaluation.checkpoints import cached_math

    rec = cached_math(files)
    out = []
    for res in rec.get("tasks", {}).values():
        for row in res.get("rows", []):
            if row.get("value") is not None:
                out.append((math_eval_set(row["task"], row.get("level")), int(rec["tokens"]), row["metric"],
                            float(row["value"])))
    return out


def _inputs_hash(paths: list[Path], extra: str = "") -> str:
    """SHA-256 over the table's columns, ``extra`` (config the rows derive from) and each file's bytes."""
    h = hashlib.sha256(",".join(COLUMNS).encode() + b"\0" + extra.encode() + b"\0")
    for p in paths:
        h.update(str(p).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest() if p.exists() else b"<missing>")
    return h.hexdigest()


def write_results(path: Path, rows: list[ResultRow]) -> None:
    """Write ``rows`` (sorted by run, tokens, eval set) to ``path`` as CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in sorted(rows, key=lambda r: r.sort_key):
            w.writerow([r.run, r.mixture, r.preset, r.n_params, r.n_params_non_embedding, r.tokens,
                        repr(r.synthetic_ratio), r.eval_set, repr(r.loss), r.synthetic_sources,
                        "" if r.seed is None else r.seed, r.schedule,
                        "" if r.schedule_complete is None else str(r.schedule_complete).lower(), r.generator,
                        r.metric])


def read_results(path: Path) -> list[ResultRow]:
    """Parse ``results.csv``.

    Raises:
        MegasynthError: missing file, missing column, or a malformed value (``file:line: column``).
    """
    if not path.exists():
        raise MegasynthError(f"{path}: file not found (run the evaluate stage first)")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MegasynthError(f"{path}:1: missing column(s) {', '.join(missing)}")
        for rec in reader:
            where = f"{path}:{reader.line_num}"
            try:
                rows.append(ResultRow(
                    run=rec["run"], mixture=rec["mixture"], preset=rec["preset"], n_params=int(rec["n_params"]),
                    n_params_non_embedding=int(rec["n_params_non_embedding"]), tokens=int(rec["tokens"]),
                    synthetic_ratio=float(rec["synthetic_ratio"]), eval_set=rec["eval_set"], loss=float(rec["loss"]),
                    synthetic_sources=rec.get("synthetic_sources") or "",
                    seed=int(rec["seed"]) if rec.get("seed") not in (None, "") else None,
                    schedule=rec.get("schedule") or "", schedule_complete=_bool_field(rec.get("schedule_complete")),
                    generator=rec.get("generator") or "", metric=rec.get("metric") or "loss"))
            except (TypeError, ValueError) as e:
                raise MegasynthError(f"{where}: malformed row ({e})") from None
    return rows


def _bool_field(value: Optional[str]) -> Optional[bool]:
    if value in (None, ""):
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"schedule_complete: expected true/false, got {value!r}")


def complete_rows(rows: list[ResultRow]) -> tuple[list[ResultRow], str]:
    """The rows scaling laws are fitted on: those at the end of a schedule (``schedule_complete``), and a note.

    Rows of a table without the column (all None) are all kept, with a note saying so. A budget point of a
    cosine run evaluated before its end had not decayed its LR, so its loss is above that of a run of that
    budget (Hoffmann et al. 2022 §3; Hägele et al. 2024).
    """
    if all(r.schedule_complete is None for r in rows):
        return list(rows), "the table has no schedule_complete column: every evaluation is used"
    kept = [r for r in rows if r.schedule_complete]
    return kept, (f"{len(kept)} of {len(rows)} rows are at the end of their run's schedule (schedule_complete); "
                  "the others, evaluated before the LR decayed, are not fitted")


def merge_results(paths: list[Path], out: Path) -> dict:
    """Union of results tables written to ``out``, one row per key (:attr:`ResultRow.sort_key`): identical
    duplicates are dropped; returns ``{"inputs", "rows_in", "rows_out", "duplicates"}``.

    Raises:
        MegasynthError: a missing or malformed table, or two rows of one key that differ (naming the run, the
            key, both files and the first differing column); nothing is written then.
    """
    import dataclasses

    seen: dict[tuple, tuple[ResultRow, Path]] = {}
    rows_in = dup = 0
    for path in paths:
        for row in read_results(Path(path)):
            rows_in += 1
            key = row.sort_key
            if key in seen:
                other, where = seen[key]
                diff = [f.name for f in dataclasses.fields(row)
                        if _value(getattr(row, f.name)) != _value(getattr(other, f.name))]
                if not diff:
                    dup += 1
                    continue
                col = diff[0]
                raise MegasynthError(f"{path}: run {row.run!r} at tokens={row.tokens}, eval_set={row.eval_set!r} "
                                     f"conflicts with {where}: {col} {getattr(other, col)!r} there, "
                                     f"{getattr(row, col)!r} here")
            seen[key] = (row, Path(path))
    write_results(Path(out), [r for r, _ in seen.values()])
    return {"inputs": [str(p) for p in paths], "rows_in": rows_in, "rows_out": len(seen), "duplicates": dup}


def _value(x):
    """``x`` with NaN made comparable (a diverged run's NaN loss equals itself in a duplicate)."""
    return "nan" if isinstance(x, float) and math.isnan(x) else x


def run_generator(run: RunConfig, layout: StudyLayout) -> str:
    """The generator(s) of ``run``'s synthetic sources, ``+``-joined in order of first use (``""``: none).

    Read from each source's ``synthetic/<source>/manifest.json`` (``generator.name``); a source without a manifest
    falls back to the part of its name after ``@`` (``hq@llama-8b`` -> ``llama-8b``), else nothing.
    """
    names: list[str] = []
    from megasynth.config.data import synthllm_level

    for src in run.synthetic_sources:
        path = layout.synthetic_manifest("synthllm" if synthllm_level(src) else src)
        name = None
        if path.exists():
            try:
                gen = read_json(path).get("generator")
                name = gen.get("name") if isinstance(gen, dict) else gen
            except MegasynthError:
                name = None
        if not name and "@" in src:
            name = src.split("@", 1)[1]
        if name and name not in names:
            names.append(str(name))
    return "+".join(names)


def _finished(runs: list[RunConfig], layout: StudyLayout) -> tuple[list[RunConfig], list[RunConfig], str]:
    """(finished runs, unfinished runs, SHA-256 of the inputs of the table)."""
    finished = [r for r in runs if layout.run(r.run_id).summary.exists()]
    unfinished = [r for r in runs if r not in finished]
    inputs = [p for r in finished for p in (layout.run(r.run_id).summary, layout.run(r.run_id).evals,
                                             *sorted(layout.run(r.run_id).downstream_dir.glob("iter_*.json")),
                                             *sorted(layout.run(r.run_id).math_dir.glob("iter_*.json")))]
    digest = _inputs_hash(inputs, json.dumps({r.run_id: ["+".join(r.synthetic_sources), r.train.seed, r.schedule,
                                                         r.train.train_iters, run_generator(r, layout)]
                                              for r in finished}, sort_keys=True))
    return finished, unfinished, digest


def results_up_to_date(runs: list[RunConfig], layout: StudyLayout) -> bool:
    """Whether ``results.csv`` and its marker hold the current inputs of ``runs`` (the stage's completion)."""
    if not (layout.results.exists() and is_done(layout.results)):
        return False
    return read_json(marker_path(layout.results)).get("inputs_sha256") == _finished(runs, layout)[2]


def run_evaluate(runs: list[RunConfig], layout: StudyLayout) -> None:
    """Collect the evaluations of every finished run of ``runs`` into ``layout.results`` (``results.csv``).

    Reads ``runs/<run_id>/summary.json`` and ``evals.jsonl`` of each planned run
    (:func:`megasynth.study.runs.plan_runs`); a run without ``summary.json`` (unfinished) is skipped with
    a warning. Writes the CSV atomically and the marker ``results.csv.done`` with the inputs' SHA-256.

    Raises:
        MegasynthError: a malformed summary/evals file (names ``file:line`` and the field).
    """
    finished, unfinished, digest = _finished(runs, layout)
    for run in unfinished:
        logger.warning("run %s is not finished (no %s); skipped", run.run_id, layout.run(run.run_id).summary)
    rows: list[ResultRow] = []
    for run in finished:
        rows.extend(collect_run(run.run_id, layout.run_dir(run.run_id), "+".join(run.synthetic_sources),
                                run_generator(run, layout), seed=run.train.seed, schedule=run.schedule,
                                train_iters=run.train.train_iters))
    write_results(layout.results, rows)
    mark_done(layout.results, {"inputs_sha256": digest, "runs": [r.run_id for r in finished],
                               "skipped_unfinished": [r.run_id for r in unfinished], "rows": len(rows)})
    logger.info("wrote %s: %d rows from %d finished runs (%d unfinished skipped)", layout.results, len(rows),
                len(finished), len(unfinished))
