"""Inputs of the preprocessing engine: JSONL (plain, ``.gz``, ``.zst``), Parquet and HF ``datasets``
directories, streamed as work items of bounded size (:class:`Chunk`)."""

from __future__ import annotations

import glob
import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from megasynth.utils import MegasynthError

CHUNK_BYTES = 1 << 20
"""Raw JSONL bytes per work item sent to a worker."""
ARROW_ROWS = 2000
"""Rows per work item for Parquet / HF datasets inputs."""
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)


def is_hf_dataset_dir(path: Path) -> bool:
    """A directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``)."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def _input_kind(path: Path) -> str:
    name = path.name.lower()
    if is_hf_dataset_dir(path):
        return "hf"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "jsonl"


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files (any name), directories (their ``*.jsonl[.gz|.zst]``, ``*.json*``, ``*.parquet`` files,
    recursively, sorted; or a HF ``datasets`` directory) and globs, in the order given.

    Raises:
        MegasynthError: an input that matches nothing.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if is_hf_dataset_dir(p):
                out.append(p)
                continue
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.name.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES))
            if not files:
                raise MegasynthError(f"--input: directory {p} holds no .jsonl/.json[.gz|.zst]/.parquet files")
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise MegasynthError(f"--input: no file matches {item}")
            out.extend(expand_inputs(matches))
    return out


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise MegasynthError(f"{path}: reading .zst needs the zstandard package") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                 buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


@dataclass
class Chunk:
    """One work item: ``payload`` is raw JSONL bytes (``kind == "jsonl"``) or ``{key: list}`` rows."""
    source: str
    first_line: int
    kind: str
    payload: Any
    nbytes: int


def iter_chunks(path: Path, keys: Sequence[str], chunk_bytes: int = CHUNK_BYTES,
                rows: int = ARROW_ROWS) -> Iterator[Chunk]:
    """Stream ``path`` as work items (memory bounded by ``chunk_bytes`` / ``rows``)."""
    kind = _input_kind(path)
    if kind == "jsonl":
        lineno = 1
        with _open_binary(path) as f:
            rest = b""
            while True:
                block = f.read(chunk_bytes)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n")
                if cut < 0:
                    rest = block
                    continue
                body, rest = block[: cut + 1], block[cut + 1:]
                yield Chunk(str(path), lineno, "jsonl", body, len(body))
                lineno += body.count(b"\n")
            if rest:
                yield Chunk(str(path), lineno, "jsonl", rest, len(rest))
    elif kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        missing = [k for k in keys if k not in pf.schema_arrow.names]
        if missing:
            raise MegasynthError(f"{path}: missing column(s) {missing} (has {pf.schema_arrow.names})")
        row = 1
        for batch in pf.iter_batches(batch_size=rows, columns=list(keys)):
            cols = {k: batch.column(k).to_pylist() for k in keys}
            yield Chunk(str(path), row, "rows", cols, batch.nbytes)
            row += batch.num_rows
    else:
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise MegasynthError(f"{path}: a DatasetDict; give one split's directory ({path}/<split>) as --input")
        missing = [k for k in keys if k not in ds.column_names]
        if missing:
            raise MegasynthError(f"{path}: missing column(s) {missing} (has {ds.column_names})")
        ds = ds.select_columns(list(keys))
        row = 1
        for batch in ds.iter(batch_size=rows):
            n = len(batch[keys[0]])
            yield Chunk(str(path), row, "rows", batch, sum(len(t) for t in batch[keys[0]] if isinstance(t, str)))
            row += n


def input_size(path: Path) -> int:
    """Bytes on disk (for progress ETA)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
