"""Every path of one study directory, and of one training run in it (the base floor: no stage imports).

```
study.yaml                         the study file as the user gave it (a verbatim copy)
invocations/<UTC time>-<command>.yaml   argv, overrides and resolved config of each invocation
timings.json                       wall seconds of each stage, per invocation
corpora/<name>.jsonl               natural corpora and eval sets (id, text, source)
plan/<corpus>.offsets.npy          byte offset of every document of a generation source corpus
synthetic/<source>/shard-NNNNN.jsonl + manifest.json      generated records (<style>[@<generator>], synthllm)
synthetic/<source>/partial-NNNNN.jsonl                    records of a shard being generated (append-only)
synthetic/<source>/rejected/shard-NNNNN.jsonl, plan.json  filtered outputs with their reason; the source's plan
synthetic/synthllm/{scores,concepts}/shard-NNNNN.jsonl, graph/, combinations.jsonl, decontamination/
engines/<host>-<pid>.json          /dev/shm segments a running vLLM engine made (removed after a crash)
decontaminated/<source>.jsonl      training sources without documents that overlap an eval set
decontamination.json               per source and eval set: documents checked, removed, example n-grams
tokenizer/tokenizer.json           trained/exported tokenizer (HF format)
tokenized/<name>_text_document.{bin,idx} + <name>.stats.json, tokenized/cache/ (megatron-core indices)
mixtures/<mix>.json                blend weights (prefixes relative to the study root), shares, epochs
runs/<run_id>/{run.yaml, summary.json, metrics.jsonl, evals.jsonl, checkpoints/, tb/, attempt.json, error.json}
runs/<run_id>/token_losses/<eval_set>.npy    per-token ids and losses of the final evaluation
runs/<run_id>/downstream/iter_NNNNNNN.json   downstream task results of a checkpoint (evaluate stage)
logs/runs/<run_id>.log             console output of a run started by a sweep executor (appended per attempt)
collapse/g<k>/                     the recursive loop: generator/ (HF export), corpora/, synthetic/
results.csv                        one row per (run, budget, eval set or task, metric)
fits/<name>.json                   scaling-law fits
report/{report.md, *.png}
```

Every stage and tool takes its paths from :class:`StudyLayout` (and :class:`RunLayout` for a run), so
each file name is written in one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def shard_name(k: int) -> str:
    """``shard-NNNNN.jsonl``: the ``k``-th shard of a sharded JSONL output."""
    return f"shard-{k:05d}.jsonl"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one training run, ``runs/<run_id>/``."""

    dir: Path

    @classmethod
    def at(cls, run_dir: str | os.PathLike) -> "RunLayout":
        return cls(Path(run_dir))

    @property
    def config(self) -> Path:
        """``run.yaml``: the resolved :class:`~megasynth.config.RunConfig`, written when the run starts."""
        return self.dir / "run.yaml"

    @property
    def summary(self) -> Path:
        """``summary.json``; its marker ``summary.json.done`` says the run is complete."""
        return self.dir / "summary.json"

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one row per optimizer step."""
        return self.dir / "metrics.jsonl"

    @property
    def evals(self) -> Path:
        """``evals.jsonl``: one row per (evaluation step, eval set)."""
        return self.dir / "evals.jsonl"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: ``iter_NNNNNNN/`` directories and ``latest_checkpointed_iteration.txt``."""
        return self.dir / "checkpoints"

    @property
    def tb(self) -> Path:
        """``tb/``: TensorBoard event files."""
        return self.dir / "tb"

    @property
    def attempt(self) -> Path:
        """``attempt.json``: the current (or last) attempt of the run, written by the launcher when it starts
        (host, pid, SLURM ids, start time) and when it ends (end time, exit code, state)."""
        return self.dir / "attempt.json"

    @property
    def error(self) -> Path:
        """``error.json``: why the last attempt failed (written by the launcher; removed when the next starts)."""
        return self.dir / "error.json"

    RECORDS = ("run.yaml", "attempt.json")
    """Files that describe the run and its current attempt rather than its outputs: a restart from step 0
    leaves them in place (``megasynth.train.checkpoint.move_aside``)."""

    @property
    def token_losses_dir(self) -> Path:
        """``token_losses/``: per-token losses of the final evaluation, one file per held-out set."""
        return self.dir / "token_losses"

    def token_losses(self, eval_set: str) -> Path:
        """``token_losses/<eval_set>.npy``: ``[n_tokens]`` records ``(token int32, loss float32 nats)``."""
        return self.token_losses_dir / f"{eval_set}.npy"

    @property
    def downstream_dir(self) -> Path:
        """``downstream/``: downstream task results of the run's checkpoints (the ``evaluate`` stage's cache)."""
        return self.dir / "downstream"

    def downstream(self, step: int) -> Path:
        """``downstream/iter_NNNNNNN.json``: ``{task: result}`` of the checkpoint after ``step`` steps."""
        return self.downstream_dir / f"iter_{step:07d}.json"

    @property
    def math_dir(self) -> Path:
        """``math/``: generative math results of the run's checkpoints (the ``evaluate`` stage's cache)."""
        return self.dir / "math"

    def math(self, step: int) -> Path:
        """``math/iter_NNNNNNN.json``: ``{task: error-rate rows}`` of the checkpoint after ``step`` steps."""
        return self.math_dir / f"iter_{step:07d}.json"

    def math_samples(self, step: int, task: str) -> Path:
        """``math/iter_NNNNNNN.<task>.samples.jsonl``: every sampled solution of ``task`` (answer, gold, correct)."""
        return self.math_dir / f"iter_{step:07d}.{task}.samples.jsonl"

    def hf_export(self, step: int) -> Path:
        """``hf/iter_NNNNNNN/``: the checkpoint after ``step`` steps as a HF Llama directory (marker ``.done``)."""
        return self.dir / "hf" / f"iter_{step:07d}"


