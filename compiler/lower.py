"""Checked AST -> the UNOPTIMIZED IR graph: one Forward per experiment (docs/architecture.md,
"The IR"). The naive runtime interpreter executes this graph as it is, so every
quantity a table reports is a node; the passes in compiler/passes/ make it fast.

What becomes what:
  - a `run` used by anything: its base Forward (`experiment=None`, `samples=N` under
    `noise(samples=N)`), whose Writes are the run's baked interventions. Those Writes (and
    the Reads feeding them) are shared by every experiment Forward of the run: the op's own
    writes are appended after them. `noise(std=k*std(SITE))` reads std(SITE) (a Read with
    `stat="std"`) from the run's bare Forward: the same run with no interventions at all.
  - an operation: one experiment per element of the cartesian product of its sweeps (site
    matches, `@ each` positions, `{a, b}` scalars, backpatch pairs), filtered by `where`.
    Row keys hold the sweep columns; `site` (the item's text) when the op lists several.
  - a measured expression: a Metric per experiment Forward (plus, for `normalized`, one on
    the target's and the source's base Forward, named in Row.normalize).
This module is the entry point. Per-operation lowering is in lower_ops.py (and
lower_observe.py for read/lens/measure), the shared state in lowerer.py, expression inlining
in lower_exprs.py; each imports only the ones after it.
Node ids follow the order of the statements and are deterministic.
"""

from __future__ import annotations

from . import ast as A
from .checked import CheckedSpec
from .ir import IRGraph
from .lower_ops import baked_writes, lower_op, rows_of
from .lowerer import Lowerer


def lower(checked: CheckedSpec, compact: bool = True) -> IRGraph:
    """The unoptimized IR of a checked spec: one Forward per experiment (or, for the
    statements lower_sweep.compact_form picks, one sweep Forward per layer), plus the base
    Forwards of the runs they read from, and one Table per operation. `compact=False`
    lowers every statement per experiment (the tests compare the two)."""
    lw = Lowerer(checked, baked_writes, compact)
    for op in checked.spec.operations():
        lower_op(lw, op)
    return lw.ir


def count_rows(checked: CheckedSpec) -> dict[str, int]:
    """Rows per result table, from the sweeps alone (no graph is built)."""
    lw = Lowerer(checked, baked_writes)
    return {A.table_name(op): rows_of(lw, op) for op in checked.spec.operations()}
