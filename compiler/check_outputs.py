"""Result-folder file names: two tables must never write the same file (E470).

`patchc run --out DIR` names every file after its table: `NAME.csv` (and `.examples.csv`,
`.safetensors`, `.pairs.csv`), one `NAME.png`, or `NAME_COLUMN.png` per measured column when
a table measures several, and `NAME_K.png`, `.dot`, `.json` per size K of a circuit. So a
table named `c_5` beside `circuit c = top 5 of ...`, or `lz_ld` beside a lens `lz` measuring
`ld` and `p`, would write the same file as the other, and one of the two would silently be
lost. Two names that differ only in case (`t`, `T`) are one file on a case-insensitive file
system (macOS, Windows). The checker refuses all of these before anything runs.

The stems mirror what patchc/plots.py, patchc/plot_lens.py and patchc/circuit_graph.py
write; tests/compiler/test_output_names.py runs specs and compares with the files written.
"""

from __future__ import annotations

import re

from . import ast as A
from . import printer
from .check_context import Context
from .check_metrics import inlined
from .errors import Span

# Tables drawn as one figure whatever they measure (or not drawn from measured columns).
_ONE_FIGURE = (A.ReadSites, A.Compare, A.Evaluate, A.MeasureRun)


def _suffix(column: str) -> str:
    """A column's file-name suffix, as the plotting code spells it."""
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in column)


def _columns(ctx: Context, op: A.Operation) -> list[str]:
    """The measured numeric columns of an operation's table (text(N) makes none)."""
    out = []
    for m in op.clauses.measures:
        if any(isinstance(n, A.MText) for n in inlined(ctx, m.expr)):
            continue
        if m.name is not None:
            out.append(m.name.value)
        else:
            out.append(m.expr.name if isinstance(m.expr, A.MRef) else printer.mexpr(m.expr))
    return out


def _name_span(op: A.Operation | A.CircuitDecl) -> Span:
    if isinstance(op, A.CircuitDecl):
        return op.name.span
    return op.clauses.name.span if op.clauses.name is not None else op.span


def check_output_names(ctx: Context, spec: A.Spec) -> None:
    """E470 for a table whose files another table writes too (see the module docstring)."""
    stmts = [s for s in spec.statements if isinstance(s, A.OPERATIONS + (A.CircuitDecl,))]
    names: dict[str, tuple[str, A.Operation | A.CircuitDecl]] = {}  # casefold -> first
    figures: dict[str, tuple[str, str]] = {}  # casefold stem -> (table, column)
    # circuit -> its sizes; None when a percentage makes a size known only once it runs
    circuits: dict[str, set[int] | None] = {}
    single: list[tuple[str, A.Operation]] = []  # the tables that write NAME.png
    for s in stmts:
        name = s.name.value if isinstance(s, A.CircuitDecl) else A.table_name(s)
        first = names.get(name.casefold())
        if first is not None and first[0] != name:  # the same name twice is E308
            ctx.error("E470", f"tables `{first[0]}` (line {first[1].span.line}) and `{name}` "
                      "differ only in case: on a case-insensitive file system (macOS, "
                      f"Windows) their files {first[0]}.csv and {name}.csv are one file",
                      _name_span(s), hint=f"rename `{name}`")
        names.setdefault(name.casefold(), (name, s))
        if isinstance(s, A.CircuitDecl):
            circuits[name] = (None if any(k.percent for k in s.sizes)
                              else {int(k.value) for k in s.sizes})
            continue
        cols = [] if isinstance(s, _ONE_FIGURE) else _columns(ctx, s)
        if len(cols) <= 1:
            single.append((name, s))
        for c in cols if len(cols) > 1 else []:
            figures.setdefault(f"{name}_{_suffix(c)}".casefold(), (name, c))
    for name, s in single:
        owner = figures.get(name.casefold())
        if owner is not None:
            ctx.error("E470", f"table `{name}` would write {name}.png, the file table "
                      f"`{owner[0]}` draws its column `{owner[1]}` in", _name_span(s),
                      hint=f"rename `{name}` (files are named NAME.csv, NAME.png, and "
                      "NAME_COLUMN.png for a table that measures several columns)")
            continue
        for c, sizes in circuits.items():
            m = re.fullmatch(re.escape(c) + r"_(0|[1-9][0-9]*)", name, re.IGNORECASE)
            if m is None or (sizes is not None and int(m[1]) not in sizes):
                continue
            ctx.error("E470", f"table `{name}` would write {name}.png, the file circuit `{c}` "
                      f"draws its circuit of {int(m[1])} rows in", _name_span(s),
                      hint=f"rename `{name}` (a circuit C writes C_K.png, C_K.dot and "
                      "C_K.json for each size K)")
            break
