"""Compact edge attribution: one IR value for every edge of an `attribute EDGES ... using eap`.

`attribute * -> * using eap` on a 12-layer model has some 32,000 edges; one Estimate node per
edge made planning cost more than the model. Lowered compactly (compiler/lower_edges.py), a
statement's experiments at one position set are ONE Estimate per measure whose `edges` field
(an `EdgeSet`) stands for all of them. Its value is [members, examples]: member j's estimate
m_B + sum over its edges of (s_A - s_B) . g_r, the same number the per-edge Estimate gives.

An EdgeSet is an index set: the distinct senders and receivers, and per member the
(sender, receiver) index pairs of the edges it patches jointly (one for a single edge,
several for an `all(...)` group), after patterns, captures and `where`, in row order. Its
Estimate's inputs are, in this order: the Read of every sender on A, the Read of every sender
on B, the Read of every receiver's input on B, for eap_ig the embeddings of A and B, then the
Backward.

The table lists the Estimate in a `SweepRows` block (ir_sweep.py) whose `space` is the
EdgeSet: `key_columns()` and `bound_columns()` give the row keys as arrays, as a sweep's Space
does, so tables, circuits and plots take either.

Edge `swap`/`ablate` (path patching) lower compactly the same way (compiler/lower_edges.py):
one sweep Forward (ir_sweep.SweepSpec, modes `edge`, `edge_mean`, `edge_zero`) per statement,
position run and receiver group (receiver layer; a layer's MLP input apart from its
attention inputs), whose `space` is an EdgeSet of single edges with its `pos` and the table
`rows` of its members (the groups interleave in row order: `* -> *` lists senders outermost).
It looks like a sweep's Space to the passes and the schedule (`sites`: the receivers, where
members write; one position; no variants; no `where`: filtered already). The Forward's
`inputs` are the Read of every sender on the source run (none for `edge_zero`), then the
Read of every sender on the target's unpatched run (`sweep_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from .ir import Positions, Site

if TYPE_CHECKING:
    import numpy as np

Key = tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class EdgeSet:
    """The edges one compact edge Estimate scores. Edge i joins sender `sender_of[i]` to
    receiver `receiver_of[i]` (indices into `senders`/`receivers`); the edges are listed
    member after member, member j's are edges ends[j - 1] .. ends[j] - 1 (ends[-1] is the
    edge count). `columns` holds the row keys column-wise: (column, value per member), None
    where a member does not bind the column.

    Flat tuples of ints and strings, not a tuple per edge: tens of thousands of small tuples
    kept in the IR made every garbage collection of the compile and run walk them all."""

    senders: tuple[Site, ...]
    receivers: tuple[Site, ...]
    sender_of: tuple[int, ...]
    receiver_of: tuple[int, ...]
    ends: tuple[int, ...]
    columns: tuple[tuple[str, tuple[Any, ...]], ...]
    # An edge sweep's (module docstring): where its members write, and each member's row of
    # the table (empty: the members are the table's rows in order).
    pos: Positions | None = None
    rows: tuple[int, ...] = ()

    def __hash__(self) -> int:
        # Cheap: tens of thousands of members (equality still compares everything).
        return hash((self.senders, self.receivers, len(self.sender_of), self.ends[-1:],
                     tuple(c for c, _ in self.columns), self.pos, self.rows[:1]))

    @property
    def count(self) -> int:
        return len(self.ends)

    @property
    def n_edges(self) -> int:
        return len(self.sender_of)

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """Every edge as (sender index, receiver index), in order."""
        return tuple(zip(self.sender_of, self.receiver_of))

    def member(self, j: int) -> tuple[tuple[int, int], ...]:
        """Member j's (sender, receiver) index pairs."""
        lo, hi = self.ends[j - 1] if j else 0, self.ends[j]
        return tuple(zip(self.sender_of[lo:hi], self.receiver_of[lo:hi]))

    def member_of(self) -> list[int]:
        """The member of each edge, in edge order."""
        out, start = [], 0
        for j, end in enumerate(self.ends):
            out += [j] * (end - start)
            start = end
        return out

    def row_keys(self) -> list[Key]:
        """Each member's row key (the per-experiment lowering's Row.key)."""
        names = [c for c, _ in self.columns]
        return [tuple((c, v) for c, v in zip(names, vals) if v is not None)
                for vals in zip(*(v for _, v in self.columns))] if names else \
            [()] * self.count

    # -- what a sweep's Space gives the passes and the schedule (ir_sweep.py) ----------------
    @property
    def sites(self) -> tuple[Site, ...]:
        """The receiver inputs: the sites the members write."""
        return self.receivers

    @property
    def positions(self) -> tuple[Positions, ...]:
        assert self.pos is not None, "an attribution's EdgeSet has no positions of its own"
        return (self.pos,)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.count, 1, 1

    @property
    def size(self) -> int:
        return self.count

    @property
    def where(self) -> tuple[Any, ...]:
        return ()  # applied when the set was made

    @property
    def variants(self) -> tuple[None]:
        return (None,)

    def describe_sweep(self, mode: str) -> str:
        """`sweep 5340 x edge (157 senders x 37 receivers) @ *` (an edge sweep Forward)."""
        return f"sweep {self.count} x {mode} ({len(self.senders)} senders x " \
            f"{len(self.receivers)} receivers) @ {self.pos}"

    # -- what a sweep's Space gives tables (ir_sweep.key_columns / bound_columns) ------------
    @property
    def pos_keys(self) -> tuple[Any, ...]:
        """(None,) when no member binds `pos`, else the `pos` values (plot labels ask)."""
        poss = tuple(dict.fromkeys(v for c, vals in self.columns if c == "pos"
                                   for v in vals if v is not None))
        return poss or (None,)

    def bound_columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def key_columns(self) -> dict[str, np.ndarray]:
        """Each key column over the members, in row order (None where a member lacks it)."""
        import numpy as np

        out: dict[str, np.ndarray] = {}
        for col, vals in self.columns:
            if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                out[col] = np.array(vals, dtype=np.int64)
            else:
                out[col] = np.array(vals, dtype=object)
        return out


