"""What a table's columns are measured against: the baselines a `normalized` column maps to
0 and 1, and a raw column's runs measured unpatched (both the means over every example, for
the printed tables, the manifest and the plots)."""

from __future__ import annotations

import math
from typing import Any

from patchc.compiler.ir import IRGraph, Table

from .tables import example_mean


def table_baselines(ir: IRGraph, table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """For each normalized column: what 0 and 1 mean (`{"0": {"run": .., "value": ..},
    "1": {...}}`), the means over every example of the runs' unpatched values. Without a
    source run (`m / m_target`), 0 is the value 0 and 1 the target run's value."""
    out: dict[str, Any] = {}
    norms = [(col, ts) for row in table.rows for col, ts in row.normalize]
    norms += [(col, ts) for block in table.sweeps for col, ts in block.normalize]
    # compare: every pair of a normalized measure holds its (target, source) metrics; keyed
    # by the measure's name (`ld`), as a row table's normalized column is
    norms += [(dict(p.key).get("metric") or ir.node(p.metric).name,  # type: ignore[union-attr]
               p.normalize) for p in table.pairs if p.normalize is not None]
    for col, (target, source) in norms:
        if col in out:
            continue
        t_run = ir.node(target).forward  # type: ignore[union-attr]
        # evaluate: 0 is the target run with every component patched, the empty circuit
        run0 = "empty circuit" if table.op == "evaluate" else ir.node(t_run).run  # type: ignore
        zero = {"run": run0, "value": example_mean(values[target])}
        if source is None:
            out[col] = {"0": {"run": None, "value": 0.0}, "1": zero}
            continue
        s_run = ir.node(source).forward  # type: ignore[union-attr]
        out[col] = {"0": zero, "1": {"run": ir.node(s_run).run,  # type: ignore
                                     "value": example_mean(values[source])}}
    return out


def unpatched_left_out(ir: IRGraph, table: Table, values: dict[str, Any]) -> dict[str, str]:
    """The raw columns of an intervention table whose unpatched target value the plan left
    out (it would have cost a model pass of its own), each with its target run."""
    run = _target_run(ir, table)
    return {col: run for col, (target, _) in table.unpatched
            if run is not None and (target is None or target not in values)}


def _target_run(ir: IRGraph, table: Table) -> str | None:
    """The run an intervention table's experiments patch: the run of the forward of any of
    its measured values."""
    refs = [nid for row in table.rows for _, nid in row.values] + \
        [nid for block in table.sweeps for _, nid in block.values]
    for nid in refs:
        forward = getattr(ir.node(nid), "forward", None) if nid in ir.g else None
        if forward is not None and hasattr(ir.node(forward), "run"):
            return ir.node(forward).run  # type: ignore[union-attr]
    return None


def table_unpatched(ir: IRGraph, table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """For each raw column of an intervention (Table.unpatched): the metric on its runs as
    they are, unpatched, `{"target": {"run": .., "value": ..}, "source": {...}}` (the mean
    over every example; `source` only where the operation has a source run and the plan ran
    it). The target's value is what "no effect" means for that column. A side the plan left
    out (it would have cost a model pass) or whose mean is not a number is absent."""
    out: dict[str, Any] = {}
    for col, refs in table.unpatched:
        sides = {}
        for side, ref in zip(("target", "source"), refs):
            if ref is None or ref not in values:
                continue
            value = example_mean(values[ref])
            if math.isfinite(value):
                run = ir.node(ir.node(ref).forward).run  # type: ignore[union-attr]
                sides[side] = {"run": run, "value": value}
        if sides:
            out[col] = sides
    return out
