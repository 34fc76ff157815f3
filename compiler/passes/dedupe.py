"""dedupe: identical nodes become one.

Two forwards of the same run with the same writes (in the same order) compute the same thing,
whatever experiment they came from: the clean run that 144 swaps read is computed once, and
so are the Reads, Writes, Vectors, Metrics, Backwards and Estimates that are then equal.
Nodes are visited in evaluation order, each after the nodes it uses have been merged, so
equality propagates up the graph in one sweep; the earliest node of a class is kept.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable

from patchc.compiler import printer
from patchc.compiler.ir import Forward, IRGraph, Metric, Node, Vector

from ._graph import nodes_of, rebuild, remap, remap_tables, topo


def _key(node: Node) -> Hashable:
    if isinstance(node, Forward):
        # `experiment` only says which operation made the forward; it changes nothing run.
        return dataclasses.replace(node, experiment=None)
    if isinstance(node, Metric):
        # AST expressions carry spans: compare their printed form, as lowering does.
        return ("metric", node.forward, node.name, printer.mexpr(node.expr), node.pos,
                node.reference, node.lens)
    if isinstance(node, Vector):
        return ("vector", node.name, printer.vexpr(node.expr), node.dim, node.inputs)
    return node


def dedupe(ir: IRGraph) -> IRGraph:
    canon: dict[str, str] = {}
    seen: dict[Any, str] = {}
    kept: dict[str, Node] = {}
    for nid in topo(ir):
        node = remap(ir.node(nid), canon)
        key = _key(node)
        if key in seen:
            canon[nid] = seen[key]
            continue
        seen[key] = nid
        kept[nid] = node
    order = nodes_of(ir)  # keep the input's node order
    return rebuild({nid: kept[nid] for nid in order if nid in kept},
                   remap_tables(ir.tables, canon))
