"""The ``decontaminate`` stage: every training source, natural and synthetic, without eval-set overlap.

Between ``generate`` and ``preprocess``: each training source (``corpora/<name>.jsonl`` of a natural corpus;
the shards a synthetic source's manifest lists) is copied to ``decontaminated/<name>.jsonl`` without the
documents that share a word n-gram with any eval set (:func:`megasynth.data.decontaminate.decontaminate`:
13-grams after lower-casing and deleting punctuation, GPT-3 App. C / NeMo Curator; one eval index for the
study, the source streamed over every core). ``decontaminated/<name>.jsonl.done`` holds the counts and a
fingerprint of the inputs (their sizes and mtimes, the eval files', the settings): a source whose inputs
changed is redone, the others are skipped. ``decontamination.json`` gathers, per source and eval set, the
documents checked and removed and example n-grams; the report renders it. The ``preprocess`` stage
tokenizes the decontaminated copies (:func:`training_input`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from megasynth.utils import MegasynthError, is_done, mark_done, marker_path, read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from megasynth.config import StudyConfig
    from megasynth.layout import StudyLayout

logger = logging.getLogger("megasynth.data")


def source_inputs(cfg: "StudyConfig", layout: "StudyLayout") -> list[tuple[str, str, list[Path]]]:
    """``(name, kind, files)`` of every training source before decontamination: natural corpora
    (``corpora/<name>.jsonl``), then synthetic sources (the shards their manifest lists; not the per-level SynthLLM
    sources ``synthllm-l<k>``, which the preprocess stage splits from ``synthllm``).

    Raises:
        MegasynthError: a synthetic source not generated yet.
    """
    out: list[tuple[str, str, list[Path]]] = [(n, "natural", [layout.corpus(n)]) for n in cfg.natural_sources]
    from megasynth.config.data import synthllm_level

    for name in cfg.synthetic_sources:
        if synthllm_level(name):
            continue  # per-level SynthLLM sources: the synthllm records, split when tokenized (preprocess)
        manifest = layout.synthetic_manifest(name)
        if not (manifest.exists() and is_done(manifest)):
            raise MegasynthError(f"{manifest}: synthetic source {name!r} not generated yet (run `megasynth generate` "
                                 "first)")
        shards = read_json(manifest).get("shards", [])
        out.append((name, "synthetic", [layout.synthetic_dir(name) / s for s in shards]))
    return out


def training_input(cfg: "StudyConfig", layout: "StudyLayout", name: str, files: list[Path]) -> list[Path]:
    """The files the ``preprocess`` stage tokenizes for training source ``name``: its decontaminated copy when
    the study decontaminates, else ``files``."""
    return [layout.decontaminated(name)] if cfg.decontaminates else files


def _fingerprint(cfg: "StudyConfig", layout: "StudyLayout", files: list[Path]) -> dict:
    d = cfg.decontamination

    def ident(p: Path) -> list:
        st = p.stat()
        return [str(p), st.st_size, st.st_mtime_ns]

    return {"n": d.n, "min_n": d.min_n, "max_matches": d.max_matches,
            "eval_sets": {e: ident(layout.corpus(e)) for e in cfg.eval_sets},
            "inputs": [ident(p) for p in files]}


def _current(cfg, layout, name: str, files: list[Path]) -> bool:
    out = layout.decontaminated(name)
    if not (out.exists() and is_done(out)):
        return False
    try:
        return read_json(marker_path(out)).get("fingerprint") == _fingerprint(cfg, layout, files)
    except OSError:  # an input vanished
        return False


def decontaminate_done(cfg: "StudyConfig", layout: "StudyLayout") -> bool:
    """Whether every training source's decontaminated copy is current and ``decontamination.json`` is written."""
    if not cfg.decontaminates:
        return True
    if not is_done(layout.decontamination_report):
        return False
    try:
        sources = source_inputs(cfg, layout)
    except MegasynthError:
        return False
    return all(_current(cfg, layout, name, files) for name, _, files in sources)


