"""How a run's node values become tidy tables: one row per experiment, its sweep columns,
then for each measure the mean over examples (`normalized` applied to the means) and
`<measure>_se`, the standard error of that mean (sample standard deviation / sqrt(n); for a
normalized column, divided by |baseline 1 - baseline 0|, the baselines taken as fixed).
Also the per-example table and the correlations of a `compare` table (what 0 and 1 mean in
a normalized column, and a raw column's unpatched values: patchc/baselines.py).
patchc/results.py wraps these in `Results`.

`normalized` divides by the gap between two baselines; where they are equal the column is NaN
and a W470 names the table and both values.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from patchc.compiler.errors import PatchcError, Warning_
from patchc.compiler.ir import Pair, Table

from .circuit_tables import ranked, with_areas
from .sweep_tables import (_joined, _mean_se, _member_rows, joined_arrays, sweep_blocks,
                           sweep_examples, sweep_frame, sweep_key_names)


def example_mean(values: Any) -> float:
    if not isinstance(values, torch.Tensor):
        return math.nan  # text(N): strings have no mean
    v = values.double()  # float64: a normalized mean divides by a small difference of means
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else math.nan


def _se(values: Any) -> float:
    """Standard error of the mean over the examples (NaN rows left out; NaN below 2)."""
    if not isinstance(values, torch.Tensor):
        return math.nan
    v = values.double()
    v = v[~torch.isnan(v)]
    return float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else math.nan


def se_column(col: str) -> str:
    """The uncertainty column of a measured column."""
    return f"{col}_se"


def _is_text(values: Any) -> bool:
    return isinstance(values, list)


def normalized_value(m: float, target: float, source: float | None) -> float:
    if source is None:
        return m / target if target != 0 else math.nan
    denom = source - target
    return (m - target) / denom if denom != 0 else math.nan


def _ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks of x; ties share their mean rank. Values within float noise of each
    other (1e-6 of the largest magnitude) tie: swaps that change nothing come out a few
    units in the last place apart, and their order is noise, not agreement."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    finite = np.abs(xs[np.isfinite(xs)])
    tol = 1e-6 * float(finite.max()) if finite.size else 0.0
    starts = np.flatnonzero(np.r_[True, ~(np.abs(xs[1:] - xs[:-1]) <= tol)])
    stops = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + stops - 1) / 2, stops - starts)
    return ranks


def pearson(x: Any, y: Any) -> float:
    """Pearson's r of two sequences (NaN below 2 points or for a constant one)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float((dx * dx).sum()), float((dy * dy).sum())
    return float((dx * dy).sum()) / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman(x: Any, y: Any) -> float:
    return pearson(_ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float)))


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
            what = col if table.op == "evaluate" else f"{col} normalized"
            parts.append(f"`{what}` is NaN in {len(cases)} row(s): {both}")
        same = "the runs being compared give the same value (identical runs, or an "
        hint = same + ("ablation with the run's own mean): drop `normalized`"
                       if table.op != "evaluate" else  # (faithfulness is always normalized)
                       "ablation with the evaluated run itself): ablate with another run")
        return Warning_("W470", f"table `{table.name}`: " + "; ".join(parts) + ", so "
                        "there is nothing to normalize by", table.span, hint=hint)


