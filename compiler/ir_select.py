"""The IR node of a circuit (`circuit NAME = top K of TABLE`, docs/circuits.md): kept apart from
ir.py, which re-exports it, only to keep that file short."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Select:
    """`circuit NAME = top K of TABLE`: the rows of a table ranked by |effect|, the row's
    value minus the value with no intervention. `rows` are each row's
    value node (a Metric or Estimate of the table's first measured column); `reference` is
    that metric on the target run with no intervention; `normalize` the column's baselines
    when it is normalized: () raw, (t,) m / m_t, (t, s) (m - m_t) / (m_s - m_t). Values
    are compared as the table shows them: means over examples (those the row has), the
    normalization applied to the means. The value at run time is the ranking
    (runtime/circuits.py); ties keep the table's row order."""

    table: str
    rows: tuple[str, ...]
    reference: str
    normalize: tuple[str, ...] = ()
    # The table row of each value, in the order `rows`' values follow one another, when that
    # is not the row order (an edge sweep's blocks, one per receiver group: ir_edges.py).
    member_rows: tuple[int, ...] = ()
