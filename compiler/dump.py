"""Deterministic debugging dumps: the AST and the IR graph as readable text.

- `dump_ast(spec)`: an indented tree of the AST with spans (`patchc compile --emit ast`, the
  golden files under tests/fixtures/ast/).
- `dump_ir(ir)`: the IR graph (`patchc compile --emit ir`, tests/fixtures/ir/). Nodes come in
  topological generations (every id is defined above the lines that use it); inside a
  generation they are grouped by kind, then by id number. Each node is one line

      w3 = replace L3.H2.z @ * <- r1

  (`<-` lists the ids the node depends on; expressions follow `:=`), then each table with
  its rows (`key -> column=id`, normalize refs, compare pairs) and the unpatched
  baselines of its raw columns (`unpatched col=(target, source)`), then one summary line.
- `strip_spans(node)`: an AST copy with every span zeroed, to compare shapes.

Both dumps are for people and golden tests, not for machines: ir_json.py is the stable form.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from typing import Any

import networkx as nx

from . import printer
from .errors import Span
from .ir_edges import describe as edges_describe
from .ir_sweep import SweepRows, SweepSpec, describe
from .ir import (
    Backward,
    Estimate,
    Select,
    Forward,
    IRGraph,
    Metric,
    Pair,
    Read,
    Row,
    Table,
    Vector,
    Write,
)

# ---------------------------------------------------------------------------------------------
# AST dump: one node per line, `Type @line:col-end_line:end_col field=leaf ...`; fields that
# hold nodes (or long tuples, like inline data rows) follow on indented lines, in field order.


def _span_text(s: Span) -> str:
    return f"@{s.line}:{s.col}-{s.end_line}:{s.end_col}"


def _fields(node: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(node, f.name)) for f in fields(node)
            if f.name != "span" and f.compare
            and not (f.metadata.get("optional") and getattr(node, f.name) is None)]


def _is_leaf(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(_is_leaf(x) for x in v)
    return not is_dataclass(v)


def _leaf(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_leaf(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, str):
        return printer.string(v)
    if isinstance(v, (dict, list)):
        return printer.json_value(v)
    return repr(v)


def _inline(v: Any) -> bool:
    return _is_leaf(v) and not (isinstance(v, tuple) and len(_leaf(v)) > 60)


def _dump(node: Any, depth: int, label: str, out: list[str]) -> None:
    pad = "  " * depth
    if not is_dataclass(node):
        out.append(f"{pad}{label}{_leaf(node)}")
        return
    span = getattr(node, "span", None)
    head = [type(node).__name__] + ([_span_text(span)] if isinstance(span, Span) else [])
    fs = _fields(node)
    head += [f"{k}={_leaf(v)}" for k, v in fs if _inline(v)]
    out.append(pad + label + " ".join(head))
    for k, v in fs:
        if _inline(v):
            continue
        if isinstance(v, tuple):
            out.append(f"{pad}  {k}:")
            for i, item in enumerate(v):
                _dump(item, depth + 2, f"[{i}] ", out)
        else:
            _dump(v, depth + 1, f"{k}: ", out)


def dump_ast(spec: Any) -> str:
    """An indented tree of an AST (a Spec or any node), deterministic, spans included."""
    out: list[str] = []
    _dump(spec, 0, "", out)
    return "\n".join(out) + "\n"


def strip_spans(node: Any) -> Any:
    """A copy of an AST node with every span set to (0, 0, 0, 0), for comparing shapes."""
    if isinstance(node, tuple):
        return tuple(strip_spans(x) for x in node)
    if not is_dataclass(node) or isinstance(node, Span):
        return node
    kwargs = {f.name: (_ZERO if f.name == "span" and getattr(node, f.name) is not None
                       else strip_spans(getattr(node, f.name))) for f in fields(node)}
    return type(node)(**kwargs)


_ZERO = Span(0, 0, 0, 0)

# ---------------------------------------------------------------------------------------------
# IR dump

# Kinds in the order a generation lists them, with their summary names.
_KINDS: tuple[tuple[type, str], ...] = (
    (Forward, "forward"), (Read, "read"), (Vector, "vector"), (Write, "write"),
    (Metric, "metric"), (Backward, "backward"), (Estimate, "estimate"), (Select, "select"))
_KIND_RANK = {cls: i for i, (cls, _) in enumerate(_KINDS)}
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _id_key(nid: str) -> tuple[str, int]:
    # Numeric order, so that f10 follows f9 rather than f1.
    return nid[0], int(nid[1:])


def _name(name: str) -> str:
    """A declared name bare; an inline expression's printed text quoted."""
    return name if _BARE.match(name) else printer.string(name)


