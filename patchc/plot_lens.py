"""The figure of a `lens` table: each measured column against the layer (a line with
standard-error bars; one line per site item when the statement lists several), or, for a
lens swept over positions (`@ each`) or heads (`L*.H*.out`), a layer x position (x head)
heatmap; a position axis carries the prompts' tokens when they line up (one length, a `*`
where they differ), else position numbers. A normalized column's baselines go in the title.
Sequential colours for probabilities and ranks, diverging ones (centred at 0) otherwise.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from patchc.plot_style import (baseline_label, limits, new_figure, site_name, text, token_text,
                               wrap)

SEQUENTIAL = ("prob", "rank", "==", "!=", "<", ">")


def _title(head: str, col: str, baselines: dict, width: float) -> str:
    """The title wrapped to a figure `width` inches wide; a normalized column's baselines on
    a line of their own (an axis label that long would run past the figure)."""
    b = baselines.get(col)
    lines = wrap(head, max(30, int(width * 10.5)))  # ~10.5 characters an inch at `medium`
    if b:
        lines.append(f"{col} normalized: {baseline_label(b)}")
    return text("\n".join(lines))


def lens_figures(name: str, df: pd.DataFrame, keys: list[str],
                 tokens: list[str] | None = None, baselines: dict | None = None,
                 positions: dict | None = None, scales: dict[str, str] | None = None
                 ) -> list[tuple[str, str, object]]:
    """(measured column, file-name suffix, Figure) for each measured column of a lens table.

    `tokens` are example 0's; `positions` is the manifest's `plot.positions`, present only
    when the run's prompts line up (one length; a `*` token varies across prompts). When a
    caller passes `positions`, a position axis carries tokens only where it has them.
    A one-row table with no sweep column (`lens embed`) is a single number: no figure, as
    for any one-row table. `scales`: each column's colour scale from the manifest
    (`plot.columns.COL.scale`, drawn by plot_style.limits: a log-probability or a logit,
    `level`, is one-sided)."""
    if len(df) == 1 and not keys:
        return []
    baselines = baselines or {}
    if positions is not None or tokens is None:
        tokens = (positions or {}).get("tokens") or []
    tokens = [text(token_text(t)) for t in tokens]  # `$` is not mathtext
    df = _int_keys(df, keys)
    measured = [c for c in df.columns if c not in keys and not c.endswith("_se")
                and pd.api.types.is_numeric_dtype(df[c])]
    out = []
    for col in measured:
        try:
            if "layer" in keys and ("pos" in keys or "head" in keys):
                across = "pos" if "pos" in keys else "head"
                fig = _heatmap(name, df, col, across, tokens, baselines,
                               (scales or {}).get(col))
            else:
                fig = _lines(name, df, keys, col, baselines)
        except Exception as e:  # one figure that cannot be drawn must not cost the others
            print(f"patchc: warning: no figure for {name}.{col}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            continue
        suffix = "" if len(measured) == 1 else "_" + "".join(
            ch if ch.isalnum() or ch in "_-" else "_" for ch in col)
        out.append((col, suffix, fig))
    return out


def plot_lens(name: str, df: pd.DataFrame, keys: list[str], out_dir: Path,
              tokens: list[str] | None = None, baselines: dict | None = None,
              positions: dict | None = None, scales: dict[str, str] | None = None
              ) -> list[Path]:
    """Write NAME[_col].png for each measured column of a lens table."""
    written = []
    for _, suffix, fig in lens_figures(name, df, keys, tokens, baselines, positions, scales):
        path = out_dir / f"{name}{suffix}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    return written


def _lines(name: str, df: pd.DataFrame, keys: list[str], col: str, baselines: dict):
    fig = new_figure(6.5, 3.8)
    ax = fig.subplots()
    groups = [("", df)] if "site" not in keys else list(df.groupby("site", sort=False))
    # A one-row site without a layer (`embed`, a dictionary's latent or error term) stands
    # left of layer 0, named on its tick; all of them in table order.
    unlayered = [str(label) for label, part in groups if len(part) == 1 and
                 ("layer" not in part or part["layer"].isna().all())]
    # A sweep over latents (`s1[*]`, `s1[$i]`) has its own column in place of `layer`.
    sweep = next((k for k in keys if k not in ("site", "layer")), None)
    names: dict[int, str] = {}
    xs: set[int] = set()
    x_name = "layer"
    # hundreds of latents: small points and bare error bars (caps and markers hid the data)
    dense = len(df) > 60
    for label, part in groups:
        if "layer" in part and part["layer"].notna().all():
            x = part["layer"]
        elif str(label) in unlayered:
            at = unlayered.index(str(label)) - len(unlayered)
            x, names[at] = pd.Series([at]), _tick(str(label))
        elif sweep is not None and part[sweep].notna().all():
            x, x_name = part[sweep], sweep
        else:
            x = pd.Series(range(len(part)))
        se = part.get(f"{col}_se")
        ax.errorbar(x.tolist(), part[col].astype(float).tolist(),
                    yerr=None if se is None else se.fillna(0).tolist(),
                    marker="." if dense else "o", markersize=3 if dense else 6,
                    capsize=0 if dense else 3, elinewidth=0.5 if dense else None,
                    linewidth=0.8 if dense else None,
                    label=text(site_name(label)) if str(label) else None)
        xs.update(int(v) for v in x)
    if "site" in keys:
        ax.legend(fontsize=8)
    # Layers are whole numbers: a tick at each (thinned when many), never 0.5; a long sweep
    # of latents gets matplotlib's round numbers (every k-th of 512 ran together).
    if len(xs) > 40 and not names:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    else:
        ticks = sorted(xs)[::max(1, math.ceil(len(xs) / 20))]
        ax.set_xticks(ticks, [text(names.get(t, str(t))) for t in ticks])
    if len(xs) == len(names):  # no layer at all: the axis names sites
        x_name = "site"
    ax.set_xlabel(x_name)
    ax.set_ylabel(text(col))
    ax.set_title(_title(f"{name}: logit lens, {col} decoded at each {x_name} (mean ± s.e.)", col,
                        baselines, fig.get_figwidth()), fontsize="medium")
    ax.grid(alpha=0.3)
    return fig


def _tick(site: str) -> str:
    """A one-row site's tick label: `embed`, `s1[3]`, `s1.err` (`@ POS` dropped)."""
    return site.split(" @")[0]