def build_table(table: Table, values: dict[str, Any],
                warnings: list[PatchcError] | None = None) -> pd.DataFrame:
    """One DataFrame from a lowered table and the per-example values of its nodes.
    A warning about the table (W470) is appended to `warnings`."""
    if table.op == "read":
        return _int_keys(_read_table(table, values), table)
    # The means of this table's own nodes only: every table averaging every value of the
    # run made result assembly quadratic in the number of tables.
    used = [nid for row in table.rows for _, nid in row.values]
    used += [nid for p in table.pairs for nid in (p.estimate, p.metric) if p.members is None]
    used += [nid for p in table.pairs for nid in p.normalize or () if nid]
    stats = _stats(dict.fromkeys(used), values)
    means = {nid: m for nid, (m, _) in stats.items()}
    gaps = _ZeroGaps()
    if table.sweeps and not table.rows and not table.pairs:
        # Only compact sweeps' rows (a whole statement's): no empty frame of rows to join.
        df, typed = _sweep_table(table, values, gaps)
    else:
        typed = False
        df = (_compare_table(table, values, means, gaps) if table.pairs
              else _rows_table(table, values, stats, gaps))
    if table.sweeps and (table.rows or table.pairs):  # compact sweeps' rows, as arrays
        sweep = sweep_frame(table, values, gaps.check)
        df = pd.concat([df, sweep], ignore_index=True)[list(df.columns)] if table.rows \
            else sweep.reindex(columns=df.columns)
    if table.op == "circuit":
        df = ranked(table, df, values)
    elif table.op == "evaluate":
        df = with_areas(table, df)
    w = gaps.warning(table)
    if w is not None and warnings is not None:
        warnings.append(w)
    if typed and table.op not in ("circuit", "evaluate"):
        return df  # (_sweep_table made its integer keys Int64 already)
    return _int_keys(df, table)


def _sweep_table(table: Table, values: dict[str, Any], gaps: "_ZeroGaps"
                 ) -> tuple[pd.DataFrame, bool]:
    """A table of compact sweep rows alone: sweep_frame in the table's columns, with its
    integer keys made Int64 as _int_keys makes them, in one DataFrame (no frame built,
    reindexed and converted column by column after). And whether the keys are Int64 already
    (else _int_keys converts them)."""
    names = _row_columns(table, set())
    if _member_rows(table) is not None:  # (an edge sweep's members, put in row order)
        return sweep_frame(table, values, gaps.check).reindex(columns=names), False
    blocks = sweep_blocks(table, values, gaps.check)
    arrays = joined_arrays(blocks)
    if arrays is None or not set(names) <= set(arrays):
        return _joined(blocks).reindex(columns=names), False
    keys = sweep_key_names(table)
    out = {}
    typed = True
    for c in names:
        a = arrays[c]
        if c in keys and isinstance(a, np.ndarray) and a.dtype.kind in "iu":
            a = pd.arrays.IntegerArray(a.astype("int64"), np.zeros(len(a), dtype=bool))
        elif c in keys:  # (text keys, the `site` column, stay as they are; others: _int_keys)
            typed = typed and a.dtype == object and \
                pd.api.types.infer_dtype(a, skipna=False) in ("string", "empty")
        out[c] = a
    return pd.DataFrame(out), typed


_CONCRETE = {"layer": re.compile(r"^L(\d+)\."), "head": re.compile(r"^L\d+\.H(\d+)\.")}


def _concrete_keys(df: pd.DataFrame) -> None:
    """A concrete item beside a pattern (`L1.mlp.post` in `read L*.resid_post, L1.mlp.post`)
    has no `layer` of its own to sweep; its site names one, so the row gets it (grouping by
    layer would otherwise drop the row)."""
    if "site" not in df.columns:
        return
    for col, pattern in _CONCRETE.items():
        if col not in df.columns or not df[col].isna().any():
            continue
        found = [pattern.match(str(t)) if "->" not in str(t) else None for t in df["site"]]
        fill = [bool(m) and pd.isna(v) for m, v in zip(found, df[col])]
        if any(fill):
            df[col] = df[col].astype(object)
            df.loc[fill, col] = [int(m[1]) for m, f in zip(found, fill) if f]


