"""A circuit as a graph: its components (nodes) and edges, from a circuit table, written as
DOT and as JSON in the layout EAP-IG's `Graph.from_json` reads (docs/circuits.md, "Files").

A circuit table (patchc/circuit_tables.py) lists the rows of a node or an edge table by
rank; the circuit of size K is its first K rows. Components are named as EAP-IG names them:

  embed                      input
  L3.H2.<anything>           a3.h2        (an edge into a head's q, k or v ends in <q> ...)
  L3.mlp.<anything>          m3
  logits                     logits
  L3.attn.out (a whole layer's attention, which EAP-IG has no node for)   a3
  any other site             its own text (`L2.resid_pre`)

A node table's `node` column holds each row's site (`L0.H3.z @ 5` for a position); an edge
table's `sender` and `receiver` columns its two ends. A row of an `all(...)` group (its
`site` column the group's text, no single node or ends) stands for each of its members: they
were patched together, so each is drawn and written with the group's rank and effect.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

_HEAD = re.compile(r"^L(\d+)\.H(\d+)(?:\.([a-z_.]+))?$")
_LAYER = re.compile(r"^L(\d+)\.([a-z_]+)(?:\.([a-z_.]+))?$")


@dataclass(frozen=True)
class Component:
    name: str  # the EAP-IG node name
    label: str  # patchc's name, for drawings: L0.H3, L1 MLP, embed, logits
    level: float  # bottom (embed) to top (logits): 2l+1 attention, 2l+2 MLP of layer l
    x: float  # place within its level (a head's index)
    qkv: str | None = None  # for an edge's receiver: the head input it enters


def component(text: str, n_layers: int, n_heads: int,
              hosts: dict[str, float] | None = None) -> Component:
    """The component a site's text names (see the module docstring); `hosts`: the drawing
    level of each dictionary's latents (`s1[470]`, `s1.err`), its host site's."""
    site = text.split(" @ ")[0].strip()
    mid = (n_heads - 1) / 2
    name = re.split(r"[\[.]", site, maxsplit=1)[0]
    if hosts and name in hosts:
        return Component(site, site, hosts[name], mid)
    if site == "embed":
        return Component("input", "embed", 0, mid)
    if site == "logits":
        return Component("logits", "logits", 2 * n_layers + 1, mid)
    m = _HEAD.match(site)
    if m:
        layer, head, rest = int(m[1]), int(m[2]), m[3] or ""
        qkv = rest if rest in ("q", "k", "v") else None
        return Component(f"a{layer}.h{head}", f"L{layer}.H{head}", 2 * layer + 1, head, qkv)
    m = _LAYER.match(site)
    if m and m[2] == "mlp":
        layer = int(m[1])
        return Component(f"m{layer}", f"L{layer} MLP", 2 * layer + 2, mid)
    if m and m[2] == "attn":
        layer = int(m[1])
        return Component(f"a{layer}", f"L{layer} attn", 2 * layer + 1, mid)
    layer = int(m[1]) if m else n_layers
    return Component(site, site, 2 * layer + 0.5, mid)


@dataclass
class CircuitGraph:
    """One circuit size: its components and edges (sender, receiver, q/k/v, score)."""

    kind: str  # "edges" or "nodes"
    size: int
    metric: str
    nodes: dict[str, Component] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # node circuits: node -> score
    edges: list[tuple[Component, Component, float]] = field(default_factory=list)


def _score(row: dict[str, Any], metric: str) -> float:
    """A row's score: its effect (the change from no intervention), else its value."""
    return float(row["effect"] if "effect" in row else row[metric])


def is_edge_table(df: pd.DataFrame) -> bool:
    return ("sender" in df.columns and "receiver" in df.columns) or \
        ("site" in df.columns and any("->" in str(s) for s in df["site"]))


def _top_level(text: str) -> list[str]:
    """`text` split at the commas outside brackets (`L0.H0.z @ {1, 2}` stays whole)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in parts + [text[start:]] if p.strip()]


def row_members(row: dict[str, Any], edges: bool) -> list:
    """The (sender, receiver) texts of an edge table's row, or the site texts of a node
    table's: one for a single item, each member for an `all(...)` group."""
    if edges and not pd.isna(row.get("sender")) and not pd.isna(row.get("receiver")):
        return [(str(row["sender"]), str(row["receiver"]))]
    if not edges and not pd.isna(row.get("node")):
        return [str(row["node"])]
    text = str(row.get("site", "")).strip()
    if text.startswith("all(") and text.endswith(")"):
        text = text[4:-1]
    items = _top_level(text)
    if not edges:
        return items
    return [tuple(x.strip() for x in item.split("->", 1)) for item in items if "->" in item]


def circuit_graph(df: pd.DataFrame, size: int, metric: str, n_layers: int, n_heads: int,
                  hosts: dict[str, float] | None = None) -> CircuitGraph:
    """The circuit of `size` rows of a ranked circuit table, scored by effect."""
    kept = df[df["rank"] <= size]
    if is_edge_table(df):
        g = CircuitGraph("edges", size, metric)
        for r in kept.itertuples(index=False):
            row = r._asdict()
            for sender, receiver in row_members(row, edges=True):
                s = component(sender, n_layers, n_heads, hosts)
                t = component(receiver, n_layers, n_heads, hosts)
                g.nodes.setdefault(s.name, s)
                g.nodes.setdefault(t.name, t)
                g.edges.append((s, t, _score(row, metric)))
        return g
    g = CircuitGraph("nodes", size, metric)
    for r in kept.itertuples(index=False):
        row = r._asdict()
        for text in row_members(row, edges=False):
            c = component(text, n_layers, n_heads, hosts)
            g.nodes.setdefault(c.name, c)
            g.scores[c.name] = g.scores.get(c.name, 0.0) + _score(row, metric)
    return g


