"""drop_baselines: an unpatched baseline (Table.unpatched) must never cost a model pass.

Lowering measures every raw column of an intervention on its target (and source) run's base
Forward: the value that means "no effect". That forward is usually computed anyway: a swap
reads its source run there, and share_prefix makes the target's the twin its experiments
start from. Where nothing else uses it (a single experiment, a sweep whose writes start at
the embedding), measuring it would add a pass: this pass removes such a baseline Metric and
its Forward and leaves None in the table's reference (the result then reports no baseline,
and a plot spans its data). share_prefix does not take a forward that only baselines
measure as an existing twin (`lone_baselines`), so it adds a twin exactly where it would
without the baselines, and finds this one there.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from patchc.compiler.ir import Forward, IRGraph, Metric, Node, Table

from ._graph import consumers, consumers_of, nodes_of, rebuild, table_refs


def lone_baselines(nodes: Mapping[str, Node], tables: list[Table],
                   cons: Mapping[str, list[str]] | None = None) -> set[str]:
    """The Forwards that nothing but unpatched baselines uses: every consumer is a Metric
    that only tables' `unpatched` refer to."""
    unpatched = {x for t in tables for _, pair in t.unpatched for x in pair if x}
    if not unpatched:
        return set()
    cons = consumers(nodes) if cons is None else cons
    others = table_refs(dataclasses.replace(t, unpatched=()) for t in tables)
    lone = {m for m in unpatched if m in nodes and m not in others and not cons.get(m)}
    out = set()
    for mid in lone:
        fid = nodes[mid].forward  # type: ignore[union-attr]
        if isinstance(nodes.get(fid), Forward) and all(c in lone for c in cons.get(fid, [])):
            out.add(fid)
    return out


def drop_baselines(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    forwards = lone_baselines(nodes, ir.tables, consumers_of(ir))
    if not forwards:
        return ir
    gone = {nid for nid, n in nodes.items()
            if isinstance(n, Metric) and n.forward in forwards} | forwards

    def keep(x: str | None) -> str | None:
        return None if x in gone else x

    # (a column whose values are all left out stays, as (None, None): the run can say so)
    tables = [dataclasses.replace(t, unpatched=tuple((c, (keep(a), keep(b)))
                                                     for c, (a, b) in t.unpatched))
              for t in ir.tables]
    return rebuild({nid: n for nid, n in nodes.items() if nid not in gone}, tables, like=ir)
