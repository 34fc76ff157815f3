"""Helpers the optimization passes share: node references, rebuilding a graph from nodes,
and (from _facts.py) the facts about sites and metrics the passes decide on.

Every edge of an IR graph is a reference held in a node's fields (ir.verify checks that each
reference has its edge, and lowering adds no other edges), so a pass works on a plain
`{id: node}` dict and `rebuild` derives the edges again. Passes never mutate their input.

What a pass returns is a NodeGraph: the dict itself, with the networkx graph built only when
something outside the passes asks for it (`g`). The next pass reads the dict and orders it
with `topo` (its own topological sort over the references), so a pipeline of eight passes
builds one networkx graph, not eight: on a small model that was most of planning a run.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, TypeVar

import networkx as nx

from patchc.compiler.ir import (
    Backward,
    Estimate,
    Forward,
    IRGraph,
    Metric,
    Node,
    Pair,
    Read,
    Row,
    Select,
    Table,
    Vector,
    Write,
)

# The facts about sites and metrics the passes decide on (re-exported: passes import them here).
from ._facts import (  # noqa: F401
    POST_SITES,
    before_layer,
    differentiated,
    forward_metrics,
    generates,
    logits_only,
    needs,
    site_layer,
)

# The fields of each node kind that hold node ids (a str, None, or a tuple of str).
REF_FIELDS: dict[type, tuple[str, ...]] = {
    Forward: ("writes", "inputs", "twin", "start", "sparse", "same_as"),
    Read: ("forward",),
    Write: ("inputs", "gate"),
    Vector: ("inputs",),
    Metric: ("forward", "reference", "lens"),
    Backward: ("metric", "wrt"),
    Estimate: ("inputs",),
    Select: ("rows", "reference", "normalize"),
}

def refs(node: Node) -> tuple[str, ...]:
    """The ids `node` refers to, in field order (these are exactly its in-edges)."""
    if type(node) is Read:  # (the most frequent kind: one reference)
        return (node.forward,)
    out: list[str] = []
    for name in REF_FIELDS[type(node)]:
        v = getattr(node, name)
        if isinstance(v, tuple):
            out += v
        elif v is not None:
            out.append(v)
    return tuple(dict.fromkeys(out)) if len(out) > 1 else tuple(out)


def remap(node: Node, m: Mapping[str, str]) -> Node:
    """`node` with every referenced id replaced through `m` (ids not in `m` stay)."""
    changes: dict[str, Any] = {}
    for name in REF_FIELDS[type(node)]:
        v = getattr(node, name)
        if isinstance(v, tuple):
            # No deduplication: a forward may apply one write twice, and an estimate's
            # inputs are positional (A, B) pairs.
            new = tuple(m.get(x, x) for x in v)
            if new != v:
                changes[name] = new
        elif v is not None and m.get(v, v) != v:
            changes[name] = m[v]
    return dataclasses.replace(node, **changes) if changes else node


def remap_tables(tables: Iterable[Table], m: Mapping[str, str]) -> list[Table]:
    if not m:
        return list(tables)  # (nothing renamed: the same tables)
    def r(x: str | None) -> str | None:
        return m.get(x, x) if x is not None else None

    out = []
    for t in tables:
        rows = tuple(Row(row.key, tuple((c, r(v)) for c, v in row.values),  # type: ignore[misc]
                         tuple((c, (r(a), r(b))) for c, (a, b) in row.normalize))  # type: ignore[misc]
                     for row in t.rows)
        pairs = tuple(Pair(p.key, r(p.estimate), r(p.metric),  # type: ignore[arg-type]
                           (r(p.normalize[0]), r(p.normalize[1])) if p.normalize else None,  # type: ignore[arg-type]
                           p.members)
                      for p in t.pairs)
        sweeps = tuple(dataclasses.replace(
            s, forward=r(s.forward), values=tuple((c, r(v)) for c, v in s.values),
            normalize=tuple((c, (r(a), r(b))) for c, (a, b) in s.normalize))
            for s in t.sweeps)
        unpatched = tuple((c, (r(a), r(b))) for c, (a, b) in t.unpatched)
        out.append(dataclasses.replace(t, rows=rows, pairs=pairs, sweeps=sweeps,
                                       select=r(t.select), unpatched=unpatched))
    return out


N = TypeVar("N")


class NodeGraph(IRGraph):
    """An IRGraph held as a `{id: node}` dict and its tables (what `rebuild` makes). Its
    edges are the nodes' references; the networkx graph `g` holding them is built on first
    use, after which `g` is the graph (whoever changes `g` changes this graph).

    Until then the graph also keeps what the passes derive from its references (each node's
    references, the evaluation order, the consumers), made on first use. A graph rebuilt
    `like` another inherits them where its nodes are the same objects: a pass that only
    changes nodes' fields (narrow, group, logit positions) leaves the edges, and so the
    order and the consumers, as they were, and the next pass does not derive them again."""

    def __init__(self, nodes: dict[str, Node], tables: list[Table],
                 like: IRGraph | None = None) -> None:
        self._nodes = nodes
        self._tables = tables
        self._g: nx.DiGraph | None = None
        self._attrs: dict[str, dict[str, Any]] | None = None  # g's own node attributes
        self._refs: dict[str, tuple[str, ...]] | None = None
        self._order: list[str] | None = None
        self._cons: dict[str, list[str]] | None = None
        if isinstance(like, NodeGraph) and like._refs is not None and not like.built():
            self._inherit(like)

    def _inherit(self, like: "NodeGraph") -> None:
        old, before = like._nodes, like._refs
        assert before is not None
        self._refs = {nid: before[nid] if old.get(nid) is n else refs(n)
                      for nid, n in self._nodes.items()}
        # The same ids in the same order with the same references: the same edges.
        if self._refs == before and list(self._refs) == list(before):
            self._order, self._cons = like._order, like._cons

    def refs_by_id(self) -> dict[str, tuple[str, ...]]:
        """Each node's references (`refs`), by id; shared: callers must not change it."""
        if self._refs is None:
            self._refs = {nid: refs(n) for nid, n in self._nodes.items()}
        return self._refs

    @property
    def g(self) -> nx.DiGraph:  # type: ignore[override]
        if self._g is None:
            self._g = _digraph(self._nodes, self.refs_by_id(), self._tables)
            IRGraph.__init__(self, self._g)  # (the id counters `add` continues from)
            # The attribute dicts g holds (not copies): `node` sees a node replaced in g.
            self._attrs = dict(self._g.nodes(data=True))
            self._refs = self._order = self._cons = None  # g may change from now on
        return self._g

    @g.setter
    def g(self, graph: nx.DiGraph) -> None:
        self._g = graph

    def built(self) -> bool:
        return self._g is not None

    def add(self, node: Node, deps: tuple[str, ...] | list[str] = ()) -> str:
        self.g  # noqa: B018 - built first: `add` continues its id counters
        nid = super().add(node, deps)
        self._attrs = dict(self.g.nodes(data=True))
        return nid

    def node(self, nid: str) -> Node:
        # (The runtime and the schedule ask for nodes thousands of times a run.)
        attrs = self._attrs
        return self._nodes[nid] if attrs is None else attrs[nid]["node"]

    def of_type(self, cls: type[N]) -> Iterator[tuple[str, N]]:
        if self._g is not None:
            yield from super().of_type(cls)
            return
        for nid, n in self._nodes.items():
            if isinstance(n, cls):
                yield nid, n

    @property
    def tables(self) -> list[Table]:
        return self._tables if self._g is None else super().tables