def edge_name(s: Component, t: Component) -> str:
    """`a0.h3->a2.h1<k>` as EAP-IG names an edge."""
    return f"{s.name}->{t.name}" + (f"<{t.qkv}>" if t.qkv else "")


def to_json(df: pd.DataFrame, size: int, metric: str, cfg: dict[str, Any],
            hosts: dict[str, float] | None = None) -> str:
    """EAP-IG's graph JSON: `cfg` (n_layers, n_heads, parallel_attn_mlp, d_model), `nodes`
    ({name: {in_graph[, score]}}) and `edges` ({name: {score, in_graph}}), for every row of
    the table, in_graph for the circuit's; a score is the row's effect (as EAP-IG's, the
    change of the metric the component's patch makes). Edge circuits score edges, node
    circuits nodes."""
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[str, dict[str, Any]] = {}
    is_edges = is_edge_table(df)
    for r in df.itertuples(index=False):  # (in rank order: a member keeps its best group's)
        row = r._asdict()
        inside = bool(row["rank"] <= size)
        score = _num(_score(row, metric))
        if is_edges:
            for sender, receiver in row_members(row, edges=True):
                s = component(sender, n_layers, n_heads, hosts)
                t = component(receiver, n_layers, n_heads, hosts)
                edge = edges.setdefault(edge_name(s, t), {"score": score, "in_graph": False})
                edge["in_graph"] = edge["in_graph"] or inside
                for c in (s, t):
                    entry = nodes.setdefault(c.name, {"in_graph": False})
                    entry["in_graph"] = entry["in_graph"] or inside
            continue
        for text in row_members(row, edges=False):
            c = component(text, n_layers, n_heads, hosts)
            entry = nodes.setdefault(c.name, {"in_graph": False, "score": 0.0})
            entry["in_graph"] = entry["in_graph"] or inside
            entry["score"] = _num(entry["score"] + score) \
                if score is not None and entry["score"] is not None else None
    if is_edges:
        nodes.setdefault("logits", {"in_graph": True})["in_graph"] = True
    out = {"cfg": cfg, "nodes": nodes, "edges": edges, "size": size, "metric": metric}
    return json.dumps(out, indent=1, sort_keys=False) + "\n"


def _num(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def to_dot(g: CircuitGraph, title: str) -> str:
    """The circuit in DOT: layers bottom to top, pen width by |effect|, colour by sign
    (red raises the metric, blue lowers it, as in the heatmaps); a head's q/k/v input
    labels its edges."""
    lines = ["digraph circuit {", "  rankdir=BT;", f'  label="{_esc(title)}";',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", '
             'fillcolor="#eeeeee"];']
    top = max([abs(v) for v in g.scores.values()] + [abs(e[2]) for e in g.edges] + [1e-30])
    levels: dict[float, list[str]] = {}
    for c in g.nodes.values():
        levels.setdefault(c.level, []).append(c.name)
        fill = _hex(g.scores[c.name] / top) if c.name in g.scores else "#eeeeee"
        lines.append(f'  "{c.name}" [label="{_esc(c.label)}", fillcolor="{fill}"];')
    for names in levels.values():
        lines.append("  { rank=same; " + " ".join(f'"{n}";' for n in names) + " }")
    for s, t, score in g.edges:
        width = 0.6 + 4.4 * abs(score) / top
        label = f', label="{t.qkv}"' if t.qkv else ""
        lines.append(f'  "{s.name}" -> "{t.name}" [penwidth={width:.2f}, '
                     f'color="{_hex(score / top)}"{label}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _hex(v: float) -> str:
    """A signed value in [-1, 1] as a colour: red for positive, blue for negative, grey
    for 0."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    v = 0.0 if not math.isfinite(v) else max(-1.0, min(1.0, v))
    if v == 0:
        return "#9e9e9e"  # no effect: neither red nor blue (plot_circuit.ZERO)
    # as the PNG's colours: RdBu_r without its palest middle (plot_circuit.effect_colormap)
    return to_hex(colormaps["RdBu_r"](0.5 + math.copysign(0.18 + 0.32 * abs(v), v)))


def circuit_files(name: str, df: pd.DataFrame, info: dict[str, Any]) -> dict[str, str]:
    """NAME_K.dot and NAME_K.json for every size K of a circuit table (K = 0 included in
    the JSON only: an empty graph draws nothing)."""
    cfg = info.get("graph")
    metric = info.get("metric")
    if not cfg or not metric:
        return {}
    out = {}
    hosts = info.get("hosts")
    for size in info.get("sizes", []):
        out[f"{name}_{size}.json"] = to_json(df, size, metric, cfg, hosts)
        if size > 0:
            g = circuit_graph(df, size, metric, cfg["n_layers"], cfg["n_heads"], hosts)
            title = f"{info.get('title') or name}: top {size} by |{metric}|"
            out[f"{name}_{size}.dot"] = to_dot(g, title)
    return out
