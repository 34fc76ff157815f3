"""The charts that are not heatmaps: bars over one index variable, lines against a numeric
sweep (steering coefficients, scale factors), the estimate-vs-exact scatter of `compare`,
and the small annotated table of a one-row result (drawn only on request, see plots.py).

Error bars come from a `<column>_se` column (a standard error) when the table has one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from patchc import plot_style as S

BAR = "#4c72b0"
POSITIVE, NEGATIVE = "#b2182b", "#2166ac"  # the ends of RdBu_r


def _se(df: pd.DataFrame, col: str) -> np.ndarray | None:
    se = df.get(f"{col}_se")
    if se is None or not pd.api.types.is_numeric_dtype(se):
        return None
    return np.nan_to_num(se.to_numpy(dtype=float), nan=0.0)


def _start(cinfo: dict[str, Any], scale: str) -> float:
    """Where a bar starts: a raw measure's no-effect value (its target run unpatched, when
    known), else 0; a bar from 0 to 3.2 +- 0.1 would hide what the operation changed."""
    mid = S.centre(scale, cinfo)
    return mid if mid is not None and "centre" in cinfo else 0.0


def reference_lines(ax, cinfo: dict[str, Any], scale: str, horizontal: bool = True) -> None:
    """0 for a signed quantity; for a normalized one also 1 (the other baseline); for a raw
    one centred on its target run's unpatched value, that value (dotted)."""
    line = ax.axhline if horizontal else ax.axvline
    if scale in ("signed", "correlation", "ratio"):
        line(0, color="black", linewidth=0.8)
    mid = S.centre(scale, cinfo)
    if mid not in (None, 0.0, 1.0):
        line(mid, color="grey", linewidth=0.8, linestyle=":")
    if "one" in cinfo or "ratio_to" in cinfo:
        line(1, color="grey", linewidth=0.8, linestyle=":")


def bars(ax, df: pd.DataFrame, key: str, col: str, info: dict[str, Any], scale: str,
         horizontal: bool = False) -> None:
    """One bar per value of `key` (an index: layer, head, position, site), in table order
    (numeric keys sorted); `horizontal`: the bars run across, the first on top, for names
    too long to stand under a bar (`L0.H3.out -> L0.mlp.in @ last`)."""
    data = df.sort_values(key) if pd.api.types.is_numeric_dtype(df[key]) else df
    values = data[col].to_numpy(dtype=float)
    labels, axis_title = S.category_labels(key, data[key].tolist(), info)
    cinfo = info.get("columns", {}).get(col, {})
    mid = S.centre(scale, cinfo)  # diverging: colour by the side of the centre a bar ends on
    colors = [BAR if mid is None else NEGATIVE if v < mid else POSITIVE for v in values]
    x = np.arange(len(values))
    se = _se(data, col)
    start = _start(cinfo, scale)  # a bar runs from "no effect" to its value
    error_kw = {"elinewidth": 0.8, "capsize": 2 if len(values) <= 40 else 0}
    if horizontal:
        ax.barh(x, np.nan_to_num(values - start, nan=0.0), left=start, color=colors, xerr=se,
                error_kw=error_kw)
        reference_lines(ax, cinfo, scale, horizontal=False)
        ax.set_yticks(x, [S.text(label) for label in labels])
        ax.set_ylim(len(values) - 0.4, -0.6)
        ax.set_ylabel(S.text(axis_title))
        ax.set_xlabel(S.text(S.value_label(col, cinfo)))
        return
    ax.bar(x, np.nan_to_num(values - start, nan=0.0), bottom=start, color=colors, yerr=se,
           error_kw=error_kw)
    reference_lines(ax, cinfo, scale)
    S.set_ticks(ax, "x", labels)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set_xlabel(S.text(axis_title))
    ax.set_ylabel(S.text(S.value_label(col, cinfo)))


