"""Figures of circuits: each circuit size drawn as a graph, and an evaluation's faithfulness
curve.

The graph is drawn by graphviz `dot` when it is installed (from the DOT of
circuit_graph.to_dot), else laid out here with matplotlib: components placed by layer,
bottom (embed) to top (logits), a layer's heads side by side and its MLP above them; edges
as arrows whose width follows |effect| and whose colour its sign (red raises the metric,
blue lowers it, as in the heatmaps; an effect of exactly 0 grey), solid, dashed or dotted
where they enter a head's q, k or v (solid also into an MLP or the logits). A node circuit
is its components alone, coloured by effect.

The curve is faithfulness against the fraction of the table kept, one line per measured
metric, with cpr and cmd in the legend, the sizes' counts at the points (once, over the
first line) and the lines 0 (empty circuit) and 1 (whole model) for reference. Fractions
spread over decades get a log axis; with an empty circuit (0) among them, one that is linear
from 0 to the smallest other fraction, so that 0 is drawn too.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from patchc import plot_style as S
from patchc.circuit_graph import CircuitGraph, Component, circuit_graph, to_dot

# An edge into a head's query, key or value. Dash patterns scale with the line's width, so
# with round caps a thick `v` edge stays a row of dots and a `k` edge a row of dashes.
STYLES = {"q": "-", "k": (0, (3.0, 2.0)), "v": (0, (0.1, 2.0))}
ZERO = (0.62, 0.62, 0.62, 1.0)  # an effect of exactly 0: neither red nor blue
MAX_DRAWN = 300  # more edges than this make an unreadable picture: the DOT and JSON have them


def draw_graph(g: CircuitGraph, title: str, path: Path) -> bool:
    """Write the circuit's PNG to `path`; False when it has nothing to draw."""
    if not g.nodes or len(g.edges) > MAX_DRAWN:
        return False
    dot = shutil.which("dot")
    if dot is not None:
        done = subprocess.run([dot, "-Tpng", "-Gdpi=130", "-o", str(path)],
                              input=to_dot(g, title), text=True, capture_output=True)
        if done.returncode == 0:
            return True
    fig = layout_figure(g, title)
    fig.savefig(path, dpi=130, bbox_inches="tight", pad_inches=0.1)
    return True


def layout_figure(g: CircuitGraph, title: str):
    """The pure-Python drawing (see the module docstring)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import FancyArrowPatch

    comps = list(g.nodes.values())
    pos = place(comps)
    xs = [x for x, _ in pos.values()]
    n_rows = max(y for _, y in pos.values()) + 1
    width = max(4.5, 1.25 * (max(xs) - min(xs) + 1) + 1.5)
    fig = S.new_figure(width, max(3.0, 1.0 * n_rows + 1.4))
    ax = fig.subplots()
    top = max([abs(v) for v in g.scores.values()] + [abs(e[2]) for e in g.edges] + [1e-30])
    cmap, norm = effect_colormap(), Normalize(-top, top)
    for i, (s, t, score) in enumerate(g.edges):
        (x0, y0), (x1, y1) = pos[s.name], pos[t.name]
        bend = 0.25 if (x0 == x1 and abs(y1 - y0) > 1) else 0.12 * ((i % 3) - 1)
        ax.add_patch(FancyArrowPatch(
            (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10,
            connectionstyle=f"arc3,rad={bend}", shrinkA=14, shrinkB=14,
            lw=0.6 + 4.4 * abs(score) / top, color=cmap(norm(score)) if score else ZERO,
            alpha=0.85, linestyle=STYLES.get(t.qkv or "", "-"), capstyle="round", zorder=1,
            clip_on=False))  # (a curved edge may bow beyond the outer heads)
    used = sorted({t.qkv for _, t, _ in g.edges if t.qkv}, key="qkv".index)
    if used:  # which input of a head an edge enters: its line style
        from matplotlib.lines import Line2D

        ax.legend([Line2D([], [], color="dimgray", ls=STYLES[q], lw=1.6,
                          dash_capstyle="round") for q in used],
                  [f"into a head's {q}" + (" (or an MLP, the logits)" if q == "q" else "")
                   for q in used], loc="upper left",
                  bbox_to_anchor=(1.0, 1.0), fontsize="x-small", frameon=False)
    for c in comps:
        score = g.scores.get(c.name)
        fill = (0.93, 0.93, 0.93, 1) if score is None else cmap(norm(score)) if score else ZERO
        dark = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] < 0.5
        x, y = pos[c.name]
        ax.text(x, y, c.label, ha="center", va="center", fontsize="small", zorder=2,
                color="white" if dark else "black",
                bbox=dict(boxstyle="round,pad=0.35", fc=fill, ec="black", lw=0.8))
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ax.set_ylim(-0.6, n_rows - 0.4)
    ax.set_axis_off()
    ax.set_title(S.text(title), fontsize="medium")
    zero = any(e[2] == 0 for e in g.edges) or any(v == 0 for v in g.scores.values())
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, shrink=0.6,
                 label=S.text(f"effect on {g.metric}" + (" (grey: exactly 0)" if zero else "")))
    return fig


PER_ROW = 6  # components of one level that have no place of their own: at most this many a row


def place(comps: list[Component]) -> dict[str, tuple[float, int]]:
    """(x, row) of each component: one row per level that has a component, bottom to top,
    a head at its index. Components that would share a place (a dictionary's latents, all
    of one level) go side by side in rank order, PER_ROW a row: stacked on one spot, a
    20-node circuit looked like one node."""
    levels: dict[float, list[Component]] = {}
    for c in comps:
        levels.setdefault(c.level, []).append(c)
    pos: dict[str, tuple[float, int]] = {}
    row = 0
    for level in sorted(levels):
        cs = levels[level]
        if len({c.x for c in cs}) == len(cs):
            pos.update({c.name: (c.x, row) for c in cs})
            row += 1
            continue
        centre, n = sum(c.x for c in cs) / len(cs), min(PER_ROW, len(cs))
        for i, c in enumerate(cs):
            pos[c.name] = (centre + i % PER_ROW - (n - 1) / 2, row + i // PER_ROW)
        row += math.ceil(len(cs) / PER_ROW)
    return pos


def effect_colormap():
    """RdBu_r (red positive, as every heatmap and bar chart of patchc) without its palest
    middle: the smallest effect drawn is still visible."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    rdbu = colormaps["RdBu_r"]
    return ListedColormap([rdbu(x) for x in np.r_[np.linspace(0, 0.32, 128),
                                                    np.linspace(0.68, 1, 128)]])


