"""Results: the tidy tables of a run, per-example values, and the manifest; saving them.

A table has one row per experiment: its sweep columns, then one column per measure (the
mean over examples; `normalized` applied to the means). `Results.per_example(name)` has
the raw per-example values. `save(dir)` writes the result folder (patchc/outputs.py: one
CSV per table and manifest.json, staged and moved into place at once).

`normalized` divides by the gap between two baselines; where they are equal the column is NaN
and `Results.warnings` holds a W470 that names the table and both values.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from patchc.compiler.errors import PatchcError, Warning_
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


class _ZeroGaps:
    """The baselines of `normalized` columns whose gap was zero, for one warning a table."""

    def __init__(self) -> None:
        self.cases: dict[str, list[tuple[float, float | None]]] = {}

    def check(self, col: str, target: float, source: float | None) -> None:
        gap = target if source is None else source - target
        if gap == 0:
            self.cases.setdefault(col, []).append((target, source))

    def warning(self, table: Table) -> PatchcError | None:
        if not self.cases:
            return None
        parts = []
        for col, cases in self.cases.items():
            t, s = cases[0]
            both = (f"the unpatched run's {col} is {t:g} (it divides)" if s is None else
                    f"both baselines are {t:g} (target run) and {s:g} (source run)")
            parts.append(f"`{col} normalized` is NaN in {len(cases)} row(s): {both}")
        return Warning_("W470", f"table `{table.name}`: " + "; ".join(parts) + ", so "
                        "there is nothing to normalize by", table.span,
                        hint="the runs being compared give the same value (identical runs, "
                        "or an ablation with the run's own mean): drop `normalized`")


def build_table(table: Table, values: dict[str, torch.Tensor],
                warnings: list[PatchcError] | None = None) -> pd.DataFrame:
    """One DataFrame from a lowered table and the per-example values of its nodes.
    A warning about the table (W470) is appended to `warnings`."""
    means = {nid: _mean(v) for nid, v in values.items()}
    gaps = _ZeroGaps()
    df = (_compare_table(table, means, gaps) if table.pairs
          else _rows_table(table, values, means, gaps))
    w = gaps.warning(table)
    if w is not None and warnings is not None:
        warnings.append(w)
    return df


def _rows_table(table: Table, values: dict[str, torch.Tensor], means: dict[str, float],
                gaps: _ZeroGaps) -> pd.DataFrame:
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
                gaps.check(col, t, s)
                m = _normalized(m, t, s)
            rec[col] = m
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=list(table.columns))


def _compare_table(table: Table, means: dict[str, float], gaps: _ZeroGaps) -> pd.DataFrame:
    groups: dict[tuple, tuple[list[float], list[float]]] = {}
    for p in table.pairs:
        est, exact = means[p.estimate], means[p.metric]
        if p.normalize:
            target, source = p.normalize
            t, s = means[target], means[source] if source else None
            gaps.check("compare", t, s)
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

    def __init__(self, ir: IRGraph, values: dict[str, torch.Tensor], manifest: dict[str, Any],
                 warnings: list[PatchcError] | None = None) -> None:
        # Warnings of the whole run: check's, the runner's, and the tables' own (W470).
        self.warnings: list[PatchcError] = list(warnings or [])
        self.tables: dict[str, pd.DataFrame] = {t.name: build_table(t, values, self.warnings)
                                                for t in ir.tables}
        self._ir = ir
        self._values = values
        self.manifest = manifest
        # Output files besides the tables' CSVs: file name -> a function writing it at the
        # path it is given (e.g. `lambda p: save_file(tensors, str(p))`). They are staged
        # and moved into place with the rest, listed in the manifest, compared by verify.
        self.outputs: dict[str, Callable[[Path], None]] = {}

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

    def write_files(self, staging) -> None:
        """Write every output file of the run (not the manifest) into a folder
        (patchc/outputs.Folder: a run's staging folder, or verify's rerun folder): one
        NAME.csv per table, then each of `self.outputs`."""
        for name, df in self.tables.items():
            staging.write_text(f"{name}.csv", df.to_csv(index=False))
        for name, write in self.outputs.items():
            write(staging.path(name))

    def save(self, out_dir: str | os.PathLike[str], force: bool = False,
             plots: bool = False) -> list[Path]:
        """Write the result folder out_dir (one CSV per table, manifest.json, and the PNGs
        with `plots`), all at once: see patchc/outputs.py. Refuses a folder that holds
        other files unless `force`."""
        from patchc.outputs import save_result

        return save_result(self, out_dir, force=force, plots=plots)
