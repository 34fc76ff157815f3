"""Lowering circuits (docs/circuits.md): `circuit NAME = top K of TABLE` and `evaluate`.

Which rows a circuit keeps depends on the table's values, known only when the plan runs. So
a circuit lowers to one `Select` node, the ranking of the table's rows (its inputs are the
rows' value nodes, the metric with no intervention and the column's baselines), and a table
`NAME` of the rows ranked. `evaluate` lowers to ordinary Forwards of B with Writes: every
component of the table patched from A (or A's mean) unless the circuit keeps it. A write's
`gate` names the Select, its row and the circuit size; the interpreters skip a write whose
row is in the circuit. Per size:

  - size = all rows: B's own forward (N, nothing patched);
  - otherwise (size 0 included: the empty circuit): one forward with a gated write per
    component of every row.

The faithfulness column is the size's metric normalized between the empty circuit (0) and N
(1), so keeping every row gives exactly 1 and keeping none exactly 0: those are the same
nodes as the baselines. The batch pass stacks the sizes' forwards into one pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from . import ast as A
from .edges import has_edges
from .errors import PlanError
from .ir import Row, Select, Table
from .ir_sweep import bound_columns
from .lower_edges import edge_exps, edge_writes
from .lowerer import Exp, Key, Lowerer


@dataclass(frozen=True)
class Circuit:
    """What `evaluate` needs of a lowered circuit."""

    name: str
    select: str
    # Each row's components, in the table's row order: an Exp (its sites) for a node
    # table, (edges, positions) for an edge table.
    exps: tuple[Any, ...]
    sizes: tuple[tuple[int, float], ...]  # (rows kept, fraction of the table) per size
    table: str
    kind: str  # "nodes" or "edges": what a row is


def table_op(lw: Lowerer, name: str) -> A.Operation:
    for op in lw.checked.spec.operations():
        if A.table_name(op) == name:
            return op
    raise PlanError("E531", f"unknown result table `{name}`")


def size_of(k: A.CircuitSize, n: int) -> tuple[int, float]:
    """(rows kept, fraction of the table's rows) of one size. A percentage keeps
    floor(p * n / 100) rows and stands at p% on the curve's axis, as the MIB benchmark does;
    a count K stands at K / n."""
    if k.percent:
        # p * n / 100 first: 29% of 100 is 29 (0.29 * 100 is 28.999...).
        return math.floor(k.value * n / 100 + 1e-9), k.value / 100
    kept = int(k.value)
    if kept > n:
        raise PlanError("E530", f"the table has {n} row{'s' * (n != 1)}: a circuit cannot keep "
                        f"{kept}", k.span, hint=f"keep at most {n}, or a percentage")
    return kept, kept / n if n else 0.0


def node_label(e: Exp) -> str:
    """`L0.H3.z`, `L0.H3.z @ 5`; a joint group's sites joined by `+`."""
    return " + ".join(str(t.site) + ("" if t.pos.kind == "all" else f" @ {t.pos}")
                      for t in e.targets)


def _is_edges(op: A.Operation) -> bool:
    return has_edges(getattr(op, "sites", ()))


def _exps(lw: Lowerer, op: A.Operation) -> list[Any]:
    """The source table's experiments in row order (as its lowering made them): Exps of a
    node table, (edges, positions) of an edge table."""
    if _is_edges(op):
        return [(edges, pos) for _, edges, pos in edge_exps(lw, op, op.target.value)]
    return lw.where(op.clauses.where, lw.expand(op.sites, op.target.value))  # type: ignore


def rows_of_circuit(lw: Lowerer, decl: A.CircuitDecl, count: int) -> int:
    """A circuit's table ranks every row of its source table (`count` rows); each size must
    fit the table."""
    for k in decl.sizes:
        size_of(k, count)
    return count


def lower_circuit(lw: Lowerer, decl: A.CircuitDecl) -> None:
    name = decl.table.value
    table = next((t for t in lw.ir.tables if t.name == name), None)
    if table is None:
        raise PlanError("E531", f"unknown result table `{name}`", decl.table.span)
    op = table_op(lw, name)
    col, measure = lw.measures(op)[0]
    target = op.target.value  # type: ignore[union-attr]
    # A row's value: its Metric or Estimate; a compact block's (ir_sweep.SweepRows, e.g. a
    # compact edge Estimate) is one node of [members, examples] standing for its rows.
    parts = [*table.rows, *table.sweeps]
    values = tuple(dict(r.values)[col] for r in parts)
    norms = {dict(r.normalize).get(col) for r in parts}
    if len(norms) != 1:
        raise PlanError("E532", f"table `{name}`: its rows are normalized by different "
                        "baselines; a circuit ranks rows of one scale", decl.span)
    norm = next(iter(norms))
    normalize = tuple(x for x in norm if x) if norm is not None else ()
    reference = lw.metric(lw.base(target), target, measure.expr)
    inputs = values + (reference,) + normalize
    # An edge sweep's blocks list their members' rows: the ranking puts them in row order.
    member_rows = tuple(r for b in table.sweeps for r in getattr(b.space, "rows", ()))
    sel = lw.ir.add(Select(name, values, reference, normalize, member_rows), inputs)
    exps = _exps(lw, op)
    n = table.n_rows()
    if len(exps) != n:
        raise PlanError("E532", f"table `{name}`: {n} rows but {len(exps)} experiments",
                        decl.span)
    sizes = tuple(size_of(k, n) for k in decl.sizes)
    bound = {k for r in table.rows for k, _ in r.key}
    bound |= {k for b in table.sweeps for k in bound_columns(b.space)}
    keys = tuple(c for c in table.columns if c in bound)
    kind = "edges" if _is_edges(op) else "nodes"
    # A node row names its site(s) in a `node` column: what drawings and files show.
    named = [r.key + ((("node", node_label(e)),) if kind == "nodes" else ())
             for r, e in zip(table.rows, exps)]
    rows = tuple(Row(key, ((col, dict(r.values)[col]),),
                     tuple((c, ts) for c, ts in r.normalize if c == col))
                 for key, r in zip(named, table.rows))
    blocks = tuple(dataclasses.replace(b, values=((col, dict(b.values)[col]),),
                                       normalize=tuple((c, ts) for c, ts in b.normalize
                                                       if c == col))
                   for b in table.sweeps)
    keys += ("node",) if kind == "nodes" else ()
    lw.ir.tables.append(Table(decl.name.value, "circuit", keys + (col,), rows, decl.span,
                              select=sel, sweeps=blocks))
    lw.circuits[decl.name.value] = Circuit(decl.name.value, sel, tuple(exps), sizes, name, kind)


def _patch(lw: Lowerer, op: A.Evaluate, c: Circuit, top: int,
           edge_ws: list[tuple[str, dict]]) -> list[str]:
    """The writes that patch every component of the table from A (or A's mean), gated by
    the circuit's first `top` rows (0: the empty circuit, everything patched). An edge
    circuit's writes (`edge_ws`, from _edge_writes) are made once and gated per size."""
    source = op.how.run
    assert source is not None
    if c.kind == "edges":
        return _gate_edges(lw, c, top, edge_ws)
    fa = lw.base(source)
    mode = "replace" if op.how.kind == "ablate" else "mean"
    writes = []
    for i, e in enumerate(c.exps):
        for t in e.targets:
            writes.append(lw.write(t, mode, (lw.read(fa, t.site, t.pos),),
                                   gate=(c.select, i, top)))
    return writes


def _edge_writes(lw: Lowerer, op: A.Evaluate, c: Circuit) -> list[tuple[str, dict]]:
    """Every edge of the table patched jointly (lower_edges.edge_writes: one Write per
    receiver, the senders a forward may change read live): (Write id, (receiver, sender)
    -> the table row of that edge) per receiver and positions."""
    how = "replace" if op.how.kind == "ablate" else "mean"
    by_pos: dict[Any, dict[Any, int]] = {}  # positions -> edge -> its (first) row
    for i, (edges, pos) in enumerate(c.exps):
        for e in edges:
            by_pos.setdefault(pos, {}).setdefault(e, i)
    out = []
    for pos, rows in by_pos.items():
        row_of = {(e.receiver, e.sender): i for e, i in rows.items()}
        out += [(wid, row_of)
                for wid in edge_writes(lw, op.target.value, tuple(rows), pos, how, op.how.run)]
    return out


def _gate_edges(lw: Lowerer, c: Circuit, top: int, edge_ws: list[tuple[str, dict]]
                ) -> list[str]:
    """The edge writes, each gated by the rows its senders come from."""
    writes = []
    for wid, row_of in edge_ws:
        w = lw.ir.node(wid)
        rows = tuple(row_of[w.site, s] for s in w.senders)  # type: ignore[union-attr]
        gated = dataclasses.replace(w, gate=c.select, top=top, rows=rows)
        writes.append(lw.ir.add(gated, w.inputs + (c.select,)))  # type: ignore[union-attr]
    return writes


def faithfulness_column(col: str, single: bool) -> str:
    return "faithfulness" if single else f"faithfulness_{col}"


def lower_evaluate(lw: Lowerer, op: A.Evaluate) -> None:
    c = lw.circuits[op.circuit.value]
    target = op.target.value
    lw.bake(target)
    n = len(c.exps)
    full = lw.base(target)
    edge_ws = _edge_writes(lw, op, c) if c.kind == "edges" else []
    # The empty circuit's writes are gated too (nothing kept): its forward then waits for
    # the ranking like the sizes' and is stacked into their pass.
    empty = lw.forward(target, _patch(lw, op, c, 0, edge_ws))
    measures = lw.measures(op)
    single = len(measures) == 1
    rows = []
    for kept, frac in c.sizes:
        f = full if kept == n else empty if kept == 0 else \
            lw.forward(target, _patch(lw, op, c, kept, edge_ws))
        key: Key = ((c.kind, kept), ("fraction", frac))
        values, norm = [], []
        for col, m in measures:
            value = lw.metric(f, target, m.expr)
            faith = faithfulness_column(col, single)
            values += [(col, value), (faith, value)]
            norm.append((faith, (lw.metric(empty, target, m.expr),
                                 lw.metric(full, target, m.expr))))
        rows.append(Row(key, tuple(values), tuple(norm)))
    for wid, _ in edge_ws:  # the templates the gated writes were copied from
        lw.ir.g.remove_node(wid)
    columns = (c.kind, "fraction") + tuple(
        x for col, _ in measures for x in (col, faithfulness_column(col, single)))
    lw.table(op, rows, columns)


def is_area_column(name: str) -> bool:
    return name in ("cpr", "cmd") or name.startswith(("cpr_", "cmd_"))


def areas(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(cpr, cmd) of a faithfulness curve given as (fraction kept, faithfulness) points,
    as the MIB benchmark integrates it: the trapezoid rule between consecutive sizes in
    increasing order of the fraction (no extension to 0 or 1), cpr the area under the
    curve, cmd the area between |1 - faithfulness| and 0. NaN for fewer than two sizes."""
    pts = sorted(points, key=lambda p: p[0])
    if len(pts) < 2 or any(math.isnan(f) for _, f in pts):
        return math.nan, math.nan
    cpr = cmd = 0.0
    for (x1, f1), (x2, f2) in zip(pts, pts[1:]):
        cpr += (x2 - x1) * (f1 + f2) / 2
        cmd += (x2 - x1) * (abs(1 - f1) + abs(1 - f2)) / 2
    return cpr, cmd