def _int_keys(df: pd.DataFrame, table: Table) -> pd.DataFrame:
    """Integer sweep columns (layer, head, pos, ...) as pandas nullable integers: a table
    mixing site items (`embed` has no layer) would otherwise turn them into floats, printed
    and written as 0.0 and NaN; Int64 prints and writes ints, and an empty cell for none."""
    _concrete_keys(df)
    keys = {c for row in table.rows for c, _ in row.key} | sweep_key_names(table)
    for c in keys & set(df.columns):
        if isinstance(df[c].dtype, pd.Int64Dtype):
            continue
        if pd.api.types.is_integer_dtype(df[c].dtype):  # (sweep blocks: numpy ints already)
            df[c] = df[c].astype("Int64")
            continue
        if df[c].dtype == bool or pd.api.types.is_string_dtype(df[c]):
            continue  # (a sweep's `site` column: no value to look at one by one)
        vals = [v for v in df[c] if v is not None and not pd.isna(v)]
        if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and float(v).is_integer() for v in vals):
            df[c] = df[c].astype("Int64")
    return df


def _stats(nids: Any, values: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(mean, standard error) over the examples of each node's values: the per-example
    vectors of one length together, as a compact sweep's rows are (sweep_tables._mean_se;
    one node at a time was most of assembling a table of a hundred rows), anything else as
    example_mean and _se compute it."""
    out: dict[str, tuple[float, float]] = {}
    by_length: dict[tuple, list[str]] = {}
    for nid in nids:
        v = values[nid]
        if isinstance(v, torch.Tensor) and v.dim() == 1:
            by_length.setdefault((v.shape[0], v.device), []).append(nid)
        else:
            out[nid] = (example_mean(v), _se(v))
    for group in by_length.values():
        mean, se, _ = _mean_se(torch.stack([values[nid].double() for nid in group]))
        for nid, m, e in zip(group, mean.tolist(), se.tolist()):
            out[nid] = (m, e)
    return out


def _rows_table(table: Table, values: dict[str, Any],
                stats: dict[str, tuple[float, float]], gaps: _ZeroGaps) -> pd.DataFrame:
    records = []
    texts: set[str] = set()
    for row in table.rows:
        rec: dict[str, Any] = dict(row.key)
        norm = dict(row.normalize)
        for col, nid in row.values:
            if _is_text(values[nid]):
                texts.add(col)
                continue
            m, se = stats[nid]
            if col in norm:
                target, source = norm[col]
                # Only the examples this experiment has (an `@ each` position beyond a short
                # prompt is NaN) enter the reference means too.
                keep = ~torch.isnan(values[nid].float())
                t = example_mean(values[target][keep])
                s = example_mean(values[source][keep]) if source else None
                gaps.check(col, t, s)
                m = normalized_value(m, t, s)
                scale = abs(s - t) if s is not None else abs(t)
                se = se / scale if scale else math.nan
            rec[col] = m
            rec[se_column(col)] = se
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=_row_columns(table, texts))


def _row_columns(table: Table, texts: set[str]) -> list[str]:
    """A row table's columns: the sweep keys, then each measure and its `_se` (text(N)
    measures are left out: they are in the per-example table only)."""
    columns = []
    keys = {c for row in table.rows for c, _ in row.key} | sweep_key_names(table)
    for c in table.columns:
        if c in texts:
            continue
        columns.append(c)
        if c not in keys:
            columns.append(se_column(c))
    return columns


def _read_table(table: Table, values: dict[str, Any]) -> pd.DataFrame:
    """A `read` table: per site, the tensor's shape and summary statistics (NaN padding
    left out); `norm` is the mean L2 norm of the width-axis vectors."""
    records = []
    for row in table.rows:
        (_, nid), = row.values
        t = values[nid].float()
        finite = t[~torch.isnan(t)]
        vectors = t.reshape(-1, t.shape[-1]) if t.numel() else t
        vectors = vectors[~torch.isnan(vectors).any(-1)] if t.numel() else vectors
        stats = dict(shape="x".join(map(str, t.shape)),
                     mean=float(finite.mean()) if finite.numel() else math.nan,
                     std=float(finite.std()) if finite.numel() > 1 else math.nan,
                     norm=float(vectors.norm(dim=-1).mean()) if vectors.numel() else math.nan,
                     min=float(finite.min()) if finite.numel() else math.nan,
                     max=float(finite.max()) if finite.numel() else math.nan)
        records.append({**dict(row.key), **stats})
    return pd.DataFrame.from_records(records, columns=list(table.columns))


def compare_points(table: Table, values: dict[str, Any], means: dict[str, float],
                   zero_gap: Callable[[str, float, float | None], None] | None = None
                   ) -> list[tuple[Pair, np.ndarray, np.ndarray]]:
    """A `compare` table's points: per Pair, the estimates' and the exact swaps' means over
    the examples (normalized as the measure is), one each, or one per member of a compact
    pair (ir.Pair.members). `means` holds at least the normalizing metrics' and the scalar
    pairs' means; `zero_gap(col, t, s)` is told each pair whose baselines coincide."""
    out = []
    for p in table.pairs:
        if p.members is None:
            est, exact = np.array([means[p.estimate]]), np.array([means[p.metric]])
        else:  # [members, examples] values: each member's mean, NaN examples left out
            lo, hi = p.members
            est = _mean_se(values[p.estimate][lo:hi].double())[0]
            exact = _mean_se(values[p.metric].double().reshape(hi - lo, -1))[0]
        if p.normalize:
            target, source = p.normalize
            t, s = means[target], means[source] if source else None
            gap = t if s is None else s - t
            for _ in range(len(est) if zero_gap is not None and gap == 0 else 0):
                zero_gap("compare", t, s)  # type: ignore[misc]  # (once a point, as per row)
            est, exact = _normalized(est, t, s), _normalized(exact, t, s)
        out.append((p, est, exact))
    return out