def grouped_bars(ax, df: pd.DataFrame, key: str, group: str, col: str, info: dict[str, Any],
                 scale: str) -> None:
    """Bars over `key` with one colour per value of `group` (the site items of one
    operation: `embed`, `L*.attn.out`, `L*.mlp.out` side by side per layer). A site item
    without that index (`embed` has no layer) gets its own category, `-`, first."""
    keys = df[key].drop_duplicates().tolist()
    present = [k for k in keys if not (isinstance(k, float) and math.isnan(k))]
    present = sorted(present) if pd.api.types.is_numeric_dtype(df[key]) else present
    cats = (["-"] if len(present) < len(keys) else []) + present
    labels, axis_title = S.category_labels(key, present, info)
    labels = (["-"] if cats and cats[0] == "-" else []) + labels
    groups = list(dict.fromkeys(df[group]))
    width = 0.8 / len(groups)
    cinfo = info.get("columns", {}).get(col, {})
    start = _start(cinfo, scale)
    for i, g in enumerate(groups):
        part = df[df[group] == g]
        x, y, err = [], [], []
        se = _se(part, col)
        for j, (k, v) in enumerate(zip(part[key], part[col])):
            nan_key = isinstance(k, float) and math.isnan(k)
            x.append(cats.index("-" if nan_key else k) - 0.4 + width * (i + 0.5))
            y.append(float(v) - start if math.isfinite(float(v)) else 0.0)
            err.append(se[j] if se is not None else 0.0)
        ax.bar(x, y, width=width * 0.95, bottom=start, color=f"C{i % 10}",
               label=S.text(S.site_name(g)), yerr=err if se is not None else None,
               error_kw={"elinewidth": 0.8})
    reference_lines(ax, cinfo, scale)
    S.set_ticks(ax, "x", labels)
    ax.set_xlim(-0.6, len(cats) - 0.4)
    ax.set_xlabel(S.text(axis_title))
    ax.set_ylabel(S.text(S.value_label(col, cinfo)))
    legend_below(ax)


def sweep_lines(ax, df: pd.DataFrame, x_key: str, group_keys: list[str], col: str,
                info: dict[str, Any], scale: str) -> None:
    """The measure against a numeric sweep value, one line per combination of the other
    sweep columns (a legend names each)."""
    groups = (list(df.groupby(group_keys, sort=False)) if group_keys else [((), df)])
    for i, (gkey, part) in enumerate(groups):
        part = part.sort_values(x_key)
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        # a site item names itself; other columns as `layer=2`
        label = ", ".join(S.site_name(v) if k == "site" else f"{k}={v}"
                          for k, v in zip(group_keys, gkey)) or None
        ax.errorbar(part[x_key].to_numpy(dtype=float), part[col].to_numpy(dtype=float),
                    yerr=_se(part, col), marker="o", markersize=4, capsize=3,
                    color=f"C{i % 10}", label=S.text(label) if label else None)
    ys = df[col].to_numpy(dtype=float)
    ys = ys[np.isfinite(ys)]
    if scale == "probability" and ys.size and 0 <= ys.min() and ys.max() <= 1 \
            and ys.max() - ys.min() < 0.1:
        # nearly flat (every steered prompt positive: 1, 1, 1): on matplotlib's own 0.96 to
        # 1.04 it looked like a measured change; a fraction's whole range says it is not
        ax.set_ylim(-0.05, 1.05)
    xs = sorted(df[x_key].unique().tolist())
    if len(xs) <= 12:
        ax.set_xticks(xs, [S._label(v) for v in xs])
    cinfo = info.get("columns", {}).get(col, {})
    reference_lines(ax, cinfo, scale)
    target = (cinfo.get("unpatched") or {}).get("target")
    if target is not None and S.centre(scale, cinfo) is None:
        # a sequential measure (a log-probability) has no centre line: the unpatched run is
        # where a coefficient's effect starts from, so it gets a dotted line of its own
        ax.axhline(target["value"], color="grey", linewidth=0.8, linestyle=":",
                   label=S.text(f"unpatched {target['run']}"))
    ax.set_xlabel(S.text(S.key_title(x_key, info)))
    ax.set_ylabel(S.text(S.value_label(col, cinfo)))
    if ax.get_legend_handles_labels()[1]:  # the groups, the unpatched line
        legend_below(ax)


