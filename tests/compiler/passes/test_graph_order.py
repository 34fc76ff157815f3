"""The passes' graph machinery (compiler/passes/_graph.py): `topo` orders a graph exactly as
networkx's lexicographical_topological_sort by `id_order` did, and a NodeGraph (what a pass
returns) builds the same networkx graph the old `rebuild` built: nodes, edges, and the
order of every node's successors and predecessors (the runtime iterates them)."""

from __future__ import annotations

import networkx as nx
import pytest
from passcases import ROOT, lowered

from patchc.api import compile as compile_spec
from patchc.compiler.ir import Forward, IRGraph, Read
from patchc.compiler.passes._graph import (NodeGraph, id_order, nodes_of, ordered, rebuild,
                                           refs, topo)
from patchc.compiler.pipeline import PASSES, optimize
from patchc.compiler.schedule import _units

SPECS = sorted((ROOT / "examples" / "language").glob("*.patch")) + \
    [ROOT / "examples" / "ioi_attribute.patch", ROOT / "examples" / "ioi_ablate.patch"]

BODY = """
swap L{1,3}.H{0,1}.z @ last from clean into corrupt measure ld normalized as heads
backpatch L3.resid_post -> L1.resid_post @ last in corrupt from clean measure ld as back
attribute L*.resid_pre @ each, L*.attn.out from clean into corrupt using atp measure ld as a
ablate L*.mlp.out in clean with mean(corrupt) measure ld as m
"""


def _old_rebuild(ir: IRGraph) -> nx.DiGraph:
    """What rebuild made before NodeGraph: add_node per node, then add_edge per reference."""
    nodes = nodes_of(ir)
    g = nx.DiGraph(tables=list(ir.tables))
    for nid, node in nodes.items():
        g.add_node(nid, node=node)
    for nid, node in nodes.items():
        for r in refs(node):
            g.add_edge(r, nid)
    return g


def _graphs() -> list[IRGraph]:
    out = [compile_spec(p).ir for p in SPECS] + [lowered(BODY), lowered(BODY, compact=True)]
    return [g for g in out if len(g.g)]


def _same(a: nx.DiGraph, b: nx.DiGraph) -> None:
    assert list(a.nodes(data=True)) == list(b.nodes(data=True))
    assert list(a.edges) == list(b.edges)
    for n in a.nodes:
        assert list(a.successors(n)) == list(b.successors(n))
        assert list(a.predecessors(n)) == list(b.predecessors(n))
    assert a.graph["tables"] == b.graph["tables"]


@pytest.mark.parametrize("ir", _graphs(), ids=lambda g: f"{len(g.g)}-nodes")
def test_topo_and_rebuild_equal_networkx_after_every_pass(ir: IRGraph) -> None:
    expected = list(nx.lexicographical_topological_sort(ir.g, key=id_order))
    assert topo(ir) == expected
    out = ir
    for p in PASSES:
        out = p(out)
        built = NodeGraph(nodes_of(out), list(out.tables))
        # topo from the references alone (not built) equals networkx's on the built graph
        assert topo(built) == list(nx.lexicographical_topological_sort(
            _old_rebuild(out), key=id_order))
        assert not built.built()
        _same(built.g, _old_rebuild(out))
        assert topo(built) == topo(out)


def test_node_graph_reads_its_dict_until_built_then_its_graph() -> None:
    ir = lowered(BODY)
    ng = rebuild(nodes_of(ir), list(ir.tables))
    assert isinstance(ng, NodeGraph) and not ng.built()
    rid, read = next(ng.of_type(Read))
    assert ng.node(rid) == read and ng.tables == ir.tables
    assert ng.count(Read) == ir.count(Read)
    new = ng.add(Read(read.forward, read.site, read.pos), [read.forward])  # builds g
    assert ng.built() and new in ng.g and ng.node(new) == read
    assert int(new[1:]) == max(int(r[1:]) for r, _ in ir.of_type(Read)) + 1
    assert nodes_of(ng)[new] == read  # from the graph now
    other = Read(read.forward, read.site, read.pos)
    ng.g.nodes[rid]["node"] = other  # a node replaced in g is what `node` answers
    assert ng.node(rid) is other


def test_ordered_takes_the_smallest_ready_id_and_refuses_a_cycle() -> None:
    assert ordered({"f2": (), "r0": ("f2",), "f1": (), "m0": ("r0", "f1")}) == \
        ["f1", "f2", "r0", "m0"]
    with pytest.raises(nx.NetworkXUnfeasible):
        ordered({"f0": ("r0",), "r0": ("f0",)})


def test_a_pass_never_mutates_a_node_graph_it_is_given() -> None:
    ir = lowered(BODY)
    out = PASSES[0](ir)
    before = dict(out._nodes) if isinstance(out, NodeGraph) else None
    for p in PASSES[1:]:
        p(out)
    assert before is None or out._nodes == before


def _nx_units(ir: IRGraph, naive: bool) -> list[tuple[str, list[str]]]:
    """schedule._units as it was: the unit graph in networkx, sorted lexicographically."""
    unit: dict[str, tuple] = {}
    for nid, node in ir.of_type(Forward):
        unit[nid] = ("g", node.group) if node.group is not None and not naive else ("f", nid)
    for nid, node in nodes_of(ir).items():
        if isinstance(node, Read):
            unit[nid] = unit[node.forward]
        elif not isinstance(node, Forward):
            unit[nid] = ("n", nid)
    cg = nx.DiGraph()
    members: dict[tuple, list[str]] = {}
    for nid in sorted(ir.g.nodes, key=lambda x: (int(x[1:]), x[0])):
        cg.add_node(unit[nid])
        if isinstance(ir.node(nid), Forward):
            members.setdefault(unit[nid], []).append(nid)
    for u, v in ir.g.edges:
        if unit[u] != unit[v]:
            cg.add_edge(unit[u], unit[v])

    def first(u: tuple) -> tuple[int, int]:
        ids = members.get(u) or [u[1]]
        return (0 if u[0] == "n" and not naive else 1, min(int(i[1:]) for i in ids))

    out = []
    for u in nx.lexicographical_topological_sort(cg, key=first):
        if u in members:
            out.append(("forward", members[u]))
        elif (kind := type(ir.node(u[1])).__name__.lower()) in (
                "vector", "metric", "backward", "estimate", "select"):
            out.append((kind, [u[1]]))
    return out


@pytest.mark.parametrize("ir", _graphs(), ids=lambda g: f"{len(g.g)}-nodes")
def test_schedule_units_equal_the_networkx_order(ir: IRGraph) -> None:
    assert _units(ir, naive=True) == _nx_units(ir, naive=True)
    opt = optimize(ir)
    assert _units(opt, naive=False) == _nx_units(opt, naive=False)