def _normalized(m: np.ndarray, target: float, source: float | None) -> np.ndarray:
    """normalized_value of every entry of m."""
    denom = target if source is None else source - target
    if denom == 0:
        return np.full(m.shape, math.nan)
    return m / target if source is None else (m - target) / denom


def _compare_table(table: Table, values: dict[str, Any], means: dict[str, float],
                   gaps: _ZeroGaps) -> pd.DataFrame:
    groups: dict[tuple, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for p, est, exact in compare_points(table, values, means, gaps.check):
        xs, ys = groups.setdefault(p.key, ([], []))
        xs.append(est)
        ys.append(exact)
    records = []
    for row in table.rows:
        parts = groups.get(row.key, ([], []))
        xs, ys = (np.concatenate(v) if v else np.zeros(0) for v in parts)
        records.append({**dict(row.key), "n": len(xs), "pearson": pearson(xs, ys),
                        "spearman": spearman(xs, ys)})
    return pd.DataFrame.from_records(records)


def per_example_table(table: Table, values: dict[str, Any]) -> pd.DataFrame:
    """Long form: one record per (experiment, example) with the raw measured values
    (text(N) as strings); normalized columns are raw, the baselines say how to map them."""
    records = []
    if table.op == "read":
        return pd.DataFrame()
    for row in table.rows:
        # (a normalized column whose node a raw column gives, evaluate's `faithfulness`
        # beside `ld`, would repeat the raw value under a normalized name)
        normalized = {col for col, _ in row.normalize}
        raw = {nid for col, nid in row.values if col not in normalized}
        cols = [(col, nid) for col, nid in row.values if col not in normalized or nid not in raw]
        if not cols:
            continue
        n = len(values[cols[0][1]])
        for i in range(n):
            rec: dict[str, Any] = {**dict(row.key), "example": i}
            for col, nid in cols:
                v = values[nid][i]
                rec[col] = v if _is_text(values[nid]) else float(v)
            records.append(rec)
    df = pd.DataFrame.from_records(records)
    if table.sweeps:
        df = pd.concat([df, sweep_examples(table, values)], ignore_index=True) if records \
            else sweep_examples(table, values)
    return _int_keys(df, table)