def edge_set(members: Iterable[tuple[Key, tuple[Any, ...]]]) -> EdgeSet:
    """The EdgeSet of (row key, edges patched jointly) members (edges: compiler/edges.EdgeRef)."""
    senders: dict[Site, int] = {}
    receivers: dict[Site, int] = {}
    sender_of: list[int] = []
    receiver_of: list[int] = []
    ends: list[int] = []
    columns: dict[str, list[Any]] = {}
    # A pattern's matches share their end Site objects: looking them up by identity first
    # spares hashing a Site's fields once per edge (the objects are kept alive alongside, so
    # that an id is never reused for another site).
    seen_s: dict[int, tuple[Site, int]] = {}
    seen_r: dict[int, tuple[Site, int]] = {}
    for j, (key, edges) in enumerate(members):
        for e in edges:
            s, r = e.sender, e.receiver
            hit = seen_s.get(id(s))
            if hit is None:
                hit = seen_s[id(s)] = (s, senders.setdefault(s, len(senders)))
            sender_of.append(hit[1])
            hit = seen_r.get(id(r))
            if hit is None:
                hit = seen_r[id(r)] = (r, receivers.setdefault(r, len(receivers)))
            receiver_of.append(hit[1])
        ends.append(len(sender_of))
        for c, v in key:
            if c not in columns:  # a column first bound by member j
                columns[c] = [None] * j
            columns[c].append(v)
        for vals in columns.values():  # a column this member does not bind
            if len(vals) == j:
                vals.append(None)
    return EdgeSet(tuple(senders), tuple(receivers), tuple(sender_of), tuple(receiver_of),
                   tuple(ends), tuple((c, tuple(v)) for c, v in columns.items()))


def subset(es: EdgeSet, js: list[int], pos: Positions, rows: list[int]) -> EdgeSet:
    """The members `js` of a set of single edges (one edge each), as the EdgeSet of an edge
    sweep at `pos` whose members are table rows `rows`. Its senders and receivers are those
    its members use, in first appearance; every column of `es` is kept (None where unbound),
    so that the blocks of one table share their columns."""
    senders: dict[int, int] = {}
    receivers: dict[int, int] = {}
    s_of = [senders.setdefault(es.sender_of[j], len(senders)) for j in js]
    r_of = [receivers.setdefault(es.receiver_of[j], len(receivers)) for j in js]
    return EdgeSet(tuple(es.senders[i] for i in senders),
                   tuple(es.receivers[i] for i in receivers), tuple(s_of), tuple(r_of),
                   tuple(range(1, len(js) + 1)),
                   tuple((c, tuple(v[j] for j in js)) for c, v in es.columns), pos,
                   tuple(rows))


def sweep_inputs(forward: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An edge sweep Forward's inputs: (sender Reads on the source run, none for
    `edge_zero`; sender Reads on the target's unpatched run)."""
    n = len(forward.sweep.space.senders)
    ins = forward.inputs
    return (ins[:-n], ins[-n:])


def split_inputs(node: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...],
                                     tuple[str, ...], str]:
    """A compact edge Estimate's inputs: (sender Reads on A, on B, receiver Reads on B,
    embeddings (eap_ig), Backward)."""
    es: EdgeSet = node.edges
    s, r = len(es.senders), len(es.receivers)
    ins = node.inputs
    return ins[:s], ins[s:2 * s], ins[2 * s:2 * s + r], ins[2 * s + r:-1], ins[-1]


def describe(es: EdgeSet) -> str:
    """`32491 edges (157 senders x 445 receivers)`, `6 members, 9 edges (...)` for groups."""
    n = es.n_edges
    head = f"{n} edge{'s' * (n != 1)}" if es.count == n else \
        f"{es.count} member{'s' * (es.count != 1)}, {n} edges"
    return f"{head} ({len(es.senders)} senders x {len(es.receivers)} receivers)"
