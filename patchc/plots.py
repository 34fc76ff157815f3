"""Plots of result tables: a heatmap for a table swept over two variables (layer x head,
layer x pos), a line or bar chart for one variable. Diverging colormap centred at 0, so the
sign of an effect reads at a glance; labelled axes; one PNG per measured column.

`patchc run --out DIR` draws them next to the CSVs; `patchc plot DIR` redraws from the CSVs
and manifest.json alone.
"""

from __future__ import annotations

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
    # `<col>_se` columns are the error bars of `<col>`, not plots of their own.
    measured = [c for c in df.columns if c not in keys and c not in ("n",)
                and not (c.endswith("_se") and c[:-3] in df.columns)]
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
    """One figure for one measured column: a heatmap (two sweep variables), bars or a line
    (one), a single bar (none). A `site` column (several site items in one operation) gets
    one panel per site item, each drawn over the remaining variables."""
    if "site" in keys and len(keys) > 1:
        rest = [k for k in keys if k != "site"]
        if len(rest) > 2:
            return None
        sites = list(dict.fromkeys(df["site"]))
        w, h = _size(df[df["site"] == sites[0]], rest)
        fig, axes = plt.subplots(len(sites), 1, figsize=(w, h * len(sites)), squeeze=False)
        lim = _limit(df[col].tolist())
        for ax, site in zip(axes[:, 0], sites):
            _panel(fig, ax, df[df["site"] == site], rest, col, lim, f"{name}: {col} ({site})")
        fig.tight_layout()
        return fig
    if len(keys) > 2:
        return None  # three or more sweep variables: no single picture; the CSV has it all
    fig, ax = plt.subplots(figsize=_size(df, keys))
    _panel(fig, ax, df, keys, col, _limit(df[col].tolist()), f"{name}: {col}")
    return fig


def _size(df: pd.DataFrame, keys: list[str]) -> tuple[float, float]:
    if len(keys) == 2:
        n_cols, n_rows = df[keys[1]].nunique(), df[keys[0]].nunique()
        return (max(4.0, min(16.0, 0.45 * n_cols + 2.5)), max(3.0, min(12.0, 0.4 * n_rows + 1.5)))
    if len(keys) == 1:
        return max(4.0, min(14.0, 0.35 * len(df) + 2)), 3.5
    return 3.5, 3.5


def _panel(fig, ax, df: pd.DataFrame, keys: list[str], col: str, lim: float, title: str
           ) -> None:
    if len(keys) == 2:
        rows, cols = keys
        grid = df.pivot_table(index=rows, columns=cols, values=col, aggfunc="mean",
                              sort=True)
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu_r", vmin=-lim, vmax=lim,
                       aspect="auto", interpolation="nearest")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns],
                      rotation=90 if grid.shape[1] > 12 else 0)
        ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        fig.colorbar(im, ax=ax, label=col)
    elif len(keys) == 1:
        (key,) = keys
        data = df.sort_values(key) if pd.api.types.is_numeric_dtype(df[key]) else df
        values = data[col].astype(float).tolist()
        se = data[f"{col}_se"].fillna(0).tolist() if f"{col}_se" in data else None
        if pd.api.types.is_numeric_dtype(df[key]) and len(values) > 12:
            ax.errorbar(data[key], values, yerr=se, marker="o", color="#2166ac", capsize=2)
        else:
            colors = ["#b2182b" if v < 0 else "#2166ac" for v in values]
            ax.bar([str(v) for v in data[key]], values, color=colors, yerr=se, capsize=2)
            ax.tick_params(axis="x", rotation=90 if len(values) > 12 else 0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel(key)
        ax.set_ylabel(col)
    else:
        v = float(df[col].iloc[0])
        ax.bar([col], [v], color="#b2182b" if v < 0 else "#2166ac")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel(col)
    ax.set_title(title)


def plot_dir(out_dir: str | Path) -> list[Path]:
    """Redraw every table of a result folder from its CSVs and manifest.json."""
    from patchc.compiler.errors import PatchcError
    from patchc.manifest import read_manifest

    d = Path(out_dir)
    manifest = read_manifest(d)
    written: list[Path] = []
    for name, info in manifest.get("tables", {}).items():
        csv = d / f"{name}.csv"
        if not csv.is_file():
            raise PatchcError("E602", f"{csv} is missing")
        op = info.get("op")
        if op == "measure":  # one row, no sweep: the table says it all
            continue
        if op == "read":  # the statements of §11 draw their own figures
            from patchc.plot_attention import plot_read_dir

            written += plot_read_dir(name, d)
            continue
        if op == "lens":
            from patchc.plot_lens import plot_lens

            written += plot_lens(name, pd.read_csv(csv), list(info.get("keys", [])), d,
                                 info.get("tokens"), info.get("baselines"))
            continue
        written += plot_table(name, pd.read_csv(csv), list(info.get("keys", [])), d)
    return written
