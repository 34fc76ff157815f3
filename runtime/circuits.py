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


def mean_of(values: torch.Tensor) -> float:
    """Mean over the examples that have a value (the tables' mean, patchc/tables.py)."""
    v = values.float()
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else math.nan


def normalize(m: float, target: float, source: float | None) -> float:
    """`normalized` on means: (m - t) / (s - t), or m / t without a source run."""
    if source is None:
        return m / target if target != 0 else math.nan
    denom = source - target
    return (m - target) / denom if denom != 0 else math.nan


def _shown(value: torch.Tensor, keep: torch.Tensor, node: Select,
           values: dict[str, Any]) -> float:
    m = mean_of(value)
    if not node.normalize:
        return m
    t = mean_of(values[node.normalize[0]][keep])
    s = mean_of(values[node.normalize[1]][keep]) if len(node.normalize) > 1 else None
    return normalize(m, t, s)


def rank(node: Select, values: dict[str, Any]) -> Ranking:
    """The Select's ranking from the values of its rows, reference and baselines."""
    ref = values[node.reference]
    shown, effects = [], []
    for rid in node.rows:
        v = values[rid]
        keep = ~torch.isnan(v.float())
        value = _shown(v, keep, node, values)
        shown.append(value)
        effects.append(value - _shown(ref[keep], keep, node, values))
    size = [abs(e) for e in effects]
    order = sorted(range(len(size)),
                   key=lambda i: (math.isnan(size[i]), 0.0 if math.isnan(size[i]) else -size[i],
                                  i))
    ranks = [0] * len(order)
    for r, i in enumerate(order):
        ranks[i] = r + 1
    return Ranking(tuple(shown), tuple(effects), tuple(order), tuple(ranks))


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
