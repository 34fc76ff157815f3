"""verify(): the structural invariants of an IR graph that lowering and every optimizer pass
must keep (acyclic; each node's references are nodes with an edge to it; tables refer to
nodes that exist; the optimizer's Forward fields are consistent). A broken one raises
PlanError naming it."""

from __future__ import annotations

import networkx as nx

from .errors import PlanError
from .ir import ID_PREFIX, Backward, Estimate, Forward, IRGraph, Metric, Read, Select, Vector, \
    Write


def verify(ir: IRGraph) -> None:
    """Structural invariants every pass must keep. Raises PlanError naming the broken one."""
    g = ir.g
    if not _acyclic(g):
        cycle = nx.find_cycle(g)
        raise PlanError("E501", f"the plan has a cycle: {' -> '.join(a for a, _ in cycle)} "
                        "(a run reads its own later value)")
    pred = g._pred  # (networkx's own dicts: its views make an object per lookup)
    for nid, data in g.nodes(data=True):
        node = data.get("node")
        if node is None or ID_PREFIX.get(type(node)) != nid[0]:
            raise PlanError("E502", f"IR node {nid} has no node object of its kind")
        preds = pred[nid]
        refs: tuple[str, ...] = ()
        if isinstance(node, Forward):
            refs = node.writes + node.inputs + tuple(
                r for r in (node.twin, node.start, node.same_as) if r)
            refs += node.sparse
            _verify_forward(ir, nid, node)
        elif isinstance(node, Read):
            refs = (node.forward,)
        elif isinstance(node, Write):
            refs = node.inputs + ((node.gate,) if node.gate else ())
        elif isinstance(node, (Vector, Estimate)):
            refs = node.inputs
        elif isinstance(node, Select):
            refs = node.rows + (node.reference,) + node.normalize
        elif isinstance(node, Metric):
            refs = (node.forward,) + tuple(r for r in (node.reference, node.lens) if r)
        elif isinstance(node, Backward):
            refs = (node.metric,) + node.wrt
        for r in refs:
            if r not in g:
                raise PlanError("E503", f"IR node {nid} refers to missing node {r}")
            if r not in preds:
                raise PlanError("E504", f"IR node {nid} uses {r} without an edge from it")
    for table in ir.tables:
        refs = [ref for row in table.rows for _, ref in row.values]
        refs += [r for row in table.rows for _, pair in row.normalize for r in pair if r]
        for block in table.sweeps:
            refs += [ref for _, ref in block.values]  # (its forward: pruned if unmeasured)
            refs += [r for _, pair in block.normalize for r in pair if r]
        for p in table.pairs:
            refs += [p.estimate, p.metric] + [r for r in p.normalize or () if r]
        refs += [table.select] if table.select else []
        refs += [r for _, pair in table.unpatched for r in pair if r]
        for ref in refs:
            if ref not in g:
                raise PlanError("E505", f"table {table.name} refers to missing node {ref}")


def _acyclic(g: nx.DiGraph) -> bool:
    """Whether `g` has no cycle: Kahn's algorithm removes every node (as
    nx.is_directed_acyclic_graph decides, in plain dicts: it ran on every plan)."""
    waiting = {nid: len(p) for nid, p in g._pred.items()}
    ready = [nid for nid, k in waiting.items() if k == 0]
    succ = g._succ
    done = 0
    while ready:
        done += 1
        for s in succ[ready.pop()]:
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    return done == len(waiting)


def _verify_forward(ir: IRGraph, nid: str, node: Forward) -> None:
    """The optimizer's fields of a Forward are consistent (see the module docstring)."""
    g = ir.g
    if node.start is not None:
        read = g.nodes[node.start]["node"] if node.start in g else None
        if not isinstance(read, Read) or node.twin is None or read.forward != node.twin:
            raise PlanError("E506", f"IR node {nid} starts from {node.start}, which is not a "
                            "Read of its twin")
        if node.start_layer < 1:
            raise PlanError("E506", f"IR node {nid} has a start state but start layer "
                            f"{node.start_layer}")
    elif node.start_layer:
        raise PlanError("E506", f"IR node {nid} starts at layer {node.start_layer} without a "
                        "start state")
    if node.twin is not None:
        twin = g.nodes[node.twin]["node"] if node.twin in g else None
        if not isinstance(twin, Forward) or twin.run != node.run or \
                twin.writes != node.writes[:len(twin.writes)]:
            raise PlanError("E507", f"IR node {nid}: twin {node.twin} is not a forward of "
                            "the same run with a prefix of its writes")
        if twin.twin is not None or twin.narrow or twin.sweep is not None:
            raise PlanError("E507", f"IR node {nid}: twin {node.twin} is not computed in full")
    if node.narrow and node.twin is None:
        raise PlanError("E508", f"IR node {nid} is narrowed without a twin")
