"""Circuits at run time: a Select node's ranking of a table's rows, and what a gated Write
(the components outside the circuit, `evaluate`) patches.

A row's value is what its table shows: the mean over the examples the row has (NaN ones
left out), normalized when the column is. Its effect is that value minus the value with no
intervention, the same metric on the target run as it is, taken over the same examples and
normalized the same way: for a raw swap, ablate or attribute column m - m_B; for a column
normalized between B and A the value itself (B maps to 0); for `m / m_B` (no source run)
value - 1. Rows are ranked by |effect|, largest first; ties (and NaN effects, which rank
last) keep the table's row order, so a ranking is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from patchc.compiler.ir import Select, Write


@dataclass(frozen=True)
class Ranking:
    """A Select's value: each row's shown value and (signed) effect, and the row order by
    |effect|."""

    values: tuple[float, ...]
    effects: tuple[float, ...]
    order: tuple[int, ...]  # row indices, largest |effect| first
    ranks: tuple[int, ...]  # each row's 1-based place in `order`

    def kept(self, top: int) -> list[int]:
        """The rows of the circuit of size `top`."""
        return list(self.order[:top])


def rank(node: Select, values: dict[str, Any]) -> Ranking:
    """The Select's ranking from the values of its rows, reference and baselines (the rows'
    means at once: tables of tens of thousands of edges)."""
    if not node.rows:
        return Ranking((), (), (), ())
    n = values[node.reference].numel()
    # A row node is [n], or [members, n] for a compact block (its members are rows in order).
    rows = torch.cat([values[r].float().reshape(-1, n) for r in node.rows])
    if node.member_rows:  # an edge sweep's blocks, one per receiver group: in row order
        rows = rows[torch.argsort(torch.tensor(node.member_rows))]
    keep = ~torch.isnan(rows)  # [R, n]: the examples each row has
    ref = values[node.reference].float().reshape(1, -1).expand_as(rows)
    shown = _normalized(_means(rows, keep), keep, node, values)
    base = _normalized(_means(ref, keep), keep, node, values)
    value_list = shown.tolist()
    effects = (shown - base).tolist()
    size = [abs(e) for e in effects]
    order = sorted(range(len(size)),
                   key=lambda i: (math.isnan(size[i]), 0.0 if math.isnan(size[i]) else -size[i],
                                  i))
    ranks = [0] * len(order)
    for r, i in enumerate(order):
        ranks[i] = r + 1
    return Ranking(tuple(value_list), tuple(effects), tuple(order), tuple(ranks))


def _means(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per row, the mean over the examples `keep` marks (NaN where none), in float64."""
    n = keep.sum(1)
    total = torch.where(keep, x, torch.zeros_like(x)).double().sum(1)
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, math.nan))


def _normalized(m: torch.Tensor, keep: torch.Tensor, node: Select,
                values: dict[str, Any]) -> torch.Tensor:
    """`normalized` on the means, with each row's baselines over the examples it has."""
    if not node.normalize:
        return m
    t = _means(values[node.normalize[0]].float().reshape(1, -1).expand_as(keep), keep)
    if len(node.normalize) == 1:
        return torch.where(t != 0, m / t, torch.full_like(m, math.nan))
    s = _means(values[node.normalize[1]].float().reshape(1, -1).expand_as(keep), keep)
    gap = s - t
    return torch.where(gap != 0, (m - t) / gap, torch.full_like(m, math.nan))


def gated(write: Write, inputs: list, values: dict[str, Any]) -> tuple[Write, list] | None:
    """The write as it applies in this forward, with its input values, or None. An ungated
    write applies as it is. A gated one patches only the components outside the circuit:
    a node write is skipped when its row is among the ranking's first `top`; an edge write
    (one per receiver, runtime/edges.py) keeps only its senders whose rows are not, and is
    skipped when none is left."""
    if write.gate is None:
        return write, inputs
    ranking: Ranking = values[write.gate]
    patch = [i for i, r in enumerate(write.rows) if ranking.ranks[r] > write.top]
    if not patch:
        return None
    senders = getattr(write, "senders", ())
    if len(patch) == len(write.rows) or not senders:
        return write, inputs
    return _some_senders(write, inputs, patch)


def _some_senders(write: Write, inputs: list, patch: list[int]) -> tuple[Write, list]:
    """An edge write restricted to the senders `patch` (indices). Its inputs are the
    senders' new values (none for `edge_zero`), then the current values of the senders not
    `live` (read in the forward itself), in sender order (ir.Write)."""
    senders = write.senders  # type: ignore[attr-defined]
    live = write.live  # type: ignore[attr-defined]
    n_new = 0 if write.mode == "edge_zero" else len(senders)
    new, cached = inputs[:n_new], inputs[n_new:]
    cur = {i: v for i, v in zip([i for i in range(len(senders)) if i not in live], cached)}
    kept = [new[i] for i in patch] if n_new else []
    kept += [cur[i] for i in patch if i not in live]
    node = dataclasses.replace(
        write, senders=tuple(senders[i] for i in patch),  # type: ignore[call-arg]
        live=tuple(j for j, i in enumerate(patch) if i in live),
        rows=tuple(write.rows[i] for i in patch))
    return node, kept
