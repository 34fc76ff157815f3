"""prune_reads: keep only what a result needs.

A node survives if a table refers to it or something that survives uses it: Reads that no
Write, Vector, Estimate or Backward consumes are not cached, and forwards, vectors and
writes that feed nothing are not run. (Lowering makes one Read per site and positions that
a consumer names, so after dedupe what is left to remove is what no table reaches.)
"""

from __future__ import annotations

from patchc.compiler.ir import IRGraph

from ._graph import nodes_of, rebuild, refs_of, table_refs


def prune_reads(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    live: set[str] = set()
    uses = refs_of(ir)
    stack = [r for r in table_refs(ir.tables) if r in nodes]
    while stack:
        nid = stack.pop()
        if nid in live:
            continue
        live.add(nid)
        stack += [r for r in uses[nid] if r not in live]
    if len(live) == len(nodes):
        return ir  # nothing dead: the input, unchanged (passes never mutate a graph)
    return rebuild({nid: n for nid, n in nodes.items() if nid in live}, list(ir.tables),
                   like=ir)