@dataclass(frozen=True)
class StudyLayout:
    """Paths of one study directory rooted at ``root`` (see the module docstring)."""

    root: Path

    @classmethod
    def of(cls, root: str | os.PathLike) -> "StudyLayout":
        return cls(Path(root))

    # ------------------------------------------------------------------ records of invocations
    @property
    def config(self) -> Path:
        """``study.yaml``: a verbatim copy of the study file the study was last invoked with."""
        return self.root / "study.yaml"

    @property
    def invocations_dir(self) -> Path:
        return self.root / "invocations"

    def invocation(self, stamp: str, command: str) -> Path:
        """``invocations/<stamp>-<command>.yaml`` (``stamp``: UTC time, e.g. ``20261122T101530.123456Z``)."""
        return self.invocations_dir / f"{stamp}-{command}.yaml"

    @property
    def timings(self) -> Path:
        """``timings.json``: ``{stage: [seconds of each invocation]}``."""
        return self.root / "timings.json"

    # ------------------------------------------------------------------ corpora and generation
    def corpus(self, name: str) -> Path:
        return self.root / "corpora" / f"{name}.jsonl"

    def synthetic_dir(self, source: str) -> Path:
        """``synthetic/<source>/`` of a style (``hq``, ``qa``, ``txbk``) or ``synthllm``."""
        return self.root / "synthetic" / source

    def synthetic_shard(self, source: str, k: int, part: str | None = None) -> Path:
        """``synthetic/<source>/[<part>/]shard-NNNNN.jsonl`` (``part``: SynthLLM's ``scores``, ``concepts``)."""
        d = self.synthetic_dir(source)
        return (d / part if part else d) / shard_name(k)

    def synthetic_manifest(self, source: str) -> Path:
        return self.synthetic_dir(source) / "manifest.json"

    def synthetic_partial(self, source: str, k: int) -> Path:
        """``synthetic/<source>/partial-NNNNN.jsonl``: completed records of shard ``k`` while it is generated."""
        return self.synthetic_dir(source) / f"partial-{k:05d}.jsonl"

    def synthetic_rejected(self, source: str, k: int) -> Path:
        """``synthetic/<source>/rejected/shard-NNNNN.jsonl``: shard ``k``'s filtered outputs and their reasons."""
        return self.synthetic_dir(source) / "rejected" / shard_name(k)

    def synthetic_plan(self, source: str) -> Path:
        """``synthetic/<source>/plan.json``: the settings the source's shards were generated with."""
        return self.synthetic_dir(source) / "plan.json"

    def corpus_offsets(self, name: str) -> Path:
        """``plan/<name>.offsets.npy``: byte offset of each document (JSONL line) of corpus ``name``."""
        return self.root / "plan" / f"{name}.offsets.npy"

    @property
    def engines_dir(self) -> Path:
        """``engines/``: one record per running vLLM engine of this study (its ``/dev/shm`` segments)."""
        return self.root / "engines"

    def engine_record(self, host: str, pid: int) -> Path:
        """``engines/<host>-<pid>.json``."""
        return self.engines_dir / f"{host}-{pid}.json"

    def decontaminated(self, name: str) -> Path:
        """``decontaminated/<name>.jsonl``: training source ``name`` without eval-overlapping documents."""
        return self.root / "decontaminated" / f"{name}.jsonl"

    @property
    def decontamination_report(self) -> Path:
        """``decontamination.json``: per source and eval set, documents checked and removed, example n-grams."""
        return self.root / "decontamination.json"

    @property
    def synthllm_graph_dir(self) -> Path:
        """``synthetic/synthllm/graph/``: documents.jsonl, nodes.jsonl, edges.tsv, stats.json."""
        return self.synthetic_dir("synthllm") / "graph"

    @property
    def synthllm_combinations(self) -> Path:
        return self.synthetic_dir("synthllm") / "combinations.jsonl"

    def synthllm_eval_docs(self, task: str) -> Path:
        """``synthetic/synthllm/decontamination/<task>.jsonl``: a math benchmark's problems + solutions (``text``)."""
        return self.synthetic_dir("synthllm") / "decontamination" / f"{task}.jsonl"

    # ------------------------------------------------------------------ tokenization and mixtures
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_file(self) -> Path:
        """``tokenizer/tokenizer.json``; its marker says the study's BPE is trained."""
        return self.tokenizer_dir / "tokenizer.json"

    @property
    def tokenized_dir(self) -> Path:
        return self.root / "tokenized"

    def tokenized_prefix(self, name: str) -> Path:
        """Megatron data prefix (without ``.bin``/``.idx``) of source ``name``."""
        return self.tokenized_dir / f"{name}_text_document"

    def tokenized_stats(self, name: str) -> Path:
        return self.tokenized_dir / f"{name}.stats.json"

    @property
    def tokenized_cache(self) -> Path:
        """megatron-core's dataset index cache (``path_to_cache``), shared by the mix and train stages."""
        return self.tokenized_dir / "cache"

    def mixture(self, name: str) -> Path:
        return self.root / "mixtures" / f"{name}.json"

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the study root when it lies inside it (as mixtures store data prefixes),
        else unchanged (absolute)."""
        p = Path(path)
        try:
            return Path(os.path.abspath(p)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path stored relative to the study root (see :meth:`relative`) as a usable path."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    # ------------------------------------------------------------------ the recursive loop (collapse)
    def collapse(self, k: int) -> "StudyLayout":
        """``collapse/g<k>/``: generation ``k`` of the recursive loop, itself laid out as a study directory
        (``corpora/`` holds a link to the seed corpus, ``synthetic/<style>/`` the generated records)."""
        return StudyLayout(self.root / "collapse" / f"g{k}")

    def collapse_generator(self, k: int) -> Path:
        """``collapse/g<k>/generator/``: the HF Llama export of generation ``k − 1``'s final checkpoint."""
        return self.collapse(k).root / "generator"

    @property
    def base_import(self) -> Path:
        """``base/megatron/``: ``base.hf_model`` imported as a megatron checkpoint (marker ``megatron.done``)."""
        return self.root / "base" / "megatron"

    # ------------------------------------------------------------------ runs and results
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> RunLayout:
        """The paths of run ``run_id`` (``runs/<run_id>/``)."""
        return RunLayout(self.runs_dir / run_id)

    def run_dir(self, run_id: str) -> Path:
        """``runs/<run_id>/``."""
        return self.run(run_id).dir

    def run_log(self, run_id: str) -> Path:
        """``logs/runs/<run_id>.log``: console output of run ``run_id`` under a sweep executor (every attempt)."""
        return self.root / "logs" / "runs" / f"{run_id}.log"

    @property
    def results(self) -> Path:
        return self.root / "results.csv"

    @property
    def fits_dir(self) -> Path:
        return self.root / "fits"

    def fit(self, name: str, ext: str = ".json") -> Path:
        """``fits/<name>.json`` (``data_law``, ``chinchilla_law``, ``efficiency``, ``optimal_ratio``, ``unigrams``;
        ``ext=".png"`` for a figure of ``megasynth fit``)."""
        return self.fits_dir / f"{name}{ext}"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report(self) -> Path:
        """``report/report.md``."""
        return self.report_dir / "report.md"

    def report_file(self, name: str) -> Path:
        """``report/<name>`` (the report's figures)."""
        return self.report_dir / name
