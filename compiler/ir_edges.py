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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from .ir import Site

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

    def __hash__(self) -> int:
        # Cheap: tens of thousands of members (equality still compares everything).
        return hash((self.senders, self.receivers, len(self.sender_of), self.ends[-1:],
                     tuple(c for c, _ in self.columns)))

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
    for j, (key, edges) in enumerate(members):
        for e in edges:
            sender_of.append(senders.setdefault(e.sender, len(senders)))
            receiver_of.append(receivers.setdefault(e.receiver, len(receivers)))
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
