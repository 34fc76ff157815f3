"""Plots of result tables, one figure per measured column, chosen by the table's shape:

  one sweep variable         bars (an index: layer, head, position, site), with error bars
                             from a `<column>_se` column when there is one
  a numeric sweep            lines against the value (the `scale` of `steer`/`scale`)
  two variables              a heatmap (positions always across, labelled with tokens)
  a site column + one more   grouped bars: one colour per site item of the operation (past
                             40 values of the other: a heatmap, a row per site item)
  site items of one row each bars, one per item
  three variables            one heatmap panel per value of the variable with the fewest
                             values (the site item when there is one), on one colour scale
  `compare`                  estimate against exact swap per site, one panel per site kind,
                             Pearson r per method in the legend (plot_charts.scatter)
  one row                    no PNG: the value is in the printed table and the CSV, and a
                             lone bar says nothing more. `Results.plot(name)` in a notebook
                             draws it as a small annotated table instead.

Colour scales follow what a column measures (plot_style.py: diverging at "no effect" for
signed effects, sequential for probabilities and ranks); titles name the operation, what a
normalized column's 0 and 1 are, and a raw column's unpatched values (its target run's is
the no-effect value a diverging scale is centred on); a colorbar's label is wrapped to its
length. The run-time facts a plot needs beyond the CSV (title, scales, baselines, unpatched
values, tokens) are in the manifest (plotinfo.py), so `patchc plot DIR` redraws the same
figures. Figures are drawn on Agg without pyplot.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from patchc import plot_charts as C
from patchc import plot_style as S


def measured_columns(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """The numeric columns a table measures: not a sweep column, not `n`, not a standard
    error (`<col>_se`) of another column."""
    return [c for c in df.columns
            if c not in keys and c != "n" and pd.api.types.is_numeric_dtype(df[c])
            and not (c.endswith("_se") and c[:-3] in df.columns)]


def figures(name: str, df: pd.DataFrame, keys: list[str], info: dict[str, Any] | None = None,
            pairs: pd.DataFrame | None = None) -> list[tuple[str, Any]]:
    """(file-name suffix, Figure) for every plot of one table; none for a one-row table."""
    info = info or {}
    if pairs is not None and not pairs.empty:
        fig = S.new_figure(*_scatter_size(pairs))
        C.scatter(fig, pairs, info, name)
        return [("", fig)]
    if df.empty or len(df) == 1:
        return []
    cols = measured_columns(df, keys)
    out = []
    for col in cols:
        # inf cells are left blank like NaN ones (matplotlib warns on infinite values)
        finite = df[col].astype(float).map(math.isfinite)
        fig = draw_column(name, df.assign(**{col: df[col].where(finite)}), keys, col, info)
        if fig is not None:
            suffix = "" if len(cols) == 1 else "_" + "".join(
                ch if ch.isalnum() or ch in "_-" else "_" for ch in col)
            out.append((suffix, fig))
    return out


def figure(name: str, df: pd.DataFrame, keys: list[str], info: dict[str, Any] | None = None,
           pairs: pd.DataFrame | None = None, column: str | None = None):
    """One Figure for a notebook: the plot of `column` (default: the first measured one);
    a one-row table as a small annotated table."""
    info = info or {}
    cols = measured_columns(df, keys)
    if column is not None and column not in cols:
        raise KeyError(f"table {name!r} has no measured column {column!r}; it has "
                       f"{', '.join(cols) or 'none'}")
    if pairs is not None and not pairs.empty and column is None:
        return figures(name, df, keys, info, pairs)[0][1]
    fig = None if len(df) <= 1 else draw_column(name, df, keys, column or cols[0], info)
    if fig is None:
        fig = S.new_figure(max(4.0, 1.6 * (len(cols) + len(keys))), 1.8)
        C.table_figure(fig, df, keys, [column] if column else cols, info, name)
    return fig


def draw_column(name: str, df: pd.DataFrame, keys: list[str], col: str,
                info: dict[str, Any]):
    """One figure for one measured column, or None when the table has more than three
    varying sweep columns (the CSV has it all; no single picture does)."""
    fig = _draw_column(name, df, keys, col, info)
    if fig is not None:
        S.fit_colorbar_labels(fig)  # `centred on the unpatched ...` beside a short colorbar
    return fig


def _draw_column(name: str, df: pd.DataFrame, keys: list[str], col: str,
                 info: dict[str, Any]):
    vary = [k for k in keys if k in df.columns and df[k].nunique(dropna=False) > 1]
    cinfo = _cinfo(info, col)
    scale, lo, hi, cmap = S.limits(cinfo.get("scale", "signed"), df[col].tolist(),
                                   S.centre("signed", cinfo))
    if scale == "signed" and "uncentred" in cinfo:
        # no-effect value unknown: a heatmap's colours span the data (around 0 a raw
        # measure's cells would all be one colour); bars and lines keep their 0 line
        _, lo, hi, cmap = S.limits("level", df[col].tolist())
    numeric = S.numeric_keys(vary, info)
    if numeric:
        fig = S.new_figure(6.0, 4.0)
        ax = fig.subplots()
        C.sweep_lines(ax, df, numeric[0], [k for k in vary if k != numeric[0]], col, info,
                      scale)
        ax.set_title(S.title(info, col, name, fig.get_figwidth()))
        return fig
    if len(vary) == 1:
        fig = S.new_figure(*_bar_size(df[vary[0]].nunique()))
        ax = fig.subplots()
        C.bars(ax, df, vary[0], col, info, scale)
        ax.set_title(S.title(info, col, name, fig.get_figwidth()))
        return fig
    if "site" in vary and df.groupby("site", dropna=False).size().max() == 1:
        # Each site item is one row (single edges listed one by one): a bar per item, not
        # a heatmap panel of one cell per item; across, when the names are long.
        across = max(len(str(s)) for s in df["site"]) > 12
        fig = S.new_figure(7.0, max(2.5, 0.45 * len(df) + 2.0)) if across else \
            S.new_figure(*_bar_size(len(df)))
        ax = fig.subplots()
        C.bars(ax, df, "site", col, info, scale, horizontal=across)
        ax.set_title(S.title(info, col, name, fig.get_figwidth()))
        return fig
    if len(vary) == 2 and "site" in vary:  # site items side by side, one colour each
        (other,) = [k for k in vary if k != "site"]
        if df[other].nunique() > S.MAX_TICKS:  # too many for bars: a row per site item
            return _site_rows(name, df, other, col, info, (lo, hi, cmap))
        n = df[other].nunique(dropna=False) * max(1, df["site"].nunique() // 2)
        fig = S.new_figure(*_bar_size(n))
        ax = fig.subplots()
        C.grouped_bars(ax, df, other, "site", col, info, scale)
        ax.set_title(S.title(info, col, name, fig.get_figwidth()))
        return fig
    if len(vary) == 2:
        rows, cols = _axes(vary)
        fig = S.new_figure(*_heat_size(df[cols].nunique(), df[rows].nunique()))
        ax = fig.subplots()
        im = _heatmap(ax, df, rows, cols, col, info, (lo, hi, cmap))
        fig.colorbar(im, ax=ax, label=S.text(S.value_label(col, _cinfo(info, col), colorbar=True)))
        ax.set_title(S.title(info, col, name, fig.get_figwidth()))
        return fig
    if len(vary) == 3:
        return _facets(name, df, vary, col, info, (lo, hi, cmap))
    return None


def _cinfo(info: dict[str, Any], col: str) -> dict[str, Any]:
    return info.get("columns", {}).get(col, {})


def _axes(two: list[str]) -> tuple[str, str]:
    """(rows, columns) of a heatmap: positions go across, else the table's order."""
    a, b = two
    return (b, a) if a == "pos" else (a, b)