def circuit_title(name: str, g: CircuitGraph, total: int, info: dict[str, Any]) -> str:
    """`circuit c: top 8 of the 16 nodes of heads, by |effect on ld|`."""
    what = "edges" if g.kind == "edges" else "nodes"
    table = str(info.get("title", "")).rsplit(" of ", 1)[-1] or "its table"
    return f"circuit {name}: top {g.size} of the {total} {what} of table {table}, by |effect on " \
        f"{g.metric}|"


def plot_circuit(name: str, df: pd.DataFrame, info: dict[str, Any], out_dir: Path
                 ) -> list[Path]:
    """NAME_K.png for every size K > 0 of a circuit table (at most MAX_DRAWN edges)."""
    metric = info.get("metric") or _first_measure(df)
    cfg = info.get("graph") or {"n_layers": 0, "n_heads": 1}
    written = []
    for size in info.get("sizes", []):
        if size <= 0:
            continue
        g = circuit_graph(df, size, metric, cfg["n_layers"], cfg["n_heads"],
                          info.get("hosts"))
        path = Path(out_dir) / f"{name}_{size}.png"
        if draw_graph(g, circuit_title(name, g, len(df), info), path):
            written.append(path)
    return written


def circuit_figure(name: str, df: pd.DataFrame, info: dict[str, Any], size: str | None = None):
    """One size of a circuit as a Figure (default: its largest size drawn at most
    MAX_DRAWN edges), for a notebook."""
    metric = info.get("metric") or _first_measure(df)
    cfg = info.get("graph") or {"n_layers": 0, "n_heads": 1}
    sizes = [k for k in info.get("sizes", []) if 0 < k]
    if size is not None:
        k = int(size)
    else:
        k = max([s for s in sizes if s <= MAX_DRAWN] or [min(len(df), MAX_DRAWN)])
    g = circuit_graph(df, k, metric, cfg["n_layers"], cfg["n_heads"], info.get("hosts"))
    return layout_figure(g, circuit_title(name, g, len(df), info))


def _first_measure(df: pd.DataFrame) -> str:
    skip = {"layer", "head", "pos", "site", "node", "sender", "receiver", "effect", "rank"}
    return next(c for c in df.columns if c not in skip and not c.endswith("_se"))


def curve_figure(name: str, df: pd.DataFrame, info: dict[str, Any]):
    """Faithfulness against the fraction kept (see the module docstring)."""
    fig = S.new_figure(6.0, 4.2)
    ax = fig.subplots()
    kind = "edges" if "edges" in df.columns else "nodes"
    d = df.sort_values("fraction")
    fracs = d["fraction"].astype(float)
    positive = fracs[fracs > 0]
    log = len(positive) > 1 and positive.max() / positive.min() >= 50
    cols = [c for c in df.columns if c.startswith("faithfulness") and not c.endswith("_se")]
    for i, col in enumerate(cols):
        suffix = col[len("faithfulness"):]
        cpr, cmd = float(d["cpr" + suffix].iloc[0]), float(d["cmd" + suffix].iloc[0])
        metric = suffix[1:] or info.get("metric", "")
        label = f"{metric}: cpr {_fmt(cpr)}, cmd {_fmt(cmd)}".strip(": ")
        ax.plot(d["fraction"], d[col], marker="o", label=S.text(label))
        for x, y, k in zip(d["fraction"], d[col], d[kind]) if i == 0 else ():
            ax.annotate(str(int(k)), (x, y), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize="x-small")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    if log and (fracs == 0).any():  # (linear from 0 to the smallest fraction, log above)
        ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_xlim(left=0)
    elif log:
        ax.set_xscale("log")
    ax.set_xlabel(S.text(f"fraction of {kind} kept (numbers: {kind} kept)"))
    ax.set_ylabel("faithfulness (0 = empty circuit, 1 = model)")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(S.text(info.get("title") or f"evaluate ({name})"), fontsize="medium")
    return fig


def _fmt(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def plot_curve(name: str, df: pd.DataFrame, info: dict[str, Any], out_dir: Path
               ) -> list[Path]:
    """NAME.png: the faithfulness curve (a single size: no curve, the table says it)."""
    if len(df) < 2:
        return []
    path = Path(out_dir) / f"{name}.png"
    curve_figure(name, df, info).savefig(path, dpi=130, bbox_inches="tight", pad_inches=0.1)
    return [path]
