"""The rows of a table that are a compact sweep's members (compiler/ir_sweep.py), assembled as
arrays: each block's key columns come from its index set, each measured column from the
block's [members, examples] Metric values, with what patchc/tables.py computes per row (the
mean over examples, NaN examples left out; its standard error; `normalized` against the
baselines' means over the same examples).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from patchc.compiler.ir import Table
from patchc.compiler.ir_sweep import bound_columns, key_columns


def _mean_se(v: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Per row of v [m, n]: mean and standard error over the non-NaN entries; the mask."""
    keep = ~torch.isnan(v)
    count = keep.sum(1)
    x = torch.where(keep, v, torch.zeros((), dtype=v.dtype))
    mean = x.sum(1) / count
    dev = torch.where(keep, v - mean[:, None], torch.zeros((), dtype=v.dtype))
    var = (dev * dev).sum(1) / (count - 1)
    se = torch.where(count > 1, var.sqrt() / count.to(v.dtype).sqrt(),
                     torch.full_like(mean, float("nan")))
    mean = torch.where(count > 0, mean, torch.full_like(mean, float("nan")))
    return mean.numpy(), se.numpy(), keep


def _masked_mean(base: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    """Per member, the mean of base [n] over the member's examples (and base's own non-NaN)."""
    mask = keep & ~torch.isnan(base)[None, :]
    x = torch.where(mask, base[None, :].expand_as(mask), torch.zeros((), dtype=base.dtype))
    count = mask.sum(1)
    out = x.sum(1) / count
    return torch.where(count > 0, out, torch.full_like(out, float("nan"))).numpy()


def sweep_frame(table: Table, values: dict[str, Any],
                zero_gap: Callable[[str, float, float | None], None]) -> pd.DataFrame:
    """The DataFrame of every sweep block of `table`, in order (columns as table.columns
    with `<measure>_se` after each measure). `zero_gap(col, t, s)` is told each row whose
    normalization baselines coincide."""
    return _in_row_order(_joined(sweep_blocks(table, values, zero_gap)), _member_rows(table))


def sweep_blocks(table: Table, values: dict[str, Any],
                 zero_gap: Callable[[str, float, float | None], None]) -> list[dict[str, Any]]:
    """The columns of each sweep block of `table` (arrays by name), as sweep_frame joins
    them."""
    blocks = []
    stats = _block_stats(table, values)
    for block in table.sweeps:
        cols: dict[str, Any] = dict(key_columns(block.space))
        norm = dict(block.normalize)
        for col, nid in block.values:
            mean, se, keep = stats[nid]
            if col in norm:
                target, source = norm[col]
                t = _masked_mean(values[target].double(), keep)
                if source:
                    s = _masked_mean(values[source].double(), keep)
                    gap = s - t
                    with np.errstate(divide="ignore", invalid="ignore"):
                        mean = np.where(gap != 0, (mean - t) / gap, np.nan)
                        se = np.where(gap != 0, se / np.abs(gap), np.nan)
                else:
                    s, gap = None, t
                    with np.errstate(divide="ignore", invalid="ignore"):
                        mean = np.where(t != 0, mean / t, np.nan)
                        se = np.where(t != 0, se / np.abs(t), np.nan)
                for i in np.flatnonzero(gap == 0):
                    zero_gap(col, float(t[i]), None if s is None else float(s[i]))
            cols[col] = mean.astype(float)
            cols[f"{col}_se"] = se.astype(float)
        blocks.append(cols)
    return blocks


def _block_stats(table: Table, values: dict[str, Any]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    """_mean_se of every sweep block's measured values [members, n], by node id: the
    blocks' values of one example count stacked into one call (each row's mean and error
    are reductions over that row alone, so stacking changes no value; a call per block was
    most of assembling an `@ each` table of a few blocks)."""
    groups: dict[tuple, list[str]] = {}
    for block in table.sweeps:
        for _, nid in block.values:
            v = values[nid]
            groups.setdefault((v.shape[1], v.device), []).append(nid)
    out = {}
    for nids in groups.values():
        nids = list(dict.fromkeys(nids))
        parts = [values[nid].double() for nid in nids]
        mean, se, keep = _mean_se(parts[0] if len(parts) == 1 else torch.cat(parts))
        start = 0
        for nid, part in zip(nids, parts):
            stop = start + part.shape[0]
            out[nid] = (mean[start:stop], se[start:stop], keep[start:stop])
            start = stop
    return out


def _member_rows(table: Table) -> np.ndarray | None:
    """The table row of each member of the blocks, block after block; None when the blocks
    are the table's rows in order. (An edge sweep's blocks, one per receiver group, each
    list their members' rows: compiler/ir_edges.EdgeSet.rows.)"""
    rows = [getattr(block.space, "rows", ()) for block in table.sweeps]
    if not any(rows):
        return None
    return np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])


def _in_row_order(df: pd.DataFrame, rows: np.ndarray | None) -> pd.DataFrame:
    if rows is None:
        return df
    return df.iloc[np.argsort(rows, kind="stable")].reset_index(drop=True)


def _joined(blocks: list[dict[str, Any]]) -> pd.DataFrame:
    """One DataFrame of the blocks' columns, block after block. Blocks with the same
    columns (the usual case: one block per layer or site item) are joined as arrays, which
    costs far less than concatenating a DataFrame per block; others as pandas does."""
    if not blocks:
        return pd.DataFrame()
    arrays = joined_arrays(blocks)
    if arrays is not None:
        return pd.DataFrame(arrays)
    return pd.concat([pd.DataFrame(b) for b in blocks], ignore_index=True)


def joined_arrays(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The blocks' columns joined as arrays, when every block has the same columns of the
    same types (else None: pandas joins them)."""
    if not blocks:
        return None
    if len(blocks) == 1:
        return blocks[0]
    names = list(blocks[0])
    if all(list(b) == names for b in blocks) and \
            all(b[c].dtype == blocks[0][c].dtype for b in blocks for c in names):
        return {c: np.concatenate([b[c] for b in blocks]) for c in names}
    return None


def sweep_key_names(table: Table) -> set[str]:
    """The sweep columns the blocks' keys bind."""
    return {c for block in table.sweeps for c in bound_columns(block.space)}


def sweep_examples(table: Table, values: dict[str, Any]) -> pd.DataFrame:
    """The long form of the sweep blocks: one record per (member, example), raw values."""
    frames = []
    for block in table.sweeps:
        if not block.values:
            continue
        first = values[block.values[0][1]]
        m, n = first.shape
        cols: dict[str, Any] = {c: np.repeat(a, n) for c, a in key_columns(block.space).items()}
        cols["example"] = np.tile(np.arange(n), m)
        for col, nid in block.values:
            cols[col] = values[nid].float().reshape(-1).numpy().astype(float)
        frames.append(pd.DataFrame(cols))
    if not frames:
        return pd.DataFrame()
    rows = _member_rows(table)
    if rows is not None:  # one record per (member, example): members in row order
        n = len(frames[0]) // max(table.sweeps[0].count, 1)
        rows = np.repeat(rows, n)
    return _in_row_order(pd.concat(frames, ignore_index=True), rows)
