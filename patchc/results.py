"""Results: the tidy tables of a run, per-example values, and the manifest; saving them.

A table has one row per experiment: its sweep columns, then one column per measure (the
mean over examples; `normalized` applied to the means). `Results.per_example(name)` has
the raw per-example values. `save(dir)` writes `NAME.csv` per table and `manifest.json`,
all through temporary files renamed at the end, so a failed run leaves no half-written table.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from patchc.compiler.ir import IRGraph, Table


def _mean(values: torch.Tensor) -> float:
    v = values.float()
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else math.nan


def _normalized(m: float, target: float, source: float | None) -> float:
    if source is None:
        return m / target if target != 0 else math.nan
    denom = source - target
    return (m - target) / denom if denom != 0 else math.nan


def _ranks(x: list[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2  # ties share their mean rank
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(_ranks(x), _ranks(y))


def build_table(table: Table, values: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One DataFrame from a lowered table and the per-example values of its nodes."""
    # The means of this table's own nodes only: every table averaging every value of the
    # run made result assembly quadratic in the number of tables.
    used = [nid for row in table.rows for _, nid in row.values]
    used += [nid for p in table.pairs for nid in (p.estimate, p.metric, *(p.normalize or ()))
             if nid]
    means = {nid: _mean(values[nid]) for nid in dict.fromkeys(used)}
    if table.pairs:
        return _compare_table(table, means)
    records = []
    for row in table.rows:
        rec: dict[str, Any] = dict(row.key)
        norm = dict(row.normalize)
        for col, nid in row.values:
            m = means[nid]
            if col in norm:
                target, source = norm[col]
                # Only the examples this experiment has (an `@ each` position beyond a short
                # prompt is NaN) enter the reference means too.
                keep = ~torch.isnan(values[nid].float())
                t = _mean(values[target][keep])
                s = _mean(values[source][keep]) if source else None
                m = _normalized(m, t, s)
            rec[col] = m
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=list(table.columns))


def _compare_table(table: Table, means: dict[str, float]) -> pd.DataFrame:
    groups: dict[tuple, tuple[list[float], list[float]]] = {}
    for p in table.pairs:
        est, exact = means[p.estimate], means[p.metric]
        if p.normalize:
            target, source = p.normalize
            t, s = means[target], means[source] if source else None
            est, exact = _normalized(est, t, s), _normalized(exact, t, s)
        xs, ys = groups.setdefault(p.key, ([], []))
        xs.append(est)
        ys.append(exact)
    records = []
    for row in table.rows:
        xs, ys = groups.get(row.key, ([], []))
        records.append({**dict(row.key), "n": len(xs), "pearson": pearson(xs, ys),
                        "spearman": spearman(xs, ys)})
    return pd.DataFrame.from_records(records)


def per_example_table(table: Table, values: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Long form: one record per (experiment, example) with the raw measured values."""
    records = []
    for row in table.rows:
        cols = list(row.values)
        if not cols:
            continue
        n = len(values[cols[0][1]])
        for i in range(n):
            rec: dict[str, Any] = {**dict(row.key), "example": i}
            for col, nid in cols:
                rec[col] = float(values[nid][i])
            records.append(rec)
    return pd.DataFrame.from_records(records)


class Results:
    """Tables by name (`results["heads"]` is a DataFrame), per-example values, manifest."""

    def __init__(self, ir: IRGraph, values: dict[str, torch.Tensor], manifest: dict[str, Any]
                 ) -> None:
        self.tables: dict[str, pd.DataFrame] = {t.name: build_table(t, values)
                                                for t in ir.tables}
        self._ir = ir
        self._values = values
        self.manifest = manifest

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise KeyError(f"no table {name!r}; tables: {', '.join(self.tables)}")
        return self.tables[name]

    def __iter__(self):
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def __repr__(self) -> str:
        return f"Results({', '.join(f'{k}: {len(v)} rows' for k, v in self.tables.items())})"

    def per_example(self, name: str) -> pd.DataFrame:
        table = next((t for t in self._ir.tables if t.name == name), None)
        if table is None:
            raise KeyError(f"no table {name!r}")
        return per_example_table(table, self._values)

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write NAME.csv per table and manifest.json into out_dir. Every file is written
        to a temporary name first and renamed only once all of them are complete."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[str, Path]] = []
        try:
            for name, df in self.tables.items():
                staged.append((_stage(out, df.to_csv(index=False)), out / f"{name}.csv"))
            text = json.dumps(self.manifest, indent=2, sort_keys=True, default=str)
            staged.append((_stage(out, text + "\n"), out / "manifest.json"))
        except BaseException:
            for tmp, _ in staged:
                Path(tmp).unlink(missing_ok=True)
            raise
        for tmp, final in staged:
            os.replace(tmp, final)
        return [final for _, final in staged]


def _stage(directory: Path, text: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".patchc-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return tmp
