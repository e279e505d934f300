"""The ``sweep:`` section of a study: the experiment grid presets × budgets × mixtures × seeds, how budgets are
scheduled (``wsd`` or ``separate``) and which executor runs it.

```yaml
sweep:
  presets: [llama3-micro, llama3-tiny]            # model ladder (default: [model.preset])
  budgets: {tokens_per_parameter: [5, 20, 80]}    # or {tokens: [2.0e6, 8.0e6]}; per preset
  ratios: {hq: [0.0, 0.2, 0.33, 0.5], qa: [0.33]} # share of that synthetic source, the rest natural
  mixtures: [txbk33]                              # named mixtures of `mixtures:` as well
  seeds: [1, 2]                                   # train.seed of each run (default: [train.seed])
  schedule: wsd                                   # or `separate`
  cooldown_fraction: 0.2
  executor: {type: local, jobs: 2}                # or {type: torchrun, nproc_per_node: 8} / {type: slurm, ...}
```

Budgets: ``tokens`` are training tokens D; ``tokens_per_parameter`` multiplies the preset's *non-embedding*
parameter count (N of Kaplan et al. 2020, :meth:`~megasynth.model.presets.LlamaShape.non_embedding_params`),
so ``tokens_per_parameter: [20]`` is Hoffmann et al.'s 20 tokens per parameter on that count. Either becomes
``train_iters = round(D / (global_batch_size · seq_length))`` steps (at least one global batch); the run then
trains ``train_iters · global_batch_size · seq_length`` tokens.

Ratio grids become mixtures named ``<source>@<ratio>`` (``hq@0.33``, ``txbk@0.05``; :func:`ratio_mixture_name`)
with ``ratio`` of the source and ``1 - ratio`` natural text (shared over the natural corpora like the study's
mixture named ``natural``, or all of the one natural corpus). Ratio 0 of any source is the one ``natural``
mixture; ratio 1 is all synthetic.

This module is torch-free (base floor); the runs of a sweep are planned one floor up
(:mod:`megasynth.study.sweep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal, NamedTuple, Optional

from megasynth.config.data import MixtureConfig
from megasynth.config.slurm import SlurmExecutorConfig
from megasynth.config.training import TrainConfig
from megasynth.utils import MegasynthError

NATURAL = "natural"
"""Name of the all-natural mixture that ratio 0 of any source expands to."""


def format_number(x: float) -> str:
    """``x`` in plain decimal without trailing zeros (``0.33``, ``0.05``, ``1``, ``0.001``): no exponent."""
    s = f"{x:.10f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def ratio_mixture_name(source: str, ratio: float) -> str:
    """``<source>@<ratio>`` (``hq@0.33``); ratio 0 is :data:`NATURAL`."""
    return NATURAL if ratio == 0 else f"{source}@{format_number(ratio)}"


def format_tokens(n: float) -> str:
    """A token count with 4 significant digits and a unit: ``409.6k``, ``2M``, ``200B``, ``512``."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.4g}{unit}"
    return f"{n:.4g}"


class Budget(NamedTuple):
    """One training budget of one preset."""

    label: str
    """Part of the run id: ``409.6k`` for ``tokens``, ``tpp20`` for ``tokens_per_parameter``."""
    field: str
    """The study-file field it comes from, e.g. ``sweep.budgets.tokens[2]``."""
    requested_tokens: float
    """D asked for (tokens, or tokens per parameter × non-embedding parameters)."""
    train_iters: int
    """Optimizer steps: ``round(requested_tokens / tokens per step)``."""
    tokens: int
    """Tokens the run trains: ``train_iters · global_batch_size · seq_length``."""


