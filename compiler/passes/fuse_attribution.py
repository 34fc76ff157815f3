"""fuse_attribution: one backward per (metric, rules).

Every `attribute`/`compare` over the same (A, B, metric) differentiates the same metric of
B's forward; after dedupe those share one Metric node. Backward nodes with the same metric
and rules become one whose `wrt` is the union (in first-seen order), so all those estimates
share one forward+backward pass; a different rule set (grad, lrp, lrp_ah) stays a separate
backward.
"""

from __future__ import annotations

from patchc.compiler.ir import Backward, IRGraph

from ._graph import nodes_of, rebuild, remap, remap_tables


def fuse_attribution(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    keep: dict[tuple[str, str], str] = {}
    merged: dict[str, str] = {}
    for nid in sorted(nodes, key=lambda x: (x[0], int(x[1:]))):
        b = nodes[nid]
        if not isinstance(b, Backward):
            continue
        key = (b.metric, b.rules)
        if key not in keep:
            keep[key] = nid
            continue
        first = keep[key]
        old = nodes[first]
        assert isinstance(old, Backward)
        nodes[first] = Backward(old.metric, tuple(dict.fromkeys(old.wrt + b.wrt)), old.rules)
        merged[nid] = first
        del nodes[nid]
    if not merged:
        return ir  # nothing to fuse: the input, unchanged (passes never mutate a graph)
    nodes = {nid: remap(n, merged) for nid, n in nodes.items()}
    return rebuild(nodes, remap_tables(ir.tables, merged), like=ir)
