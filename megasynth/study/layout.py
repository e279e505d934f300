"""Paths of one study directory (see DESIGN.md "Data flow and what lands on disk").

```
study.yaml                         resolved config
corpora/<name>.jsonl               natural corpora and eval sets (id, text, source)
generator/                         cached generator model directory (when built from GGUF)
synthetic/<style>/shard-*.jsonl    generated records + manifest.json
tokenizer/                         trained/exported tokenizer (HF tokenizer.json)
tokenized/<name>_text_document.{bin,idx} + <name>.stats.json
mixtures/<mix>.json                blend weights, requested vs realised shares, epochs
runs/<mix>/{config.yaml, tb/, checkpoints/, metrics.jsonl, summary.json}
results.csv                        one row per (run, budget, eval set)
fits/*.json                        data-law fits
report/{report.md, *.png}
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyLayout:
    root: Path

    @classmethod
    def of(cls, root: str | Path) -> "StudyLayout":
        return cls(Path(root))

    @property
    def config(self) -> Path:
        return self.root / "study.yaml"

    def corpus(self, name: str) -> Path:
        return self.root / "corpora" / f"{name}.jsonl"

    @property
    def generator_dir(self) -> Path:
        return self.root / "generator"

    def synthetic_dir(self, style: str) -> Path:
        return self.root / "synthetic" / style

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def tokenized_prefix(self, name: str) -> Path:
        """Megatron data prefix (without ``.bin``/``.idx``) of source ``name``."""
        return self.root / "tokenized" / f"{name}_text_document"

    def tokenized_stats(self, name: str) -> Path:
        return self.root / "tokenized" / f"{name}.stats.json"

    def mixture(self, name: str) -> Path:
        return self.root / "mixtures" / f"{name}.json"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    @property
    def results(self) -> Path:
        return self.root / "results.csv"

    @property
    def fits_dir(self) -> Path:
        return self.root / "fits"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"