def run_decontaminate(cfg: "StudyConfig", layout: "StudyLayout") -> None:
    """The ``decontaminate`` stage (see the module docstring).

    Raises:
        MegasynthError: a missing input or eval file, malformed JSONL (``file:line``), a synthetic source not
            generated yet.
    """
    from megasynth.data.decontaminate import build_eval_index, decontaminate

    d = cfg.decontamination
    evals = {e: layout.corpus(e) for e in cfg.eval_sets}
    for e, p in evals.items():
        if not p.is_file():
            raise MegasynthError(f"{p}: eval set {e!r} not found (run `megasynth corpora` first)")
    index = None
    report: dict = {}
    t0 = time.monotonic()
    for name, kind, files in source_inputs(cfg, layout):
        for p in files:
            if not p.is_file():
                raise MegasynthError(f"{p}: input of source {name!r} not found (run the earlier stages first)")
        out = layout.decontaminated(name)
        if _current(cfg, layout, name, files):
            logger.info("decontaminate %s: current, skipping", name)
            report[name] = read_json(marker_path(out))["stats"]
            continue
        if index is None:
            index = build_eval_index(evals, n=d.n, min_n=d.min_n)
            logger.info("eval index: %d n-grams of %s (n=%d)", len(index.keys), ", ".join(index.names), d.n)
        fingerprint = _fingerprint(cfg, layout, files)
        with _one_file(files, out.parent) as src:
            stats = decontaminate(src, {}, out, workers=d.workers, max_matches=d.max_matches, index=index)
        summary = {"kind": kind, "inputs": [layout.relative(p) for p in files],
                   **{k: stats[k] for k in ("documents_checked", "documents_removed", "documents_kept", "bytes",
                                            "wall_s", "documents_per_s", "mb_per_s", "workers", "n", "min_n",
                                            "max_matches")},
                   "eval_sets": {e: {k: v[k] for k in ("documents_checked", "documents_removed", "ngrams_matched",
                                                       "ngrams_ignored_common", "examples")}
                                 for e, v in stats["eval_sets"].items()}}
        mark_done(out, {"fingerprint": fingerprint, "stats": summary})
        report[name] = summary
    write_json(layout.decontamination_report, {
        "method": f"word {d.n}-grams after lower-casing and deleting punctuation (GPT-3 App. C; NeMo Curator task "
                  f"decontamination); eval documents of {d.min_n}-{d.n - 1} words count whole; n-grams in more than "
                  f"{d.max_matches} documents of a source ignored; a matching training document is removed",
        "eval_sets": {e: layout.relative(p) for e, p in evals.items()},
        "sources": report,
        "documents_checked": sum(r["documents_checked"] for r in report.values()),
        "documents_removed": sum(r["documents_removed"] for r in report.values()),
        "wall_s": round(time.monotonic() - t0, 2)})
    mark_done(layout.decontamination_report)
    logger.info("decontaminate: removed %d of %d training documents (%s)",
                sum(r["documents_removed"] for r in report.values()),
                sum(r["documents_checked"] for r in report.values()),
                ", ".join(f"{n}: {r['documents_removed']}" for n, r in report.items()))


class _one_file:
    """A context giving one JSONL path for ``files``: the file itself, or a temporary concatenation."""

    def __init__(self, files: list[Path], tmp_dir: Path):
        self.files, self.tmp_dir, self.tmp = files, tmp_dir, None

    def __enter__(self) -> Path:
        if len(self.files) == 1:
            return self.files[0]
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".concat.", suffix=".jsonl", dir=self.tmp_dir)
        self.tmp = Path(name)
        with os.fdopen(fd, "wb") as out:
            for p in self.files:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
                    if p.stat().st_size and not _ends_with_newline(p):
                        out.write(b"\n")
        return self.tmp

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _ends_with_newline(p: Path) -> bool:
    with open(p, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
