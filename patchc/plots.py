"""Plots of result tables: a heatmap for a table swept over two variables (layer x head,
layer x pos), a line or bar chart for one variable. Diverging colormap centred at 0, so the
sign of an effect reads at a glance; labelled axes; one PNG per measured column.

`patchc run --out DIR` draws them next to the CSVs; `patchc plot DIR` redraws from the CSVs
and manifest.json alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or on CI
    import matplotlib.pyplot as plt

    return plt


def _limit(values) -> float:
    finite = [abs(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(finite) if finite and max(finite) > 0 else 1.0


def plot_table(name: str, df: pd.DataFrame, keys: list[str], out_dir: Path) -> list[Path]:
    """Draw every measured column of one table; returns the PNG paths written."""
    plt = _pyplot()
    measured = [c for c in df.columns if c not in keys and c not in ("n",)]
    written: list[Path] = []
    for col in measured:
        if not pd.api.types.is_numeric_dtype(df[col]) or df.empty:
            continue
        fig = _draw(plt, name, df, keys, col)
        if fig is None:
            continue
        suffix = "" if len(measured) == 1 else "_" + "".join(
            ch if ch.isalnum() or ch in "_-" else "_" for ch in col)
        path = out_dir / f"{name}{suffix}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _draw(plt, name: str, df: pd.DataFrame, keys: list[str], col: str):
    title = f"{name}: {col}"
    if len(keys) == 2:
        rows, cols = keys
        grid = df.pivot_table(index=rows, columns=cols, values=col, aggfunc="mean",
                              sort=True)
        lim = _limit(grid.to_numpy().ravel().tolist())
        width = max(4.0, min(16.0, 0.45 * grid.shape[1] + 2.5))
        height = max(3.0, min(12.0, 0.4 * grid.shape[0] + 1.5))
        fig, ax = plt.subplots(figsize=(width, height))
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu_r", vmin=-lim, vmax=lim,
                       aspect="auto", interpolation="nearest")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns],
                      rotation=90 if grid.shape[1] > 12 else 0)
        ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        fig.colorbar(im, ax=ax, label=col)
        ax.set_title(title)
        return fig
    if len(keys) == 1:
        (key,) = keys
        data = df.sort_values(key) if pd.api.types.is_numeric_dtype(df[key]) else df
        values = data[col].astype(float).tolist()
        labels = [str(v) for v in data[key]]
        fig, ax = plt.subplots(figsize=(max(4.0, min(14.0, 0.35 * len(values) + 2)), 3.5))
        if pd.api.types.is_numeric_dtype(df[key]) and len(values) > 12:
            ax.plot(data[key], values, marker="o", color="#2166ac")
        else:
            colors = ["#b2182b" if v < 0 else "#2166ac" for v in values]
            ax.bar(labels, values, color=colors)
            ax.tick_params(axis="x", rotation=90 if len(values) > 12 else 0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel(key)
        ax.set_ylabel(col)
        ax.set_title(title)
        return fig
    if not keys and len(df) >= 1:
        fig, ax = plt.subplots(figsize=(3.5, 3.5))
        v = float(df[col].iloc[0])
        ax.bar([col], [v], color="#b2182b" if v < 0 else "#2166ac")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel(col)
        ax.set_title(title)
        return fig
    return None  # three or more sweep variables: no single picture; the CSV has it all


def plot_dir(out_dir: str | Path) -> list[Path]:
    """Redraw every table of a result folder from its CSVs and manifest.json."""
    from patchc.compiler.errors import PatchcError

    d = Path(out_dir)
    manifest_path = d / "manifest.json"
    if not manifest_path.is_file():
        raise PatchcError("E601", f"{d} has no manifest.json (is it a `patchc run --out` "
                          "folder?)")
    manifest = json.loads(manifest_path.read_text("utf-8"))
    written: list[Path] = []
    for name, info in manifest.get("tables", {}).items():
        csv = d / f"{name}.csv"
        if not csv.is_file():
            raise PatchcError("E602", f"{csv} is missing")
        written += plot_table(name, pd.read_csv(csv), list(info.get("keys", [])), d)
    return written