def legend_below(ax) -> None:
    """The legend of a one-axes figure, under it: inside, `best` still sat on bars (dla's
    three site kinds per layer) or on lines, and the figure has room to grow downwards."""
    handles, labels = ax.get_legend_handles_labels()
    ax.figure.legend(handles, labels, loc="outside lower center", fontsize="small",
                     frameon=False, ncols=1 if max(map(len, labels), default=0) > 30 else 2)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(((x - x.mean()) * (y - y.mean())).mean() / (x.std() * y.std()))


def scatter(fig, pairs: pd.DataFrame, info: dict[str, Any], name: str) -> None:
    """`compare`: each site's estimate against the exact swap, one panel per site kind (and
    measure), one colour per method with its Pearson r in the legend; the diagonal is a
    perfect estimate."""
    facet = ["site_kind"] + (["metric"] if "metric" in pairs.columns else [])
    panels = list(pairs.groupby(facet, sort=False))
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    methods = list(dict.fromkeys(pairs["method"]))
    measure = (info.get("measures") or [None])[0]
    for ax, (fkey, part) in zip(axes, panels):
        fkey = fkey if isinstance(fkey, tuple) else (fkey,)
        exact_all = part["exact"].to_numpy(dtype=float)
        for i, method in enumerate(methods):
            rows = part[part["method"] == method]
            x, y = rows["exact"].to_numpy(dtype=float), rows["estimate"].to_numpy(dtype=float)
            r = pearson(x, y)
            ax.scatter(x, y, s=14, alpha=0.8, color=f"C{i % 10}",
                       label=S.text(f"{method} (r = {r:.2f})" if math.isfinite(r)
                                    else f"{method} (r undefined)"))
        both = np.concatenate([exact_all, part["estimate"].to_numpy(dtype=float)])
        both = both[np.isfinite(both)]
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        pad = 0.05 * (hi - lo or 1.0)
        ax.axline((lo, lo), slope=1, color="grey", linewidth=0.8, linestyle="--")
        ax.update_datalim([(lo - pad, lo - pad), (hi + pad, hi + pad)])  # same span on both
        ax.margins(0)
        ax.autoscale_view()
        # One unit is as long on both axes, by widening a limit rather than shrinking the
        # box: a shrunk box left constrained layout too little room for the x label.
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(S.text(" / ".join(str(k) for k in fkey)))
        col = fkey[-1] if len(fkey) > 1 else measure
        label = S.value_label(col, info.get("columns", {}).get(col, {})) if col else ""
        ax.set_xlabel(S.text(f"exact swap: {label}" if label else "exact swap"))
        ax.set_ylabel("estimate")
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    several = "metric" in pairs.columns  # each panel names its own measure
    fig.suptitle(S.title(info, None if several else measure, name, fig.get_figwidth()))


def table_figure(fig, df: pd.DataFrame, keys: list[str], columns: list[str],
                 info: dict[str, Any], name: str) -> None:
    """A one-row table as a small annotated table: each column's value (± its standard
    error when the table has one), the sweep columns first."""
    row = df.iloc[0]
    labels, cells = [], []
    for c in [k for k in keys if k in df.columns] + columns:
        v = row[c]
        cell = S._num(v) if isinstance(v, (int, float, np.floating)) else str(v)
        se = row.get(f"{c}_se") if c in columns else None
        if se is not None and isinstance(se, (int, float, np.floating)) and math.isfinite(se):
            cell += f" ± {float(se):.2g}"
        labels.append(S.text(c))
        cells.append(S.text(cell))
    ax = fig.subplots()
    ax.axis("off")
    ax.table(cellText=[cells], colLabels=labels, loc="center", cellLoc="center")
    notes = [S.value_label(c, info.get("columns", {}).get(c, {})).replace("\n", " ")
             for c in columns if info.get("columns", {}).get(c, {}).get("baselines")]
    ax.set_title(S.text("\n".join([info.get("title") or name, *notes])), fontsize="medium")
