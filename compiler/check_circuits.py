"""Circuits (docs/circuits.md): `circuit NAME = top K of TABLE` and `evaluate NAME in B with
ablate(A) | mean(A) measure M`.

A circuit names rows of a result table made earlier in the spec by an operation whose rows
are components (nodes: sites, or edges `SENDER -> RECEIVER`) and whose first measured column
says how much each one matters: `swap`, `trace`, `ablate` or `attribute`. Whether K fits the
table (at most its row count) is known only once the table's sweep is expanded: lowering
checks it (E530), and `patchc check` runs that count too; a circuit of one size that keeps
no row (W474), or two sizes that are the same point of the curve (W475), are warned about
once the counts are known.
"""

from __future__ import annotations

from . import ast as A
from . import printer
from .check_context import Context, did_you_mean
from .check_metrics import check_measures
from .check_ops import check_columns
from .check_fill import check_fill_source
from .check_runs import require_aligned
from .edges import iter_edge_item
from .errors import Span

# Operations whose tables are node or edge tables: one component (or a joint group of them)
# per row, an intervention (or its estimate) measured on it.
NODE_TABLE_OPS = (A.Swap, A.Trace, A.Ablate, A.Attribute)


def table_ops(spec: A.Spec) -> dict[str, A.Operation]:
    """Result table name -> the operation that makes it (the first, if named twice)."""
    out: dict[str, A.Operation] = {}
    for s in spec.statements:
        if isinstance(s, A.OPERATIONS):
            out.setdefault(A.table_name(s), s)
    return out


def check_circuit(ctx: Context, decl: A.CircuitDecl, spec: A.Spec,
                  circuits: dict[str, A.CircuitDecl]) -> None:
    """The table exists, is made before this line, and is a node or edge table (E370,
    E371); each size is a count or a percentage in (0, 100], listed once (E372)."""
    ops = table_ops(spec)
    name = decl.table.value
    op = ops.get(name)
    if op is None:
        known = list(ops) + list(circuits)
        hint = (f"`{name}` is a circuit; a circuit is made from the table it ranks"
                if name in circuits else did_you_mean(name, known))
        ctx.error("E370", f"unknown result table `{name}`", decl.table.span,
                  hint or "name the table with `as NAME` on the operation that makes it")
    elif op.span.line > decl.span.line:
        ctx.error("E370", f"table `{name}` is made on line {op.span.line}, after this "
                  "circuit", decl.table.span, hint="move the circuit below that operation")
    elif not isinstance(op, NODE_TABLE_OPS):
        ctx.error("E371", f"table `{name}` (made by `{A.op_keyword(op)}`) is not a node or "
                  "edge table", decl.table.span,
                  hint="a circuit ranks the rows of a swap, trace, ablate or attribute table")
    else:
        _repeated_edges(ctx, decl, op)
    seen: dict[tuple[float, bool], A.CircuitSize] = {}
    for k in decl.sizes:
        if k.percent and not 0 < k.value <= 100:
            ctx.error("E372", f"a circuit keeps more than 0% and at most 100% of the table; "
                      f"got {k.value:g}%", k.span)
        key = (float(k.value), k.percent)
        if key in seen:
            ctx.error("E372", "this circuit size is listed twice", k.span)
        seen[key] = k