def _deps(ids: tuple[str, ...] | list[str]) -> str:
    return " <- " + ", ".join(ids) if ids else ""


def _node_line(nid: str, node: Any) -> str:
    if isinstance(node, Forward):
        exp = f" exp={node.experiment}" if node.experiment is not None else ""
        samples = f" samples={node.samples}" if node.samples != 1 else ""
        # A sparse latent sweep's forward: skipped at run time when its gate reads are zero.
        gate = f" same_as {node.same_as} sparse {' '.join(node.sparse)}" if node.sparse else ""
        if node.sweep is not None:  # one node for every member (compiler/ir_sweep.py)
            return (f"{nid} = forward {node.run}{exp}{samples} {describe(node.sweep)}"
                    f"{_deps(node.writes + node.inputs)}{gate}")
        return f"{nid} = forward {node.run}{exp}{samples}{_deps(node.writes)}{gate}"
    if isinstance(node, Read):
        stat = f" {node.stat}" if node.stat else ""
        return f"{nid} = read{stat} {node.site} @ {node.pos} <- {node.forward}"
    if isinstance(node, Write):
        extra = f" scale={printer.num(node.scale)}" if node.scale != 1.0 else ""
        extra += f" seed={node.seed}" if node.seed is not None else ""
        if node.senders:  # an edge write: its senders, the live ones starred
            extra += " from " + ", ".join(f"{s}{'*' if i in node.live else ''}"
                                          for i, s in enumerate(node.senders))
        extra += (f" unless rows {','.join(map(str, node.rows))} in top {node.top} of "
                  f"{node.gate}" if node.gate else "")
        return f"{nid} = {node.mode} {node.site} @ {node.pos}{_deps(node.inputs)}{extra}"
    if isinstance(node, Vector):
        expr = printer.vexpr(node.expr)
        return (f"{nid} = vector {_name(node.name)} d={node.dim}{_deps(node.inputs)}"
                f" := {expr}")
    if isinstance(node, Metric):
        ref = f" ref {node.reference}" if node.reference else ""
        ref += f" lens {node.lens}" if node.lens else ""
        return (f"{nid} = metric {_name(node.name)} @ {node.pos} <- {node.forward}{ref}"
                f" := {printer.mexpr(node.expr)}")
    if isinstance(node, Backward):
        return f"{nid} = backward {node.rules} <- {node.metric} wrt {', '.join(node.wrt)}"
    if isinstance(node, Estimate):
        steps = f" steps={node.steps}" if node.steps else ""
        if node.edges is not None:  # one node for every edge (compiler/ir_edges.py)
            return (f"{nid} = {node.method} {edges_describe(node.edges)} @ {node.pos}{steps}"
                    f"{_deps(node.inputs)}")
        if node.space is not None:  # one node for every member (compiler/lower_estimates.py)
            return (f"{nid} = {describe(SweepSpec(node.space, node.method))}{steps}"
                    f"{_deps(node.inputs)}")
        return f"{nid} = {node.method} {node.site} @ {node.pos}{steps}{_deps(node.inputs)}"
    if isinstance(node, Select):
        norm = f" normalize {', '.join(node.normalize)}" if node.normalize else ""
        return (f"{nid} = select {node.table} ref {node.reference}{norm}"
                f"{_deps(node.rows)}")
    raise TypeError(f"not an IR node: {node!r}")