def _digraph(nodes: Mapping[str, Node], refs_of: Mapping[str, tuple[str, ...]],
             tables: list[Table]) -> nx.DiGraph:
    """The networkx graph of `nodes` and their references: what `add_nodes_from` (with a
    `node` attribute each) and then `add_edges_from` (each node's references in order) make,
    written into networkx's documented adjacency dicts directly (node, successor and
    predecessor dicts; an edge's attribute dict shared by both sides). Through the public
    calls this was most of building the graph. A reference to an id that is not a node
    adds that id without attributes, as add_edges_from does (verify reports it)."""
    g = nx.DiGraph(tables=tables)
    attrs, succ, pred = g._node, g._succ, g._pred
    for nid, n in nodes.items():
        attrs[nid] = {"node": n}
        succ[nid] = {}
        pred[nid] = {}
    for nid in nodes:
        into = pred[nid]
        for r in refs_of[nid]:
            if r not in succ:
                attrs[r], succ[r], pred[r] = {}, {}, {}
            edge: dict[str, Any] = {}
            succ[r][nid] = edge
            into[r] = edge
    return g


def nodes_of(ir: IRGraph) -> dict[str, Node]:
    """The graph's nodes by id, in the graph's insertion order (a new dict)."""
    if isinstance(ir, NodeGraph) and not ir.built():
        return dict(ir._nodes)
    return {nid: data["node"] for nid, data in ir.g.nodes(data=True)}


def refs_of(ir: IRGraph) -> Mapping[str, tuple[str, ...]]:
    """`refs` of every node of the graph, by id (made once per graph a pass returns):
    shared, so callers must not change it."""
    if isinstance(ir, NodeGraph) and not ir.built():
        return ir.refs_by_id()
    return {nid: refs(n) for nid, n in nodes_of(ir).items()}


def rebuild(nodes: Mapping[str, Node], tables: list[Table], like: IRGraph | None = None,
            order: list[str] | None = None) -> IRGraph:
    """A new graph holding `nodes` (ids kept) with the edges their references imply. `like`:
    the graph the nodes came from (what the new graph can reuse of it: NodeGraph). `order`:
    `topo` of a graph with these very nodes and edges, when the caller has it."""
    out = NodeGraph(dict(nodes), list(tables), like)
    if order is not None:
        out._order = list(order)
    return out


def id_order(nid: str) -> tuple[int, int]:
    """The deterministic order the interpreters evaluate in: by id number, then kind."""
    return (int(nid[1:]), ord(nid[0]))