def check_evaluate(ctx: Context, op: A.Evaluate, circuits: dict[str, A.CircuitDecl],
                   spec: A.Spec | None = None) -> None:
    """The circuit is declared above (E373), the runs exist and align (ablate copies A's
    values into B), `mean(A)` can fill every position the ranked table's items write
    (E455), the measures are plain metrics (E374: faithfulness is the normalization), and
    something is measured (E337)."""
    decl = circuits.get(op.circuit.value)
    if decl is None:
        ctx.error("E373", f"unknown circuit `{op.circuit.value}`", op.circuit.span,
                  did_you_mean(op.circuit.value, circuits) or
                  "declare it first: `circuit NAME = top K of TABLE`")
    elif decl.span.line > op.span.line:
        ctx.error("E373", f"circuit `{op.circuit.value}` is declared on line "
                  f"{decl.span.line}, after this evaluation", op.circuit.span)
    target = ctx.run(op.target.value, op.target.span)
    assert op.how.run is not None
    source = ctx.run(op.how.run, op.how.span)
    if op.how.kind == "ablate" and source is not None and target is not None:
        require_aligned(ctx, source, target, op.how.span,
                        f"`evaluate` patches `{source.name}`'s values into `{target.name}`")
    ranked = table_ops(spec).get(decl.table.value) if spec and decl else None
    if op.how.kind == "mean" and isinstance(ranked, NODE_TABLE_OPS):
        check_fill_source(ctx, op.how, source, target, ranked.sites)
    if op.clauses.where:
        ctx.error("E374", "`evaluate` sweeps circuit sizes, not captures: it takes no "
                  "`where`", op.clauses.where[0].span)
    if not op.clauses.measures:
        ctx.error("E337", "`evaluate` measures nothing",
                  Span(op.span.line, op.span.col, op.span.line, op.span.col + 8),
                  hint="add `measure METRIC`, e.g. `measure ld`")
    for m in op.clauses.measures:
        if m.normalized:
            ctx.error("E374", "`evaluate` reports the faithfulness of each metric, its own "
                      "normalization: measure the plain metric", m.span,
                      hint="drop `normalized`")
    check_measures(ctx, op.clauses.measures, target)
    check_columns(ctx, [], op.clauses.measures)  # (a metric measured twice: two `ld` columns)


def _repeated_edges(ctx: Context, decl: A.CircuitDecl, op: A.Operation) -> None:
    """W304: rows of an edge table that patch the same edges (a capture over the k/v heads
    of a grouped-query model keeps one row per query head; overlapping items). A circuit
    counts rows, so keeping one keeps the others' edges too."""
    items = getattr(op, "sites", ())
    if ctx.model is None or not items or not all(
            isinstance(i, (A.Edge, A.EdgeGroup)) for i in items):
        return
    seen: set[tuple] = set()
    repeats = 0
    with ctx.catch():  # (the statement's own check reports what does not resolve)
        for item in items:
            at = printer.pos(item.pos) if item.pos is not None else ""
            for m in iter_edge_item(item, ctx.model):
                key = (m.edges, at)
                repeats += key in seen
                seen.add(key)
    if repeats:
        ctx.warn("W304", f"{repeats} row(s) of `{decl.table.value}` patch the same edges as "
                 "another row (a capture over grouped kv heads, or items that overlap): a "
                 "circuit counts rows, so keeping one keeps the other's edges too",
                 decl.table.span, hint="rank a pattern (`L1.H*.k` lists each kv head once) "
                 "to count edges")


def warn_circuit_sizes(ctx: Context, checked) -> None:
    """W474: a circuit of one size keeps no row of its table (1% of 16 rows; in a list of
    sizes such a point is part of the curve, as in the MIB benchmark's grid); W475: two
    sizes keep the same rows at the same place on the curve (`{50%, 8}` of 16), so their
    evaluations repeat each other."""
    from .errors import PlanError
    from .lower import count_rows
    from .lower_circuits import size_of

    try:
        counts = count_rows(checked)
    except PlanError:  # a size beyond its table: E530, where the rows are counted again
        return
    for s in checked.spec.statements:
        if not isinstance(s, A.CircuitDecl) or s.table.value not in counts:
            continue
        n = counts[s.table.value]
        kept: dict[tuple[int, float], A.CircuitSize] = {}
        for k in s.sizes:
            point = size_of(k, n)
            if point[0] == 0 and not s.is_list and (k.percent or k.value):
                ctx.warn("W474", f"`top {_size(k)}` of {s.table.value} keeps none of its {n} "
                         f"row{'s' * (n != 1)}", k.span,
                         hint=f"a percentage keeps floor(p x {n} / 100) rows: ask for at "
                         f"least {100 / n:.3g}% or a count" if n else None)
            elif point in kept:
                ctx.warn("W475", f"`top {_size(k)}` keeps the same {point[0]} row"
                         f"{'s' * (point[0] != 1)} of {s.table.value} as `top "
                         f"{_size(kept[point])}`", k.span,
                         hint="drop one: each size is evaluated and plotted")
            else:
                kept[point] = k


def _size(k: A.CircuitSize) -> str:
    return f"{k.value:g}{'%' if k.percent else ''}"
