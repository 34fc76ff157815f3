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
from .lower_circuits import lower_circuit, lower_evaluate, rows_of_circuit
from .lower_ops import baked_writes, lower_op, rows_of
from .lowerer import Lowerer


def lower(checked: CheckedSpec) -> IRGraph:
    """The unoptimized IR of a checked spec: one Forward per experiment, plus the base
    Forwards of the runs they read from, and one Table per operation and circuit."""
    lw = Lowerer(checked, baked_writes)
    for s in checked.spec.statements:
        if isinstance(s, A.CircuitDecl):
            lower_circuit(lw, s)
        elif isinstance(s, A.Evaluate):
            lower_evaluate(lw, s)
        elif isinstance(s, A.OPERATIONS):
            lower_op(lw, s)
    return lw.ir


def count_rows(checked: CheckedSpec) -> dict[str, int]:
    """Rows per result table, from the sweeps alone (no graph is built)."""
    lw = Lowerer(checked, baked_writes)
    out: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for s in checked.spec.statements:
        if isinstance(s, A.CircuitDecl):
            out[s.name.value] = rows_of_circuit(lw, s, out[s.table.value])
            sizes[s.name.value] = len(s.sizes)
        elif isinstance(s, A.Evaluate):
            out[A.table_name(s)] = sizes[s.circuit.value]
        elif isinstance(s, A.OPERATIONS):
            out[A.table_name(s)] = rows_of(lw, s)
    return out
