"""dedupe: identical nodes become one.

Two forwards of the same run with the same writes (in the same order) compute the same thing,
whatever experiment they came from: the clean run that 144 swaps read is computed once, and
so are the Reads, Writes, Vectors, Metrics, Backwards and Estimates that are then equal.
Nodes are visited in evaluation order, each after the nodes it uses have been merged, so
equality propagates up the graph in one sweep; the earliest node of a class is kept.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Hashable

from patchc.compiler import printer
from patchc.compiler.ir import Forward, IRGraph, Metric, Node, Vector

from ._graph import nodes_of, rebuild, remap, remap_tables, topo


# A Forward's fields but `experiment`, which only says which operation made the forward (it
# changes nothing run): two forwards are the same computation when these are equal.
_SAME_RUN = operator.attrgetter(*(f.name for f in dataclasses.fields(Forward)
                                  if f.compare and f.name != "experiment"))


def _key(node: Node, printed: dict[int, str]) -> Hashable:
    if isinstance(node, Forward):
        return (Forward, _SAME_RUN(node))
    if isinstance(node, Metric):
        # AST expressions carry spans: compare their printed form, as lowering does (printed
        # once per expression object: the experiments of a statement share theirs).
        text = printed.get(id(node.expr))
        if text is None:
            text = printed[id(node.expr)] = printer.mexpr(node.expr)
        return ("metric", node.forward, node.name, text, node.pos, node.reference, node.lens)
    if isinstance(node, Vector):
        return ("vector", node.name, printer.vexpr(node.expr), node.dim, node.inputs)
    return node


def dedupe(ir: IRGraph) -> IRGraph:
    canon: dict[str, str] = {}
    seen: dict[Any, str] = {}
    kept: dict[str, Node] = {}
    printed: dict[int, str] = {}  # (ids of expressions the graph holds throughout)
    order = topo(ir)
    given = nodes_of(ir)
    for nid in order:
        node = given[nid]
        if canon:
            node = remap(node, canon)
        first = seen.setdefault(_key(node, printed), nid)  # (one hash of the key)
        if first != nid:
            canon[nid] = first
            continue
        kept[nid] = node
    # The input's node order; nothing merged, the same graph: its evaluation order too.
    return rebuild({nid: kept[nid] for nid in given if nid in kept},
                   remap_tables(ir.tables, canon), like=ir, order=None if canon else order)
