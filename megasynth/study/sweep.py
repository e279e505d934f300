"""A study's sweep: its runs (presets × budgets × mixtures × seeds), the tasks an executor runs, and the plan table.

Runs (:func:`plan_sweep_runs`, called by :func:`megasynth.study.runs.plan_runs` when the study has ``sweep:``):
one budget point per (preset, mixture, seed, budget), run id ``<preset>_<mixture>_s<seed>_<budget>``
(:func:`sweep_run_id`, e.g. ``llama3-micro_hq@0.33_s1_409.6k`` or ``llama3-1b_natural_s2_tpp20``).

- ``schedule: separate``: every point is a run from step 0 whose LR decays to its own budget
  (``train.optimizer.lr_decay_style`` of the study, cosine by default; Hoffmann et al. 2022 §3).
- ``schedule: wsd`` (Hägele et al. 2024, arXiv 2405.18392): the largest budget of each (preset, mixture, seed)
  is the *trunk*: warmup, constant LR, and a decay over its last ``cooldown_fraction`` of steps
  (``lr_decay_style: WSD``); it also saves a checkpoint at every branch point
  (``train.checkpoint.save_steps``, never pruned). Every smaller budget of T steps is a *branch*: it starts
  from the trunk's checkpoint after ``T - round(cooldown_fraction · T)`` steps (model, optimizer, RNG and
  consumed samples; ``train.branch_from``) and decays over the rest, reading the trunk's data in the trunk's
  order (``train.data_samples`` = the trunk's sample count). Up to its branch point it *is* the trunk, so a
  branch costs only its cooldown; it also skips the per-token-loss pass (``evaluation.token_losses``: the
  trunk's, at the largest budget, serve the report's unigram section).

Tasks (:func:`plan_tasks`): the unit an executor schedules, an ordered list of run ids: for ``wsd`` the trunk
then its branches (smallest budget first); for ``separate`` (and a study without a sweep) one run. A worker runs
a task as ``python -m megasynth.study.launch runs/<run_id>/run.yaml`` for each run in order; the run files are
written for every planned run before anything starts (:func:`write_run_files`).

The plan (:func:`plan_table`): one row per budget point with its parameters, tokens, steps and FLOPs, the totals
and device-hours, and per synthetic source the tokens its largest budget needs against the generated size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

from megasynth.config import BranchConfig, RunConfig, StudyConfig
from megasynth.config.sweep import cooldown_iters, format_number, format_tokens
from megasynth.layout import StudyLayout
from megasynth.utils import MegasynthError, atomic_path, is_done, read_json

logger = logging.getLogger("megasynth.study")

DEFAULT_MFU = 0.4
"""Model-FLOPs utilisation assumed by ``megasynth sweep plan`` for device-hours (40% of the BF16 peak)."""

EPOCHS_WARN = 4.0
"""Repeating data more than this many epochs is flagged: Muennighoff et al. 2023 ("Scaling Data-Constrained
Language Models") find up to ~4 epochs of repeated data nearly as good as unique data, and fast decay after."""


@dataclass(frozen=True)
class SweepTask:
    """One unit of work for an executor: the runs ``run_ids`` (``runs/<run_id>/run.yaml``), in this order."""

    task_id: str
    run_ids: list[str]


def sweep_run_id(preset: str, mixture: str, seed: int, budget_label: str) -> str:
    """``<preset>_<mixture>_s<seed>_<budget>``: deterministic, readable and a directory name."""
    return f"{preset}_{mixture}_s{seed}_{budget_label}"


def _point_run(cfg: StudyConfig, preset: str, mixture: str, seed: int, label: str, train_iters: int) -> RunConfig:
    run = RunConfig.from_study(cfg, mixture, sweep_run_id(preset, mixture, seed, label))
    run.model.preset = preset
    run.train.seed = seed
    run.train.train_iters = train_iters
    return run


def plan_sweep_runs(cfg: StudyConfig) -> list[RunConfig]:
    """The runs of ``cfg.sweep`` in task order (see the module docstring), each validated.

    Raises:
        MegasynthError: the study has no sweep, a run that does not validate, two runs with one id.
    """
    sweep = cfg.sweep
    if sweep is None:
        raise MegasynthError("sweep: the study has no sweep section")
    runs: list[RunConfig] = []
    for preset in sweep.presets or [cfg.model.preset]:
        budgets = sweep.budgets.for_preset(preset, cfg.train)
        for mixture in cfg.run_mixtures:
            for seed in sweep.seeds or [cfg.train.seed]:
                group = [_point_run(cfg, preset, mixture.name, seed, b.label, b.train_iters) for b in budgets]
                if sweep.schedule == "separate":
                    for run in group:
                        o = run.train.optimizer
                        if o.lr_decay_style == "WSD":  # separate WSD runs: each decays over its own last fraction
                            o.lr_wsd_decay_iters = cooldown_iters(run.train.train_iters, sweep.cooldown_fraction)
                    runs += group
                    continue
                trunk, branches = group[-1], group[:-1]
                for run in group:
                    o = run.train.optimizer
                    o.lr_decay_style = "WSD"
                    o.lr_wsd_decay_iters = cooldown_iters(run.train.train_iters, sweep.cooldown_fraction)
                points = []
                for run in branches:
                    start = run.train.train_iters - run.train.optimizer.lr_wsd_decay_iters
                    run.train.branch_from = BranchConfig(run_id=trunk.run_id, step=start)
                    run.train.data_samples = trunk.train.train_samples
                    run.evaluation.token_losses = False  # the trunk's (the largest budget) serve the report
                    points.append(start)
                trunk.train.checkpoint.save_steps = sorted(set(points) | set(trunk.train.checkpoint.save_steps))
                runs += [trunk, *branches]
    for run in runs:
        run.validate()
    return check_unique(runs)


def check_unique(runs: list[RunConfig]) -> list[RunConfig]:
    """``runs`` unchanged if their ids are distinct.

    Raises:
        MegasynthError: ``runs: two planned runs share run_id 'x'`` (e.g. a ratio-grid mixture and a named one).
    """
    seen: set[str] = set()
    for run in runs:
        if run.run_id in seen:
            raise MegasynthError(f"runs: two planned runs share run_id {run.run_id!r}")
        seen.add(run.run_id)
    return runs


def plan_tasks(cfg: StudyConfig, runs: Optional[list[RunConfig]] = None) -> list[SweepTask]:
    """The tasks of the study's runs (``runs``: :func:`megasynth.study.runs.plan_runs` when None).

    ``wsd``: one task per trunk, ``[trunk, branches by budget]``; otherwise one task per run.
    """
    from megasynth.study.runs import plan_runs

    runs = plan_runs(cfg) if runs is None else runs
    tasks: list[SweepTask] = []
    by_trunk: dict[str, list[str]] = {}
    for run in runs:
        b = run.train.branch_from
        if b is not None and b.run_id in by_trunk:
            by_trunk[b.run_id].append(run.run_id)
            continue
        ids = [run.run_id]
        by_trunk[run.run_id] = ids
        task_id = run.run_id
        if run.train.checkpoint.save_steps and cfg.sweep is not None and cfg.sweep.schedule == "wsd":
            task_id = run.run_id.rsplit("_", 1)[0]  # <preset>_<mixture>_s<seed>: the trunk and its branches
        tasks.append(SweepTask(task_id, ids))
    return tasks


def write_run_files(runs: list[RunConfig], layout: StudyLayout) -> list[str]:
    """Write ``runs/<run_id>/run.yaml`` of every run (atomically) after checking that none of their directories
    holds another run; return the ids of the runs that are complete.

    Raises:
        MegasynthError: a run directory holds a run with another identity setting (named; nothing written).
    """
    from megasynth.train.record import check_run_dir

    complete = [run.run_id for run in runs if check_run_dir(run, layout.run(run.run_id))]
    for run in runs:
        if run.run_id in complete:
            continue
        path = layout.run(run.run_id).config
        with atomic_path(path) as tmp:
            tmp.write_text(run.to_yaml())
    return complete


# --------------------------------------------------------------------------------------------------
# The plan table
# --------------------------------------------------------------------------------------------------
def plan_vocab_size(cfg: StudyConfig, layout: Optional[StudyLayout] = None) -> tuple[int, str]:
    """Tokenizer ids for parameter counts without loading a tokenizer: the study's trained tokenizer's
    (``tokenizer/tokenizer.json.done``) if present, else the configured BPE size, Llama-3's 128,256, or (a
    ``huggingface`` tokenizer not read here) the preset table's 128,256. Returns ``(ids, where it came from)``."""
    if layout is not None and is_done(layout.tokenizer_file):
        v = read_json(layout.tokenizer_file.parent / (layout.tokenizer_file.name + ".done")).get("vocab_size")
        if isinstance(v, int) and v > 0:
            return v, f"{layout.tokenizer_file}"
    t = cfg.tokenizer
    if t.type == "bpe":
        return t.vocab_size, "tokenizer.vocab_size"
    return 128_256, "Llama-3 tokenizer" if t.type == "llama3" else "assumed (Llama-3's; tokenizer not read)"


def run_flops(run: RunConfig, vocab_size: int) -> float:
    """Training FLOPs the run computes itself: its own steps (a WSD branch: only its cooldown) × tokens per step ×
    :meth:`~megasynth.model.presets.LlamaShape.train_flops_per_token` with the vocabulary padded as the model's."""
    from megasynth.model.presets import PRESETS, padded_vocab_size

    t = run.train
    per_token = PRESETS[run.model.preset].train_flops_per_token(
        t.seq_length, padded_vocab_size(vocab_size, t.parallel.tensor_model_parallel_size))
    start = t.branch_from.step if t.branch_from else 0
    return (t.train_iters - start) * t.tokens_per_step * per_token


def _source_and_ratio(run: RunConfig) -> tuple[str, float]:
    return "+".join(run.synthetic_sources), round(run.synthetic_ratio, 12)


def plan_table(cfg: StudyConfig, layout: Optional[StudyLayout] = None, tflops_per_device: Optional[float] = None,
               runs: Optional[list[RunConfig]] = None) -> dict[str, Any]:
    """The sweep's plan: ``{"runs": [row, ...], "totals": {...}, "sources": [...], "notes": [...]}``.

    Each row: ``run_id, preset, n_params`` (with the padded embeddings of the planned vocabulary),
    ``n_params_non_embedding, mixture, synthetic_source, ratio, seed, tokens`` (D of the budget point),
    ``train_iters, flops`` (the FLOPs this run computes: its own steps × tokens per step ×
    :meth:`~megasynth.model.presets.LlamaShape.train_flops_per_token`; a WSD branch only its cooldown),
    ``start_step`` (0, or a branch's point) and ``branch_of``. Totals: runs, trained tokens, FLOPs, the FLOPs the
    same points would cost as separate runs, and device-hours at ``tflops_per_device`` (default
    :data:`DEFAULT_MFU` of the H100/H200 dense BF16 peak). Sources: per synthetic source the tokens of it the
    largest run reads (share × that run's samples), its tokenized size (``tokenized/<source>.stats.json`` when
    present) and the epochs that implies (flagged above :data:`EPOCHS_WARN`).

    No data is read but the tokenizer's marker and the tokenized stats when ``layout`` has them.
    """
    from megasynth.model.presets import PEAK_TFLOPS_BF16, PRESETS, padded_vocab_size
    from megasynth.study.runs import plan_runs

    runs = plan_runs(cfg) if runs is None else runs
    vocab, vocab_from = plan_vocab_size(cfg, layout)
    peak = PEAK_TFLOPS_BF16["H100"]
    tflops = DEFAULT_MFU * peak if tflops_per_device is None else float(tflops_per_device)
    if not tflops > 0:
        raise MegasynthError(f"--tflops-per-device: must be > 0, got {tflops_per_device}")
    rows = []
    flops_separate = 0.0
    for run in runs:
        t, shape = run.train, PRESETS[run.model.preset]
        padded = padded_vocab_size(vocab, t.parallel.tensor_model_parallel_size)
        per_token = shape.train_flops_per_token(t.seq_length, padded)
        start = t.branch_from.step if t.branch_from else 0
        src, ratio = _source_and_ratio(run)
        rows.append({"run_id": run.run_id, "preset": run.model.preset, "n_params": shape.total_params(padded),
                     "n_params_non_embedding": shape.non_embedding_params(), "mixture": run.mixture.name,
                     "synthetic_source": src, "ratio": ratio, "seed": t.seed, "tokens": t.train_tokens,
                     "train_iters": t.train_iters, "flops": run_flops(run, vocab),
                     "start_step": start, "branch_of": t.branch_from.run_id if t.branch_from else ""})
        flops_separate += t.train_tokens * per_token
    trained = sum((r["train_iters"] - r["start_step"]) * run.train.tokens_per_step for r, run in zip(rows, runs))
    flops = sum(r["flops"] for r in rows)
    totals = {"runs": len(rows), "trained_tokens": trained, "flops": flops, "flops_as_separate_runs": flops_separate,
              "tflops_per_device": tflops, "device_hours": flops / (tflops * 1e12) / 3600,
              "vocab_size": vocab, "vocab_size_from": vocab_from}
    sources = []
    for src in cfg.synthetic_sources:
        need = max((run.mixture.sources.get(src, 0.0) / sum(run.mixture.sources.values())
                    * run.train.dataset_samples * run.train.seq_length for run in runs), default=0.0)
        if need <= 0:
            continue
        stats = layout.tokenized_stats(src) if layout is not None else None
        size = int(read_json(stats)["tokens"]) if stats is not None and stats.is_file() else None
        epochs = need / size if size else None
        sources.append({"source": src, "tokens_needed": int(round(need)), "tokens_generated": size,
                        "epochs": epochs, "warning": epochs is not None and epochs > EPOCHS_WARN})
    notes = [f"{s['source']}: its largest run reads {format_tokens(s['tokens_needed'])} tokens of it, "
             f"{s['epochs']:.1f} epochs of the {format_tokens(s['tokens_generated'])} generated (more than "
             f"{EPOCHS_WARN:g} epochs: repeated data loses value, Muennighoff et al. 2023)"
             for s in sources if s["warning"]]
    return {"runs": rows, "totals": totals, "sources": sources, "notes": notes}


PLAN_COLUMNS = ("run_id", "preset", "n_params", "n_params_non_embedding", "mixture", "synthetic_source", "ratio",
                "seed", "tokens", "train_iters", "flops", "start_step", "branch_of")


def format_plan(plan: dict[str, Any], fmt: str = "table") -> str:
    """The plan as ``table`` (aligned text with totals and sources), ``csv`` (rows only) or ``json``."""
    if fmt == "json":
        return json.dumps(plan, indent=2) + "\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(PLAN_COLUMNS)
        for r in plan["runs"]:
            w.writerow([r[c] for c in PLAN_COLUMNS])
        return buf.getvalue()
    if fmt != "table":
        raise MegasynthError(f"--format: must be table, csv or json, got {fmt!r}")

    def cell(c, v):
        if c in ("n_params", "n_params_non_embedding", "tokens"):
            return format_tokens(v)
        if c == "flops":
            return f"{v:.3g}"
        if c == "ratio":
            return format_number(v)
        return str(v)

    cols = list(PLAN_COLUMNS)
    body = [[cell(c, r[c]) for c in cols] for r in plan["runs"]]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    t = plan["totals"]
    saved = 1 - t["flops"] / t["flops_as_separate_runs"] if t["flops_as_separate_runs"] else 0.0
    lines += ["", f"runs: {t['runs']}", f"training tokens: {t['trained_tokens']:,} ({format_tokens(t['trained_tokens'])})",
              f"FLOPs: {t['flops']:.4g} (as separate runs from step 0: {t['flops_as_separate_runs']:.4g}; "
              f"{saved:.0%} saved)",
              f"device-hours: {_hours(t['device_hours'])} at {t['tflops_per_device']:.1f} TFLOP/s per device",
              f"vocabulary for parameter counts: {t['vocab_size']:,} ({t['vocab_size_from']})"]
    if plan["sources"]:
        lines += ["", "synthetic source  tokens needed  generated  epochs"]
        for s in plan["sources"]:
            gen = format_tokens(s["tokens_generated"]) if s["tokens_generated"] else "unknown"
            ep = f"{s['epochs']:.2f}" if s["epochs"] is not None else "unknown (not tokenized yet)"
            flag = "  WARNING: more than 4 epochs" if s["warning"] else ""
            lines.append(f"{s['source']:<16}  {format_tokens(s['tokens_needed']):>13}  {gen:>9}  {ep}{flag}")
    lines += [f"warning: {n}" for n in plan["notes"]]
    return "\n".join(lines) + "\n"


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 10 else f"{h:.3g}"
