"""Lowering `compare` compactly: its estimates as compact Estimates (lower_estimates.py) and
its exact swaps as sweep Forwards (lower_sweep.py), paired member by member.

`compare_form` decides: a `compare` whose every site item is what a compact estimate takes
(lower_estimates.compact_items: plain patterns of [batch, positions, features] sites at plain
positions, runs without noise samples) and whose metrics a sweep can measure
(lower_sweep.logit_metrics). Everything else keeps one Forward and one Estimate per
experiment (lower_ops._op_compare).

Per site item: one Estimate per (method, measure) whose `space` is the item's index set, and
one sweep Forward per run of consecutive sites of one layer, each with a Metric per measure
(an item with at most one member a layer, `L*.mlp.out`, keeps a plain Forward per member, so
that it batches with the other Forwards that start at its layer). The table's `pairs` then
hold one ir.Pair per (exact Forward, measure, method): its Metric, the item's Estimate and
which of the Estimate's members the Forward's are (`members`). The rows
are those of the per-experiment lowering (`site_kind`, `method`, `metric` when several),
and the runtime correlates the members' means (patchc/tables.py).
"""

from __future__ import annotations

from typing import Iterator

from . import ast as A
from . import printer
from .dictionaries import kind_text
from .ir import Pair, Row
from .ir_sweep import Space, count, members, split
from .lower_estimates import check_spaces, compact_items, estimate_nodes, item_spaces
from .lower_latents import source_read
from .lower_sweep import logit_metrics, sweep_forwards
from .lowerer import Key, Lowerer, Target


def compare_form(lw: Lowerer, op: A.Operation) -> bool:
    """Does `op` lower to compact estimates and sweeps? (See the module docstring.)"""
    if not (isinstance(op, A.Compare) and compact_items(lw, op) and logit_metrics(lw, op)):
        return False
    # One site kind per item: its rows are then keyed by the item's first site.
    return all(len({s.kind for s in space.sites}) == 1 for space in item_spaces(lw, op))


def _key(kind: str, method: A.Method, col: str, multi: bool) -> Key:
    """A row's key, as lower_ops._compare_key makes it for an experiment of that kind."""
    key: Key = (("site_kind", kind_text(kind)), ("method", printer.method(method)))
    return key + ((("metric", col),) if multi else ())


def compare_rows(lw: Lowerer, op: A.Compare) -> int:
    """Rows of a compact compare's table, from its index sets alone."""
    spaces = item_spaces(lw, op)
    check_spaces(op, spaces)
    cols = [c for c, _ in lw.measures(op)]
    return len({_key(s.sites[0].kind, m, c, len(cols) > 1)
                for s in spaces if count(s) for m in op.methods for c in cols})


def _exact(lw: Lowerer, op: A.Compare, space: Space) -> Iterator[tuple[str, int]]:
    """The exact swaps of an item's members, in order: (Forward id, its member count) per
    sweep Forward, or per member when the item has at most one a layer (`L*.mlp.out`): those
    Forwards then batch with the others that start at their layer, as lower_sweep's
    `_one_per_layer` statements do. The caller adds each Forward's Metrics in turn."""
    source, target = op.source.value, op.target.value
    if count(space) > len({s.layer for s in space.sites}):
        yield from ((fid, n) for fid, _, n in sweep_forwards(lw, op, space, "replace", source))
        return
    src = lw.base(source)
    s_idx, p_idx, _ = split(space, members(space))
    for s, p in zip(s_idx.tolist(), p_idx.tolist()):
        t = Target(space.sites[s], space.positions[p])
        yield lw.forward(target, [lw.write(t, "replace", (source_read(lw, src, t),))]), 1


def lower_compare(lw: Lowerer, op: A.Compare, methods: list[tuple[str, str, int]]) -> None:
    """`op` as compact Estimates and sweep Forwards, and its Table of Pairs. `methods`:
    (Estimate method, Backward rules, ig steps) per estimator, lower_ops._method's."""
    target = op.target.value
    lw.bake(target)
    spaces = item_spaces(lw, op)
    check_spaces(op, spaces)
    items, est, norms = estimate_nodes(lw, op, spaces, methods)
    measures = lw.measures(op)
    multi = len(measures) > 1
    rows: dict[Key, Row] = {}
    pairs = []
    for i, space in enumerate(items):
        start = 0
        kind = space.sites[0].kind
        for fid, n in _exact(lw, op, space):
            for col, m in measures:
                exact = lw.metric(fid, target, m.expr)
                norm = norms.get(col) if m.normalized else None
                for k, method in enumerate(op.methods):
                    key = _key(kind, method, col, multi)
                    rows.setdefault(key, Row(key, ()))
                    pairs.append(Pair(key, est[i, k, col], exact, norm, (start, start + n)))
            start += n
    columns = ("site_kind", "method") + (("metric",) if multi else ()) + \
        ("pearson", "spearman")
    lw.table(op, list(rows.values()), columns, pairs=tuple(pairs))