def topo(ir: IRGraph) -> list[str]:
    """The node ids in dependency order, the smallest `id_order` first whenever several are
    ready (networkx's lexicographical_topological_sort with that key, without the graph)."""
    if isinstance(ir, NodeGraph) and not ir.built():
        if ir._order is None:
            ir._order = ordered(ir.refs_by_id())
        return list(ir._order)
    # (networkx's own predecessor dicts: its views make an object per node)
    return ordered({nid: tuple(p) for nid, p in ir.g._pred.items()})


def ordered(preds: Mapping[Hashable, Iterable[Hashable]],
            key: Callable[[Any], Any] = id_order) -> list[Any]:
    """Kahn's algorithm over `preds` (node -> the nodes it depends on), taking the ready node
    of smallest `key` first, ties in `preds`' order: networkx's
    lexicographical_topological_sort(G, key), G's nodes inserted in that order. Raises
    NetworkXUnfeasible on a cycle, as networkx does."""
    waiting: dict[Hashable, int] = {}
    users: dict[Hashable, list[Hashable]] = {n: [] for n in preds}
    for n, ps in preds.items():
        ps = set(ps)
        waiting[n] = len(ps)
        for p in ps:
            if p not in users:  # a missing node: networkx would add it, with no node object
                users[p], waiting[p] = [], 0
            users[p].append(n)
    index = {n: i for i, n in enumerate(users)}
    ready = [(key(n), index[n], n) for n, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    out: list[Any] = []
    while ready:
        n = heapq.heappop(ready)[2]
        out.append(n)
        for u in users[n]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (key(u), index[u], u))
    if len(out) != len(waiting):
        raise nx.NetworkXUnfeasible("Graph contains a cycle or graph changed during iteration")
    return out


def new_id(nodes: Mapping[str, Node], node: Node) -> str:
    """A fresh id for `node` (one past the largest of its kind)."""
    prefix = {Forward: "f", Read: "r", Write: "w", Vector: "v", Metric: "m", Backward: "b",
              Estimate: "e", Select: "s"}[type(node)]
    n = max((int(k[1:]) for k in nodes if k[0] == prefix), default=-1) + 1
    return f"{prefix}{n}"


class Finder:
    """Finds a node equal to a given one in a `{id: node}` dict, or adds it under a fresh id
    (an index over the dict, kept up to date by `find_or_add`). Nodes in `exclude` are never
    found: an equal node is added beside them."""

    def __init__(self, nodes: dict[str, Node], exclude: frozenset[str] = frozenset()) -> None:
        self.nodes = nodes
        self.next: dict[str, int] = {}
        for nid in nodes:
            self.next[nid[0]] = max(self.next.get(nid[0], 0), int(nid[1:]) + 1)
        # The index of the nodes as they are now, made on the first `find_or_add` (hashing
        # every node is most of a pass that finds nothing to share).
        self._index: dict[Node, str] | None = None
        self._given = [(nid, n) for nid, n in nodes.items()
                       if isinstance(n, (Forward, Read, Write)) and nid not in exclude]

    @property
    def index(self) -> dict[Node, str]:
        if self._index is None:
            self._index = {}
            for nid, n in self._given:  # (Forward, Read, Write: the kinds passes add)
                self._index.setdefault(n, nid)
        return self._index

    def find_or_add(self, node: Node) -> str:
        nid = self.index.get(node)
        if nid is not None and self.nodes.get(nid) == node:
            return nid
        prefix = new_id({}, node)[0]
        nid = f"{prefix}{self.next.get(prefix, 0)}"
        self.next[prefix] = self.next.get(prefix, 0) + 1
        self.nodes[nid] = node
        self.index[node] = nid
        return nid


def consumers(nodes: Mapping[str, Node]) -> dict[str, list[str]]:
    """id -> the ids of the nodes that refer to it."""
    return _consumers({nid: refs(node) for nid, node in nodes.items()})


def consumers_of(ir: IRGraph) -> Mapping[str, list[str]]:
    """`consumers(nodes_of(ir))`, made once per graph a pass returns (and kept by a graph
    rebuilt `like` it with the same edges): shared, so callers must not change it."""
    if isinstance(ir, NodeGraph) and not ir.built():
        if ir._cons is None:
            ir._cons = _consumers(ir.refs_by_id())
        return ir._cons
    return consumers(nodes_of(ir))


def _consumers(refs_of: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {nid: [] for nid in refs_of}
    for nid, rs in refs_of.items():
        for r in rs:
            out.setdefault(r, []).append(nid)
    return out


def table_refs(tables: Iterable[Table]) -> set[str]:
    out: set[str] = set()
    for t in tables:
        for row in t.rows:
            out |= {v for _, v in row.values}
            out |= {x for _, pair in row.normalize for x in pair if x}
        for p in t.pairs:
            out |= {p.estimate, p.metric} | {x for x in p.normalize or () if x}
        for s in t.sweeps:
            out |= {v for _, v in s.values}
            out |= {x for _, pair in s.normalize for x in pair if x}
        out |= {t.select} if t.select else set()
        out |= {x for _, pair in t.unpatched for x in pair if x}
    return out