@dataclass
class BudgetsConfig:
    """``sweep.budgets``: give one of the two lists (neither: the study's ``train.train_iters`` is the one budget)."""

    tokens_per_parameter: Optional[list[float]] = None
    """D / N with N the preset's non-embedding parameter count, one budget per entry."""
    tokens: Optional[list[float]] = None
    """D in training tokens, the same for every preset."""

    @property
    def kind(self) -> Optional[str]:
        """``tokens_per_parameter``, ``tokens``, or None (the study's ``train_iters``)."""
        return ("tokens_per_parameter" if self.tokens_per_parameter is not None
                else "tokens" if self.tokens is not None else None)

    def validate(self, where: str = "sweep.budgets") -> None:
        if self.tokens_per_parameter is not None and self.tokens is not None:
            raise MegasynthError(f"{where}: give tokens_per_parameter or tokens, not both")
        kind = self.kind
        if kind is None:
            return
        values = getattr(self, kind)
        if not values:
            raise MegasynthError(f"{where}.{kind}: at least one budget is required")
        for i, v in enumerate(values):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise MegasynthError(f"{where}.{kind}[{i}]: must be a number > 0, got {v!r}")

    def for_preset(self, preset: str, train: TrainConfig, where: str = "sweep.budgets") -> list[Budget]:
        """The budgets of ``preset`` with ``train``'s batch, sorted by steps.

        Raises:
            MegasynthError: a budget below one global batch, or two budgets of the same steps or run-id label.
        """
        from megasynth.model.presets import PRESETS  # torch-free table (the base floor may read it)

        step = train.tokens_per_step
        kind = self.kind
        if kind is None:
            return [Budget(format_tokens(train.train_tokens), "train.train_iters", float(train.train_tokens),
                           train.train_iters, train.train_tokens)]
        n = PRESETS[preset].non_embedding_params()
        out: list[Budget] = []
        for i, v in enumerate(getattr(self, kind)):
            at = f"{where}.{kind}[{i}]"
            d = v * n if kind == "tokens_per_parameter" else float(v)
            label = f"tpp{format_number(v)}" if kind == "tokens_per_parameter" else format_tokens(v)
            if d < step:
                what = (f"{format_number(v)} × {n:,} non-embedding parameters of {preset} = {d:,.0f} tokens"
                        if kind == "tokens_per_parameter" else f"{d:,.0f} tokens")
                raise MegasynthError(f"{at}: {what} is less than one global batch (train.global_batch_size "
                                     f"{train.global_batch_size} × train.seq_length {train.seq_length} = "
                                     f"{step:,} tokens)")
            iters = max(1, round(d / step))
            for b in out:
                if b.label == label or b.train_iters == iters:
                    same = "run-id label " + label if b.label == label else f"{iters} steps for {preset}"
                    raise MegasynthError(f"{at}: same {same} as {b.field} (two runs with one id)")
            out.append(Budget(label, at, d, iters, iters * step))
        return sorted(out, key=lambda b: b.train_iters)


@dataclass
class ExecutorConfig:
    """``sweep.executor``: what runs the sweep's tasks (``megasynth.study.executors``).

    ``{type: slurm, partition: ..., time_limit: ...}`` may be written flat: keys of
    :class:`~megasynth.config.slurm.SlurmExecutorConfig` go to ``slurm``.
    """

    type: Literal["local", "torchrun", "slurm"] = "local"
    """``local``: subprocesses on this machine; ``torchrun``: each run under torchrun on this node;
    ``slurm``: a SLURM job array."""
    jobs: int = 1
    """``local``: tasks at once (the CPU cores are split between them)."""
    nproc_per_node: int = 1
    """``torchrun`` (and each node of a ``slurm`` task): processes per node (one per GPU)."""
    slurm: SlurmExecutorConfig = field(default_factory=SlurmExecutorConfig)

    @classmethod
    def normalise_yaml(cls, value: dict) -> dict:
        """The flat form ``{type: slurm, partition: p}`` as ``{type: slurm, slurm: {partition: p}}``."""
        if not isinstance(value, dict) or value.get("type") != "slurm":
            return value
        names = {f.name for f in fields(SlurmExecutorConfig)}
        flat = {k: v for k, v in value.items() if k in names}
        if not flat:
            return value
        rest = {k: v for k, v in value.items() if k not in names}
        return {**rest, "slurm": {**(rest.get("slurm") or {}), **flat}}

    def validate(self, where: str = "sweep.executor") -> None:
        if self.jobs < 1:
            raise MegasynthError(f"{where}.jobs: must be >= 1")
        if self.nproc_per_node < 1:
            raise MegasynthError(f"{where}.nproc_per_node: must be >= 1")
        if self.type == "slurm":
            self.slurm.validate(where)


