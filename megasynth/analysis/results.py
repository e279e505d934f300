"""The evaluate stage: every finished run's held-out losses → one ``results.csv``.

``results.csv`` has one row per (run, budget, eval set) with the columns of :data:`COLUMNS`
(``tokens`` = consumed training tokens D at that evaluation; ``loss`` in nats per token). Rows are
sorted by (run, tokens, eval_set).

Rerun policy: the completion marker ``results.csv.done`` stores a SHA-256 of the inputs (the
``summary.json`` and ``evals.jsonl`` of every finished run). A rerun with the same inputs skips; a run
that finished since, or changed files, regenerates the table (it is cheap).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from megasynth.config import StudyConfig
from megasynth.study.layout import StudyLayout
from megasynth.utils import MegasynthError, atomic_path, is_done, mark_done, marker_path, read_json, read_jsonl_numbered

logger = logging.getLogger("megasynth.analysis")

COLUMNS = ("run", "mixture", "preset", "n_params", "n_params_non_embedding", "tokens", "synthetic_ratio",
           "eval_set", "loss", "synthetic_sources")
REQUIRED_COLUMNS = COLUMNS[:-1]  # tables written before ``synthetic_sources`` existed still parse
SUMMARY_KEYS = ("mixture", "preset", "n_params", "n_params_non_embedding", "synthetic_ratio")
EVAL_KEYS = ("step", "consumed_tokens", "eval_set", "loss")


@dataclass(frozen=True)
class ResultRow:
    """One row of ``results.csv``: the held-out loss (nats/token) of ``run`` on ``eval_set`` after
    ``tokens`` consumed training tokens."""

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

    @property
    def sort_key(self) -> tuple:
        return (self.run, self.tokens, self.eval_set)


def run_names(cfg: StudyConfig) -> list[str]:
    """Runs of the study, in study-file order: one per mixture (``runs/<mixture>``)."""
    return [m.name for m in cfg.mixtures]


def synthetic_sources_of(cfg: StudyConfig, mixture: str) -> str:
    """``+``-joined synthetic sources with a non-zero share in ``mixture`` (``""`` if all natural)."""
    m = next(m for m in cfg.mixtures if m.name == mixture)
    return "+".join(s for s, r in m.sources.items() if r > 0 and s in cfg.synthetic_sources)


def _int_field(value, where: str) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value)):
        raise MegasynthError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _float_field(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MegasynthError(f"{where}: expected a number, got {value!r}")
    return float(value)


def collect_run(run: str, run_dir: Path, synthetic_sources: str = "") -> list[ResultRow]:
    """Rows of one finished run from ``run_dir/{summary.json, evals.jsonl}``.

    A repeated (step, eval set) — e.g. re-evaluated after a resume — keeps the last occurrence.

    Raises:
        MegasynthError: missing/malformed ``evals.jsonl`` or ``summary.json`` field (``file:line``).
    """
    summary_path, evals_path = run_dir / "summary.json", run_dir / "evals.jsonl"
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
        synthetic_sources=synthetic_sources)
    by_key: dict[tuple[int, str], ResultRow] = {}
    for lineno, rec in read_jsonl_numbered(evals_path, EVAL_KEYS):
        where = f"{evals_path}:{lineno}"
        tokens = _int_field(rec["consumed_tokens"], f"{where}: consumed_tokens")
        if tokens < 0:
            raise MegasynthError(f"{where}: consumed_tokens must be >= 0, got {tokens}")
        loss = _float_field(rec["loss"], f"{where}: loss")
        if not math.isfinite(loss):
            logger.warning("%s: non-finite loss %r kept in results.csv (the report skips it)", where, loss)
        by_key[(_int_field(rec["step"], f"{where}: step"), str(rec["eval_set"]))] = ResultRow(
            tokens=tokens, eval_set=str(rec["eval_set"]), loss=loss, **base)
    if not by_key:
        logger.warning("%s: no evaluations recorded", evals_path)
    return list(by_key.values())


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
                        repr(r.synthetic_ratio), r.eval_set, repr(r.loss), r.synthetic_sources])


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
                    synthetic_sources=rec.get("synthetic_sources") or ""))
            except (TypeError, ValueError) as e:
                raise MegasynthError(f"{where}: malformed row ({e})") from None
    return rows


def run_evaluate(cfg: StudyConfig, layout: StudyLayout) -> None:
    """Collect every finished run's evaluations into ``layout.results`` (``results.csv``).

    Reads ``runs/<mixture>/summary.json`` and ``evals.jsonl`` for each mixture of the study; a run
    without ``summary.json`` (unfinished) is skipped with a warning. Writes the CSV atomically and
    the marker ``results.csv.done`` with the inputs' SHA-256; skips when that hash is unchanged.

    Raises:
        MegasynthError: a malformed summary/evals file (names ``file:line`` and the field).
    """
    finished, unfinished = [], []
    for run in run_names(cfg):
        (finished if (layout.run_dir(run) / "summary.json").exists() else unfinished).append(run)
    for run in unfinished:
        logger.warning("run %s is not finished (no %s); skipped", run, layout.run_dir(run) / "summary.json")
    inputs = [layout.run_dir(r) / f for r in finished for f in ("summary.json", "evals.jsonl")]
    digest = _inputs_hash(inputs, json.dumps({r: synthetic_sources_of(cfg, r) for r in finished}, sort_keys=True))
    if layout.results.exists() and is_done(layout.results) and \
            read_json(marker_path(layout.results)).get("inputs_sha256") == digest:
        logger.info("%s is up to date (%d finished runs); skipping", layout.results, len(finished))
        return
    rows: list[ResultRow] = []
    for run in finished:
        rows.extend(collect_run(run, layout.run_dir(run), synthetic_sources_of(cfg, run)))
    write_results(layout.results, rows)
    mark_done(layout.results, {"inputs_sha256": digest, "runs": finished, "skipped_unfinished": unfinished,
                               "rows": len(rows)})
    logger.info("wrote %s: %d rows from %d finished runs (%d unfinished skipped)", layout.results, len(rows),
                len(finished), len(unfinished))