def _heatmap(ax, df: pd.DataFrame, rows: str, cols: str, col: str, info: dict[str, Any],
             scale: tuple[float, float, str]):
    lo, hi, cmap = scale
    for key in (rows, cols):  # a panel's item without that index (heads beside latents):
        if df[key].isna().all():  # one unnamed row or column, not one named `nan`
            df = df.assign(**{key: ""})
    grid = df.pivot_table(index=rows, columns=cols, values=col, aggfunc="mean", sort=True,
                          dropna=False)
    # An edge table's ends keep the model's order (the table's), not the alphabet's.
    for axis, key in ((0, rows), (1, cols)):
        if key in ("sender", "receiver"):
            grid = grid.reindex(list(dict.fromkeys(df[key])), axis=axis)
    values = grid.to_numpy(dtype=float)
    if np.isnan(values).any():
        # A cell with no value (an edge that does not exist, a `where` that left it out) is
        # hatched: left blank it looked like the centre's near-white, "no effect".
        ax.patch.set_hatch("////")
        ax.patch.set_edgecolor("#c8c8c8")
    im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, aspect="auto",
                   interpolation="nearest")
    xl, xt = S.category_labels(cols, grid.columns.tolist(), info)
    yl, yt = S.category_labels(rows, grid.index.tolist(), info)
    S.set_ticks(ax, "x", xl)
    S.set_ticks(ax, "y", yl)
    ax.set_xlabel(S.text(xt))
    ax.set_ylabel(S.text(yt))
    if values.size <= 64 and values.shape[1] <= 10:  # small grids: print each value
        for (i, j), v in np.ndenumerate(values):
            if math.isfinite(v):
                r, g, b, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, f"{v:.2f}".replace("-0.00", "0.00"), ha="center", va="center",
                        fontsize="x-small", color="white" if dark else "black")
    return im