def _generations(ir: IRGraph) -> list[list[str]]:
    try:
        return [list(gen) for gen in nx.topological_generations(ir.g)]
    except nx.NetworkXUnfeasible:
        # A graph with a cycle fails verify(); still show it (as one group) when debugging.
        return [list(ir.g.nodes)]


def _nodes(ir: IRGraph) -> list[str]:
    out: list[str] = []
    for gen in _generations(ir):
        ordered = sorted(gen, key=lambda n: (_KIND_RANK[type(ir.node(n))], _id_key(n)))
        last_kind: type | None = None
        for nid in ordered:
            kind = type(ir.node(nid))
            if kind is not last_kind and out:
                out.append("")  # a blank line between groups (a new generation or kind)
            last_kind = kind
            out.append(_node_line(nid, ir.node(nid)))
    return out


def _key_value(v: Any) -> str:
    return printer.string(v) if isinstance(v, str) else repr(v)


def _key(key: tuple[tuple[str, Any], ...]) -> str:
    if not key:
        return "()"
    return " ".join(f"{k}={_key_value(v)}" for k, v in key)


def _norm(refs: tuple[str | None, str | None]) -> str:
    target, source = refs
    return f"({target or '-'}, {source or '-'})"


def _row(row: Row) -> str:
    out = _key(row.key)
    if row.values:
        out += " -> " + ", ".join(f"{col}={ref}" for col, ref in row.values)
    if row.normalize:
        out += " normalize " + ", ".join(f"{col}={_norm(r)}" for col, r in row.normalize)
    return out


def _pair(p: Pair) -> str:
    norm = f" normalize {_norm(p.normalize)}" if p.normalize is not None else ""
    members = f"[{p.members[0]}:{p.members[1]}]" if p.members is not None else ""
    return f"pair {_key(p.key)}: {p.estimate}{members} ~ {p.metric}{norm}"


def _sweep_rows(b: SweepRows) -> str:
    out = f"{b.count} member{'s' * (b.count != 1)} of {b.forward}"
    if b.values:
        out += " -> " + ", ".join(f"{col}={ref}" for col, ref in b.values)
    if b.normalize:
        out += " normalize " + ", ".join(f"{col}={_norm(r)}" for col, r in b.normalize)
    return out


def _table(t: Table) -> list[str]:
    rows = t.n_rows()
    head = (f"table {t.name} = {t.op} line {t.span.line}: {rows} row{'s' * (rows != 1)},"
            f" columns {', '.join(t.columns) or '-'}")
    ranked = [f"  ranked by {t.select}"] if t.select else []
    unpatched = [f"  unpatched {', '.join(f'{c}={_norm(r)}' for c, r in t.unpatched)}"] \
        if t.unpatched else []
    return [head] + ranked + [f"  {_row(r)}" for r in t.rows] + \
        [f"  {_pair(p)}" for p in t.pairs] + [f"  {_sweep_rows(b)}" for b in t.sweeps] + \
        unpatched


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary(ir: IRGraph) -> str:
    """`16 forwards, 17 reads, ...; 2 tables, 13 rows`: counts per node kind (all kinds)."""
    # Selects only where a spec has circuits: older golden dumps stay as they were.
    kinds = ", ".join(_plural(ir.count(cls), word) for cls, word in _KINDS
                      if cls is not Select or ir.count(Select))
    rows = sum(t.n_rows() for t in ir.tables)
    return f"{kinds}; {_plural(len(ir.tables), 'table')}, {_plural(rows, 'row')}"


def dump_ir(ir: IRGraph) -> str:
    """The IR graph as text: nodes, tables, a summary line (see the module docstring)."""
    out = _nodes(ir)
    for t in ir.tables:
        out += [""] + _table(t)
    out += ["", summary(ir)]
    return "\n".join(out) + "\n"