def _int_keys(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Numeric sweep columns as nullable integers: a CSV read back gives floats (and NaN for
    an `embed` row) where the table had ints."""
    df = df.copy()
    for k in keys:
        if k in df and pd.api.types.is_numeric_dtype(df[k]):
            vals = df[k].dropna()
            if (vals == vals.round()).all():
                df[k] = df[k].astype("Int64")
    return df


def _heatmap(name: str, df: pd.DataFrame, col: str, across: str, tokens: list[str],
             baselines: dict, scale: str | None = None):
    # `embed` (no layer) is the row before layer 0; a row at no position/head has no cell.
    df = df.assign(layer=df["layer"].fillna(-1)).dropna(subset=[across])
    grid = df.pivot_table(index="layer", columns=across, values=col, aggfunc="mean")
    values = grid.to_numpy(dtype=float)
    finite = [abs(v) for v in values.flat if math.isfinite(v)]
    if scale is not None:  # the metric's own scale, as every other figure draws it
        _, lo, hi, cmap = limits(scale, values.flat)
        kw: dict = dict(cmap=cmap, vmin=lo, vmax=hi)
    else:  # (a folder without the manifest's scales: guessed from the name and the values)
        # Probabilities, ranks, accuracies: one-sided; centred at 0 a colormap wastes half.
        sequential = any(s in col for s in SEQUENTIAL) or all(
            0 <= v <= 1 for v in values.flat if math.isfinite(v))
        lim = max(finite) if finite and max(finite) > 0 else 1.0
        kw = dict(cmap="viridis") if sequential else dict(cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig = new_figure(max(5.0, min(16.0, 0.45 * grid.shape[1] + 3)),
                     max(3.0, min(10.0, 0.4 * grid.shape[0] + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", interpolation="nearest", **kw)
    # Tokens only when the prompts line up (`positions`) and every position has one;
    # otherwise numbers for all, and each cell is the mean over the prompts that have it.
    tokened = across == "pos" and bool(tokens) and all(0 <= int(p) < len(tokens)
                                                       for p in grid.columns)
    labels = ([tokens[int(p)] for p in grid.columns] if tokened
              else [str(int(p)) if float(p).is_integer() else str(p) for p in grid.columns])
    step = max(1, math.ceil(len(labels) / 40))
    ax.set_xticks(range(0, len(labels), step), labels[::step],
                  rotation=90 if across == "pos" else 0)
    ax.set_yticks(range(grid.shape[0]), ["embed" if v == -1 else str(v) for v in grid.index])
    varies = tokened and any(t.endswith("*") for t in labels)
    ax.set_xlabel("head" if across != "pos" else "position" if not tokened else
                  "position (token" + ("; * varies across prompts)" if varies else ")"))
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label=text(col))
    what = "position" if across == "pos" else "head"
    head = f"{name}: logit lens, {col} by layer and {what}"
    if across == "pos" and not tokened:
        head += (" (positions numbered: the prompts' tokens differ; mean over prompts that"
                 " have the position)")
    ax.set_title(_title(head, col, baselines, fig.get_figwidth()), fontsize="medium")
    return fig


def lens_scales(plot: dict | None) -> dict[str, str]:
    """Each column's colour scale from a manifest table's `plot` entry."""
    return {c: i.get("scale") for c, i in ((plot or {}).get("columns") or {}).items()
            if isinstance(i, dict) and i.get("scale")}