def _facets(name: str, df: pd.DataFrame, vary: list[str], col: str, info: dict[str, Any],
            scale: tuple[float, float, str]):
    """One heatmap per value of the facet variable, all on the one colour scale."""
    facet = "site" if "site" in vary else min(
        [k for k in vary if k != "pos"] or vary, key=lambda k: df[k].nunique())
    rows, cols = _axes([k for k in vary if k != facet])
    values = list(dict.fromkeys(df[facet]))
    if pd.api.types.is_numeric_dtype(df[facet]):
        values.sort()
    # A site item without these indices (`embed` beside `L*.H*.out`) is one number: it goes
    # in the title, not in a 1x1 panel with `nan` ticks.
    scalars = [v for v in values if facet == "site"
               and df.loc[df[facet] == v, [rows, cols]].isna().all(axis=None)]
    if len(scalars) < len(values):
        values = [v for v in values if v not in scalars]
    else:  # nothing but single values: draw them after all
        scalars = []
    pw, ph = _heat_size(df[cols].nunique(), df[rows].nunique(), margin=1.2)
    ncols = max(1, min(len(values), int(14 // pw)))
    nrows = math.ceil(len(values) / ncols)
    # room for a scalar item's line in the title (`embedding: embed: ld = -0.0155 ± 0.014`)
    fig = S.new_figure(max(pw * ncols + 1.2, 5.0 if scalars else 0.0), ph * nrows + 0.8)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    im = None
    for ax, v in zip(axes, values):
        im = _heatmap(ax, df[df[facet] == v], rows, cols, col, info, scale)
        ax.set_title(S.text(f"{facet} {v}" if facet != "site" else S.site_name(v)))
    for ax in axes[len(values):]:
        ax.set_visible(False)
    # The panels share their axes' meaning: name each axis once for the figure.
    fig.supxlabel(axes[0].get_xlabel(), fontsize="medium")
    fig.supylabel(axes[0].get_ylabel(), fontsize="medium")
    for ax in axes:
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.colorbar(im, ax=axes[:len(values)].tolist(),
                 label=S.text(S.value_label(col, _cinfo(info, col), colorbar=True)))
    chars = max(30, int(fig.get_figwidth() * 9.5))
    notes = [S.text(line) for v in scalars
             for line in S.wrap(_scalar_note(df[df[facet] == v], v, col), chars)]
    fig.suptitle("\n".join([S.title(info, col, name, fig.get_figwidth()), *notes]))
    return fig


def _site_rows(name: str, df: pd.DataFrame, key: str, col: str, info: dict[str, Any],
               scale: tuple[float, float, str]):
    """A heatmap of site items (rows) by a long index (`feature` 0..511): as grouped bars,
    a 1/4-wide bar per item and value, the few latents that matter were lost in 2,000
    slivers. An item without that index (`t0.err` beside `t0[*]`) is a number in the
    title, as in _facets."""
    has = df[key].notna()
    items = list(dict.fromkeys(df.loc[~has, "site"]))
    part = df[has]
    fig = S.new_figure(*_heat_size(part[key].nunique(), part["site"].nunique()))
    ax = fig.subplots()
    im = _heatmap(ax, part, "site", key, col, info, scale)
    fig.colorbar(im, ax=ax, label=S.text(S.value_label(col, _cinfo(info, col), colorbar=True)))
    chars = max(30, int(fig.get_figwidth() * 9.5))
    notes = [S.text(line) for v in items
             for line in S.wrap(_scalar_note(df[df["site"] == v], v, col), chars)]
    ax.set_title("\n".join([S.title(info, col, name, fig.get_figwidth()), *notes]))
    return fig


def _scalar_note(part: pd.DataFrame, item: Any, col: str) -> str:
    """`embedding: embed: ld = -0.0155 ± 0.014`: a site item with no layer or head."""
    v = float(part[col].iloc[0])
    se = part.get(f"{col}_se")
    err = (f" ± {float(se.iloc[0]):.2g}" if se is not None and math.isfinite(float(se.iloc[0]))
           else "")
    return f"{S.site_name(item)}: {col} = {v:.3g}{err}"


def _bar_size(n: int) -> tuple[float, float]:
    return max(4.5, min(16.0, 0.3 * min(n, S.MAX_TICKS) + 2.5)), 3.8


def _heat_size(n_cols: int, n_rows: int, margin: float = 3.0) -> tuple[float, float]:
    """A heatmap's size in inches; `margin` is the room for labels and a colorbar."""
    return (max(1.5 + margin, min(16.0, 0.32 * min(n_cols, S.MAX_TOKEN_TICKS) + margin)),
            max(3.0, min(12.0, 0.32 * min(n_rows, S.MAX_TICKS) + 1.8)))


def _scatter_size(pairs: pd.DataFrame) -> tuple[float, float]:
    facet = ["site_kind"] + (["metric"] if "metric" in pairs.columns else [])
    n = pairs.groupby(facet).ngroups
    ncols = min(n, 3)
    # Square panels (equal aspect) a little taller than wide: the room above and below
    # holds the title and the two-line x label (a square slot clipped the label).
    return 4.2 * ncols + 0.4, 4.4 * math.ceil(n / ncols) + 0.6


def plot_table(name: str, df: pd.DataFrame, keys: list[str], out_dir: Path,
               info: dict[str, Any] | None = None, pairs: pd.DataFrame | None = None
               ) -> list[Path]:
    """Write every plot of one table as NAME[_COLUMN].png; returns the paths written."""
    written = []
    for suffix, fig in figures(name, df, keys, info, pairs):
        path = Path(out_dir) / f"{name}{suffix}.png"
        with warnings.catch_warnings():
            # a title of many lines (a long statement) leaves the constrained layout no
            # room and it steps aside; the tight bounding box below still fits every label
            warnings.filterwarnings("ignore", "constrained_layout not applied")
            fig.savefig(path, dpi=130, bbox_inches="tight", pad_inches=0.1)  # no label cut off
        written.append(path)
    return written


def plot_dir(out_dir: str | Path, failures: list[str] | None = None) -> list[Path]:
    """Redraw every table of a result folder from its CSVs and manifest.json; the tables
    whose figure failed are added to `failures`."""
    from patchc.compiler.errors import PatchcError
    from patchc.manifest import check_file_name, read_manifest

    d = Path(out_dir)
    manifest = read_manifest(d)
    tables = manifest.get("tables", {})
    if not isinstance(tables, dict) or not all(isinstance(i, dict) for i in tables.values()):
        raise PatchcError("E604", f"{d / 'manifest.json'}: `tables` must map names to objects")
    for name in tables:  # names come from a file: never read or write outside the folder
        check_file_name(f"{name}.csv")
    written: list[Path] = []
    for name, info in tables.items():
        csv = d / f"{name}.csv"
        if not csv.is_file():
            raise PatchcError("E602", f"{csv} is missing")
        try:
            written += _plot_one(d, name, info, csv)
        except Exception as e:  # noqa: BLE001 - a figure must never cost the tables
            # The tables and the other figures are the result; a figure that fails (a bug
            # in patchc) is reported and left out.
            print(f"patchc: warning: no figure for table {name}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            if failures is not None:
                failures.append(name)
    return written


def _plot_one(d: Path, name: str, info: dict[str, Any], csv: Path) -> list[Path]:
    """The PNGs of one table of a result folder."""
    op = info.get("op")
    if op == "measure":  # one row, no sweep: the table says it all
        return []
    if op == "read":  # attention patterns, from NAME.safetensors
        from patchc.plot_attention import plot_read_dir

        return plot_read_dir(name, d)
    if op in ("circuit", "evaluate"):
        from patchc.plot_circuit import plot_circuit, plot_curve

        draw = plot_circuit if op == "circuit" else plot_curve
        return draw(name, pd.read_csv(csv), info.get("plot") or {}, d)
    if op == "lens":
        from patchc.plot_lens import lens_scales, plot_lens

        return plot_lens(name, pd.read_csv(csv), list(info.get("keys", [])), d,
                         info.get("tokens"), info.get("baselines"),
                         positions=(info.get("plot") or {}).get("positions") or {},
                         scales=lens_scales(info.get("plot")))
    return plot_table(name, pd.read_csv(csv), list(info.get("keys", [])), d,
                      info.get("plot"), _pairs(d, name))


def _pairs(d: Path, name: str) -> pd.DataFrame | None:
    """A `compare` table's points (NAME.pairs.csv), if the folder has them."""
    path = d / f"{name}.pairs.csv"
    return pd.read_csv(path) if path.is_file() else None
