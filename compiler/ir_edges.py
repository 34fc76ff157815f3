"""Compact edge attribution: one IR value for every edge of an `attribute EDGES ... using eap`.

`attribute * -> * using eap` on a 12-layer model has some 32,000 edges; one Estimate node per
edge made planning cost more than the model. Lowered compactly (compiler/lower_edges.py), a
statement's experiments at one position set are ONE Estimate per measure whose `edges` field
(an `EdgeSet`) stands for all of them. Its value is [members, examples]: member j's estimate
m_B + sum over its edges of (s_A - s_B) . g_r, the same number the per-edge Estimate gives.

An EdgeSet is an index set: the distinct senders and receivers, and per member the
(sender, receiver) index pairs it patches jointly (one for a single edge, several for an
`all(...)` group), after patterns, captures and `where`, in row order. Its Estimate's inputs
are, in this order: the Read of every sender on A, the Read of every sender on B, the Read of
every receiver's input on B, for eap_ig the embeddings of A and B, then the Backward.

The table lists the Estimate in a `SweepRows` block (ir_sweep.py) whose `space` is the
EdgeSet: `key_columns()` and `bound_columns()` give the row keys as arrays, as a sweep's Space
does, so tables, circuits and plots take either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .ir import Site

if TYPE_CHECKING:
    import numpy as np

Key = tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class EdgeSet:
    """The edges one compact edge Estimate scores. `pairs` lists every member's edges as
    (sender index, receiver index), member after member; member j's are
    `pairs[ends[j - 1]:ends[j]]` (ends[-1] == len(pairs)). `keys[j]` is member j's row key."""

    senders: tuple[Site, ...]
    receivers: tuple[Site, ...]
    pairs: tuple[tuple[int, int], ...]
    ends: tuple[int, ...]
    keys: tuple[Key, ...]

    def __hash__(self) -> int:
        # Cheap: tens of thousands of members (equality still compares everything).
        return hash((self.senders, self.receivers, len(self.pairs), self.pairs[:1],
                     self.keys[:1], self.keys[-1:]))

    @property
    def count(self) -> int:
        return len(self.ends)

    def member(self, j: int) -> tuple[tuple[int, int], ...]:
        """Member j's (sender, receiver) index pairs."""
        return self.pairs[self.ends[j - 1] if j else 0:self.ends[j]]

    def member_of(self) -> list[int]:
        """The member of each pair, in pair order."""
        out, start = [], 0
        for j, end in enumerate(self.ends):
            out += [j] * (end - start)
            start = end
        return out

    # -- what a sweep's Space gives tables (ir_sweep.key_columns / bound_columns) ------------
    @property
    def pos_keys(self) -> tuple[Any, ...]:
        """(None,) when no member binds `pos`, else the `pos` values (plot labels ask)."""
        poss = tuple(dict.fromkeys(dict(k)["pos"] for k in self.keys if "pos" in dict(k)))
        return poss or (None,)

    def bound_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for k in self.keys for c, _ in k))

    def key_columns(self) -> dict[str, np.ndarray]:
        """Each key column over the members, in row order (None where a member lacks it)."""
        import numpy as np

        out: dict[str, np.ndarray] = {}
        rows = [dict(k) for k in self.keys]
        for col in self.bound_columns():
            vals = [r.get(col) for r in rows]
            arr = np.array(vals, dtype=object)
            if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                arr = np.array(vals, dtype=np.int64)
            out[col] = arr
        return out


def edge_set(members: list[tuple[Key, tuple[Any, ...]]]) -> EdgeSet:
    """The EdgeSet of (row key, edges patched jointly) members (edges: compiler/edges.EdgeRef)."""
    senders: dict[Site, int] = {}
    receivers: dict[Site, int] = {}
    pairs: list[tuple[int, int]] = []
    ends: list[int] = []
    for _, edges in members:
        for e in edges:
            s = senders.setdefault(e.sender, len(senders))
            r = receivers.setdefault(e.receiver, len(receivers))
            pairs.append((s, r))
        ends.append(len(pairs))
    return EdgeSet(tuple(senders), tuple(receivers), tuple(pairs), tuple(ends),
                   tuple(k for k, _ in members))


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
    n = len(es.pairs)
    head = f"{n} edge{'s' * (n != 1)}" if es.count == n else \
        f"{es.count} member{'s' * (es.count != 1)}, {n} edges"
    return f"{head} ({len(es.senders)} senders x {len(es.receivers)} receivers)"
