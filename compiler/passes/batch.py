"""batch: forwards that start at the same layer over the same inputs are stacked along the
batch dimension.

Forwards get one `group` id when they share the run, noise samples, twin, start layer and
start state and narrowing, and none depends on another (they sit at the same
depth of the forward-to-forward dependencies, so a group never waits for one of its own
members). A forward that no later forward depends on (a leaf: an ablation measured and
done) may run as late as any other, so leaves share one depth; that batches, e.g., a
zero-ablation with no inputs and a mean-ablation that waits for its mean.

At run time each member's writes apply only to its block of rows, so a batched member
computes what it would alone. The schedule (compiler/schedule.py) orders the groups
and splits each into chunks that fit the memory budget; a group of one forward gets no id.

Twins (whose full run and key/value cache others reuse) run alone. Forwards whose metrics
generate text (generate, text, seqlogprob) batch only with forwards that generate the same
continuations (the same terms of their metrics): the prompt pass is batched and every row is
decoded together, token by token (runtime/generate.py).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from patchc.compiler import ast as A
from patchc.compiler import printer
from patchc.compiler.ir import Forward, IRGraph, Node

from ._graph import (consumers_of, forward_metrics, generates, nodes_of, rebuild, refs_of,
                     topo)


def _depths(ir: IRGraph, nodes: dict[str, Node]) -> dict[str, int]:
    """Per node, the most forwards on a dependency path ending at it (itself included)."""
    depth: dict[str, int] = {}
    uses = refs_of(ir)
    for nid in topo(ir):
        d = max((depth[p] for p in uses[nid]), default=0)
        depth[nid] = d + (1 if isinstance(nodes[nid], Forward) else 0)
    return depth


def _leaves(ir: IRGraph, nodes: dict[str, Node], cons: Mapping[str, list[str]]) -> set[str]:
    """The forwards no forward depends on, directly or through other nodes."""
    feeds: dict[str, bool] = {}  # does some forward depend on this node?
    for nid in reversed(topo(ir)):
        feeds[nid] = any(isinstance(nodes[c], Forward) or feeds[c] for c in cons[nid])
    return {n for n, f in nodes.items() if isinstance(f, Forward) and not feeds[n]}


def _continuations(nodes: dict[str, Node], cons: Mapping[str, list[str]], fid: str
                   ) -> tuple[str, ...] | None:
    """The generating terms of the forward's metrics (None when it generates nothing)."""
    if not generates(nodes, cons, fid):
        return None
    return tuple(sorted({printer.mexpr(e) for m in forward_metrics(nodes, cons, fid)
                         for e in A.metric_nodes(m.expr) if isinstance(e, A.GENERATING)}))


def batch(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    cons = consumers_of(ir)
    twins = {f.twin for f in nodes.values() if isinstance(f, Forward) and f.twin}
    depth = _depths(ir, nodes)
    # Leaves may all wait until the deepest forward is done: one depth (-1) for all of them
    # keeps every group free of dependencies on itself, and on other groups in a cycle.
    depth.update(dict.fromkeys(_leaves(ir, nodes, cons), -1))
    groups: dict[tuple, list[str]] = {}
    for fid in sorted(nodes, key=lambda x: (x[0], int(x[1:]))):
        f = nodes[fid]
        # A sweep (compiler/ir_sweep.py) is its own batch: the schedule cuts it into chunks.
        if not isinstance(f, Forward) or fid in twins or f.sweep is not None:
            continue
        key = (f.run, f.samples, f.twin, f.start_layer, f.start, f.narrow, depth[fid],
               _continuations(nodes, cons, fid))
        groups.setdefault(key, []).append(fid)
    n = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        for fid in members:
            nodes[fid] = dataclasses.replace(nodes[fid], group=n)  # type: ignore[arg-type]
        n += 1
    return rebuild(nodes, list(ir.tables), like=ir)
