"""Results tables (CSV or Parquet) as pandas DataFrames, with one-line errors naming the column.

The analyses take any results table — megasynth's own ``results.csv`` (columns in
:data:`megasynth.analysis.results.COLUMNS`) or one assembled from 1,000 cluster runs — and name its
columns through options (``n_col``, ``d_col``, ``loss_col``, ``group_by``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from megasynth.utils import MegasynthError

__all__ = ["load_table", "require_columns", "numeric_column", "tokens_from_flops", "group_items", "select_metric"]


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a ``.csv`` / ``.tsv`` / ``.parquet`` / ``.pq`` results table.

    Raises:
        MegasynthError: missing file, unknown extension, unreadable or empty table.
    """
    path = Path(path)
    if not path.exists():
        raise MegasynthError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        else:
            raise MegasynthError(f"{path}: unknown table format {suffix!r} (expected .csv, .tsv or .parquet)")
    except MegasynthError:
        raise
    except Exception as e:  # pandas/pyarrow parse errors
        raise MegasynthError(f"{path}: cannot read table ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if df.empty:
        raise MegasynthError(f"{path}: table has no rows")
    df.attrs["source"] = str(path)
    return df


def _where(df: pd.DataFrame) -> str:
    return df.attrs.get("source", "table")


def require_columns(df: pd.DataFrame, cols: Sequence[str | None], what: str = "column") -> None:
    """Raise ``MegasynthError`` naming the first of ``cols`` (None ignored) missing from ``df``."""
    for c in cols:
        if c is not None and c not in df.columns:
            raise MegasynthError(f"{_where(df)}: missing {what} {c!r} (columns: {', '.join(map(str, df.columns))})")


def numeric_column(df: pd.DataFrame, col: str, *, positive: bool = False, finite: bool = True,
                   unit: str = "") -> np.ndarray:
    """``df[col]`` as float64 ``[n]``; errors name the column and the first bad row (CSV line = row + 2).

    Raises:
        MegasynthError: missing column, non-numeric, NaN/inf (``finite``) or ≤ 0 (``positive``) value.
    """
    require_columns(df, [col])
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    raw = df[col].to_numpy()
    unit = f" ({unit})" if unit else ""
    for i in range(vals.size):
        v = vals[i]
        if np.isnan(v) and not (isinstance(raw[i], float) and np.isnan(raw[i])) and raw[i] is not None:
            raise MegasynthError(f"{_where(df)}: row {i}: {col} is not a number: {raw[i]!r}")
    bad = np.flatnonzero(~np.isfinite(vals)) if finite else np.zeros(0, dtype=int)
    if bad.size:
        raise MegasynthError(f"{_where(df)}: row {bad[0]}: {col} must be finite{unit}, got {vals[bad[0]]!r}")
    if positive:
        bad = np.flatnonzero(vals <= 0)
        if bad.size:
            raise MegasynthError(f"{_where(df)}: row {bad[0]}: {col} must be > 0{unit}, got {vals[bad[0]]!r}")
    return vals


def tokens_from_flops(df: pd.DataFrame, flops_col: str, n_col: str) -> np.ndarray:
    """D = C / (6·N) tokens from a FLOPs column and a parameters column (C ≈ 6·N·D, Kaplan et al. 2020)."""
    C = numeric_column(df, flops_col, positive=True, unit="FLOPs")
    N = numeric_column(df, n_col, positive=True, unit="parameters")
    return C / (6.0 * N)


def group_items(df: pd.DataFrame, group_by: Sequence[str] | None) -> list[tuple[dict, pd.DataFrame]]:
    """``[(group key dict, sub-frame)]`` in first-appearance order; one group (``{}``) if no ``group_by``."""
    if not group_by:
        return [({}, df)]
    require_columns(df, group_by, "group-by column")
    out = []
    for key, sub in df.groupby(list(group_by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append(({c: (k.item() if hasattr(k, "item") else k) for c, k in zip(group_by, key)}, sub))
    return out


def select_metric(df: pd.DataFrame, metric: str = "loss", col: str = "metric") -> pd.DataFrame:
    """The rows of ``metric`` when the table has a ``metric`` column (megasynth's ``results.csv``: ``loss``,
    ``bpb``, ``acc``, ``acc_norm``; the value is in the ``loss`` column); a table without the column is all
    ``loss`` rows.

    Raises:
        MegasynthError: no row of ``metric``; a metric other than ``loss`` asked of a table without the column.
    """
    if col not in df.columns:
        if metric != "loss":
            raise MegasynthError(f"{_where(df)}: --metric {metric}: the table has no {col!r} column (loss rows only)")
        return df
    metrics = df[col].where(df[col].notna() & (df[col].astype(str) != ""), "loss").astype(str)  # blank: older rows
    sub = df[metrics == metric]
    if sub.empty:
        have = ", ".join(sorted(metrics.unique()))
        raise MegasynthError(f"{_where(df)}: no rows with {col} {metric!r} (metrics: {have})")
    sub = sub.reset_index(drop=True)
    sub.attrs = dict(df.attrs)
    return sub