@dataclass
class SweepConfig:
    """``sweep``: the study's grid of runs (see the module docstring)."""

    presets: list[str] = field(default_factory=list)
    """Model presets (``megasynth.model.presets``); empty: ``[model.preset]``."""
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    """Synthetic source -> shares of it (the rest natural); each becomes a mixture ``<source>@<ratio>``."""
    mixtures: list[str] = field(default_factory=list)
    """Named mixtures of ``mixtures:`` trained as well; with no ratios either, every study mixture."""
    seeds: list[int] = field(default_factory=list)
    """``train.seed`` of each repeat (initial weights, data order); empty: ``[train.seed]``."""
    schedule: Literal["wsd", "separate"] = "wsd"
    """``wsd``: one warmup-stable-decay trunk per (preset, mixture, seed) at the largest budget, a cooldown
    branch from it per smaller budget (Hägele et al. 2024); ``separate``: one run per budget with the study's
    ``train.optimizer.lr_decay_style`` decaying to that budget (Hoffmann et al. 2022)."""
    cooldown_fraction: float = 0.2
    """``wsd``: the decay phase of a budget of T steps is its last ``round(cooldown_fraction · T)`` steps."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def validate(self, where: str, *, synthetic: list[str], natural: list[str], mixtures: list[str],
                 default_preset: str, train: TrainConfig) -> None:
        """Check the grid against the study (its sources, mixtures and ``train`` batch); raise naming the field.

        Raises:
            MegasynthError: an unknown preset, a ratio outside [0, 1], a source no corpus or style provides, an
                unknown mixture, a budget below one global batch, two runs with one id (repeated preset, seed,
                budget label), a WSD branch point inside the warmup, bad executor settings.
        """
        from megasynth.model.presets import PRESETS

        for i, p in enumerate(self.presets):
            if p not in PRESETS:
                raise MegasynthError(f"{where}.presets[{i}]: unknown preset {p!r} (known: {', '.join(PRESETS)})")
        for name, values in (("presets", self.presets), ("seeds", self.seeds), ("mixtures", self.mixtures)):
            dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
            if dup is not None:
                raise MegasynthError(f"{where}.{name}: {dup!r} appears twice (two runs with one id)")
        for src, values in self.ratios.items():
            if src not in synthetic:
                what = ("is a natural corpus; ratios are shares of a synthetic source" if src in natural else
                        "no corpus or style provides this source")
                raise MegasynthError(f"{where}.ratios.{src}: {what} (synthetic sources of this study: "
                                     f"{', '.join(synthetic) or 'none'})")
            if not values:
                raise MegasynthError(f"{where}.ratios.{src}: at least one ratio is required")
            for i, r in enumerate(values):
                if not (isinstance(r, (int, float)) and 0 <= r <= 1):
                    raise MegasynthError(f"{where}.ratios.{src}[{i}]: ratio must be in [0, 1], got {r!r}")
            names = [ratio_mixture_name(src, r) for r in values]
            dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
            if dup is not None:
                raise MegasynthError(f"{where}.ratios.{src}: mixture {dup!r} appears twice (two runs with one id)")
        for i, m in enumerate(self.mixtures):
            if m not in mixtures:
                raise MegasynthError(f"{where}.mixtures[{i}]: unknown mixture {m!r} (known: {', '.join(mixtures)})")
        if not 0 < self.cooldown_fraction < 1:
            raise MegasynthError(f"{where}.cooldown_fraction: must be in (0, 1), got {self.cooldown_fraction}")
        self.budgets.validate(f"{where}.budgets")
        warmup = train.optimizer.lr_warmup_iters
        for preset in self.presets or [default_preset]:
            budgets = self.budgets.for_preset(preset, train, f"{where}.budgets")
            if self.schedule == "wsd":
                for b in budgets:
                    start = b.train_iters - cooldown_iters(b.train_iters, self.cooldown_fraction)
                    if start < max(warmup, 1):
                        raise MegasynthError(
                            f"{b.field}: the WSD cooldown of this budget ({b.train_iters} steps for {preset}) "
                            f"would start at step {start}, before train.optimizer.lr_warmup_iters={warmup} ends "
                            f"(raise the budget or lower {where}.cooldown_fraction)")
            elif warmup >= budgets[0].train_iters:
                raise MegasynthError(f"{budgets[0].field}: {budgets[0].train_iters} steps for {preset}, not more "
                                     f"than train.optimizer.lr_warmup_iters={warmup}")
        self.executor.validate(f"{where}.executor")

    def ratio_mixtures(self, natural_shares: dict[str, float]) -> list[MixtureConfig]:
        """The mixtures of the ratio grids (``<source>@<ratio>``, ``natural``), in grid order, deduplicated."""
        out: dict[str, MixtureConfig] = {}
        for src, values in self.ratios.items():
            for r in values:
                name = ratio_mixture_name(src, r)
                if name in out:
                    continue
                sources = {src: float(r)} if r > 0 else {}
                if r < 1:
                    sources.update({n: round((1 - r) * s, 12) for n, s in natural_shares.items()})
                out[name] = MixtureConfig(name=name, sources=sources)
        return list(out.values())


def cooldown_iters(train_iters: int, fraction: float) -> int:
    """Steps of the WSD decay of a ``train_iters``-step budget: ``round(fraction · train_iters)``, at least 1."""
    return max(1, round(fraction * train_iters))
