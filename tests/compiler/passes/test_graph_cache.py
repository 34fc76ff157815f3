"""What a NodeGraph derives once and hands on (compiler/passes/_graph.py): each node's
references, the evaluation order and the consumers equal a fresh derivation after every
pass, a graph rebuilt `like` its input with the same edges shares them, and the networkx
graph built from them equals the one the public calls build. Also the cheaper checks the
pipeline makes on every plan: verify's cycle test against networkx's, and the metric
expression walk against the nested one it replaced."""

from __future__ import annotations

import dataclasses
import random

import networkx as nx
import pytest
from passcases import lowered
from test_graph_order import BODY, _graphs, _old_rebuild, _same

from patchc.compiler import ast as A
from patchc.compiler.errors import Span
from patchc.compiler.ir import Forward, IRGraph, Read, Write
from patchc.compiler.ir_verify import _acyclic
from patchc.compiler.passes._graph import (Finder, NodeGraph, consumers, consumers_of, nodes_of,
                                           rebuild, refs, refs_of, topo)
from patchc.compiler.passes.trim_logits import trim_logits
from patchc.compiler.pipeline import PASSES


def _fresh(ir: IRGraph) -> NodeGraph:
    return NodeGraph(nodes_of(ir), list(ir.tables))


@pytest.mark.parametrize("ir", _graphs(), ids=lambda g: f"{len(g.g)}-nodes")
def test_what_a_pass_hands_on_equals_a_fresh_derivation(ir: IRGraph) -> None:
    out = ir
    for p in PASSES:
        out = p(out)
        if isinstance(out, NodeGraph) and not out.built():
            fresh = _fresh(out)
            assert out.refs_by_id() == {nid: refs(n) for nid, n in nodes_of(out).items()}
            assert refs_of(out) is out.refs_by_id()
            assert topo(out) == topo(fresh)
            assert consumers_of(out) == consumers(nodes_of(out))
            assert list(consumers_of(out)) == list(consumers(nodes_of(out)))
        _same(_fresh(out).g, _old_rebuild(out))  # networkx's dicts filled directly


def test_a_graph_rebuilt_like_another_with_its_edges_shares_its_order() -> None:
    ir = PASSES[0](lowered(BODY))  # a NodeGraph
    assert isinstance(ir, NodeGraph)
    order, cons = topo(ir), consumers_of(ir)
    same = rebuild(nodes_of(ir), list(ir.tables), like=ir)
    assert same._order is ir._order and consumers_of(same) is cons
    assert topo(same) == order
    # nodes changed in fields that are no references (logit positions): the same edges
    trimmed = trim_logits(ir)
    assert isinstance(trimmed, NodeGraph) and trimmed._nodes != ir._nodes
    assert consumers_of(trimmed) is cons
    # a node dropped: derived again, and equal to a fresh derivation
    nodes = nodes_of(ir)
    del nodes[next(nid for nid in reversed(order) if not consumers_of(ir)[nid])]
    fewer = rebuild(nodes, list(ir.tables), like=ir)
    assert fewer._order is None and topo(fewer) == topo(_fresh(fewer))
    assert consumers_of(fewer) == consumers(nodes)
    # once its networkx graph is built, a graph derives nothing from its dict any more
    fewer.g  # noqa: B018
    assert fewer._refs is None and topo(fewer) == topo(_fresh(fewer))


def _random_graph(rng: random.Random, n: int, cycle: bool) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for v in range(n):
        for u in rng.sample(range(v), min(v, rng.randint(0, 3))):
            g.add_edge(u, v)
    if cycle:
        u, v = sorted(rng.sample(range(n), 2))
        g.add_edge(v, u) if rng.random() < 0.8 else g.add_edge(u, u)
    return g


def test_the_cycle_test_agrees_with_networkx() -> None:
    rng = random.Random(7)
    for k in range(300):
        g = _random_graph(rng, rng.randint(2, 30), cycle=k % 2 == 1)
        assert _acyclic(g) == nx.is_directed_acyclic_graph(g)
    assert _acyclic(nx.DiGraph())


def _nested(expr: A.MExpr) -> list[A.MExpr]:
    """ast.metric_nodes as it was written: nested generators, depth first."""
    out = [expr]
    if isinstance(expr, A.MBin):
        out += _nested(expr.left) + _nested(expr.right)
    elif isinstance(expr, A.MNeg):
        out += _nested(expr.operand)
    return out


def test_metric_nodes_walks_depth_first_left_to_right() -> None:
    rng = random.Random(3)
    sp = Span(1, 1, 1, 2)

    def expr(depth: int) -> A.MExpr:
        k = rng.random()
        if depth == 0 or k < 0.2:
            return A.MNum(rng.randint(0, 9), sp)
        if k < 0.4:
            return A.MNeg(expr(depth - 1), sp)
        return A.MBin(rng.choice("+-*/"), expr(depth - 1), expr(depth - 1), sp)

    for _ in range(200):
        e = expr(6)
        assert [id(x) for x in A.metric_nodes(e)] == [id(x) for x in _nested(e)]


def test_a_finder_indexes_the_nodes_it_was_given_on_first_use() -> None:
    nodes = nodes_of(PASSES[0](lowered(BODY)))
    finder = Finder(nodes)
    assert finder._index is None  # nothing hashed while nothing is looked for
    expected: dict = {}
    for nid, n in nodes.items():
        if isinstance(n, (Forward, Read, Write)):
            expected.setdefault(n, nid)
    rid, read = next((k, n) for k, n in nodes.items() if isinstance(n, Read))
    nodes[rid] = dataclasses.replace(read, stat="std")  # changed after the finder was made
    assert finder.index == expected
    assert finder.find_or_add(read) not in nodes or nodes[finder.find_or_add(read)] == read
