"""Lowering `attribute` to compact estimates: one Estimate per site item instead of one per
(site, position) experiment.

`estimate_form` decides which statements lower this way: an `attribute` (atp, relp, ig) whose
site items are all plain patterns (no `all(...)` group, no subspace) of sites whose
activation is [batch, positions, features] (lower_sweep.COMPACT_KINDS), at positions other
than per-example spans, between runs without noise samples, and whose table no circuit ranks.
Everything else keeps one Estimate per experiment (lower_ops.py).

A compact item becomes, for each whole site it touches (kind, layer, head), ONE Read of that
site on A's base Forward and one on B's, at the item's one position (or at all positions when
it sweeps several), and one Estimate per measure whose `space` (an ir_sweep.Space) lists the
members; the Backward differentiates the metric at every B Read of the statement. The
Estimate's value is [members, examples] and its table lists it in `sweeps` (a SweepRows),
like a compact sweep's metric.
"""

from __future__ import annotations

import dataclasses

from . import ast as A
from . import printer
from .ir import ALL_POSITIONS, Estimate, Positions
from .ir_sweep import Space, SweepRows, bound_columns, count, members, split, whole_site
from .lower_sweep import COMPACT_KINDS, _POSITION_KINDS
from .lowerer import Lowerer, check_where

METHODS = ("atp", "relp", "ig")


def estimate_form(lw: Lowerer, op: A.Operation) -> bool:
    """Does `op` lower to compact estimates? (See the module docstring for which do.)"""
    if not isinstance(op, A.Attribute) or op.method.name not in METHODS:
        return False
    return compact_items(lw, op)


def compact_items(lw: Lowerer, op: A.Attribute | A.Compare) -> bool:
    """Are all of `op`'s site items plain patterns of [batch, positions, features] sites at
    plain positions, between runs without noise samples, in a table no circuit ranks?
    (What a compact estimate needs; lower_compare.py asks it of `compare` too.)"""
    if A.table_name(op) in lw.row_tables:  # a circuit ranks its rows (lower_circuits.py)
        return False
    for run in (op.source.value, op.target.value):
        lw.bake(run)
        if lw.samples[run] != 1:
            return False
    for item in op.sites:
        if not isinstance(item, A.SiteRef) or item.subspace or item.kind not in COMPACT_KINDS:
            return False
        if any(len(m.sites) != 1 for m in lw.sites.expand(item, lw.model)):
            return False
        kinds = {p.kind for p, _ in lw.positions(item.pos, op.target.value)}
        if not kinds <= _POSITION_KINDS:
            return False
    return True


def item_spaces(lw: Lowerer, op: A.Attribute | A.Compare) -> list[Space]:
    """One index set per site item (sites x positions), in the statement's order; with
    several items each binds `site` (the item as written), as the per-experiment rows do."""
    out = []
    for item in op.sites:
        matches = lw.sites.expand(item, lw.model)
        poss = lw.positions(item.pos, op.target.value)
        prefix = (("site", printer.site_item(item)),) if len(op.sites) > 1 else ()
        space = Space(tuple(m.sites[0] for m in matches), tuple(m.key for m in matches),
                      tuple(p for p, _ in poss), tuple(i for _, i in poss), (None,), prefix)
        # Only the conditions on columns this item binds (the others keep all its members)
        bound = set(bound_columns(space))
        where = tuple(c for c in op.clauses.where if c.left in bound and
                      (not isinstance(c.right, str) or c.right in bound))
        out.append(dataclasses.replace(space, where=where))
    return out


def check_spaces(op: A.Attribute | A.Compare, spaces: list[Space]) -> None:
    check_where(op.clauses.where, [tuple((c, None) for c in bound_columns(s)) for s in spaces])


def estimate_rows(lw: Lowerer, op: A.Attribute) -> int:
    """Rows of a compact attribution's table, from its index sets alone."""
    spaces = item_spaces(lw, op)
    check_spaces(op, spaces)
    return sum(count(s) for s in spaces)


def used_sites(space: Space) -> Space:
    """The space without the sites `where` keeps no member of (their sites are not read)."""
    if not space.where:
        return space
    used = sorted(set(split(space, members(space))[0].tolist()))
    if len(used) == len(space.sites):
        return space
    return Space(tuple(space.sites[i] for i in used), tuple(space.site_keys[i] for i in used),
                 space.positions, space.pos_keys, space.variants, space.prefix, space.where)


def read_positions(space: Space) -> Positions:
    """Where a compact estimate reads its sites: the members' one position, else all."""
    return space.positions[0] if len(space.positions) == 1 else ALL_POSITIONS


def estimate_nodes(lw: Lowerer, op: A.Attribute | A.Compare, spaces: list[Space],
                   methods: list[tuple[str, str, int]]
                   ) -> tuple[list[Space], dict[tuple[int, int, str], str], dict[str, tuple]]:
    """The compact attribution sub-graph of `spaces` (item_spaces'): one (A, B) pair of Reads
    per whole site an item touches, a Metric on B per measure, one Backward per (measure,
    rules) and one Estimate per (item, method, measure). Returns the items that keep a member
    (their spaces without unused sites), the Estimate ids by (index among those, method
    index, column) and each `normalized` column's (target, source) Metrics.
    `methods`: (Estimate method, Backward rules, ig steps) each."""
    source, target = op.source.value, op.target.value
    fa, fb = lw.base(source), lw.base(target)
    items: list[tuple[Space, tuple[str, ...]]] = []
    for space in spaces:
        if count(space) == 0:
            continue
        space = used_sites(space)
        pos = read_positions(space)
        pairs: list[str] = []
        for w in dict.fromkeys(whole_site(s) for s in space.sites):
            pairs += [lw.read(fa, w, pos), lw.read(fb, w, pos)]
        items.append((space, tuple(pairs)))
    out: dict[tuple[int, int, str], str] = {}
    norm: dict[str, tuple] = {}
    if not items:  # `where` keeps no member: no gradient to take
        return [], out, norm
    wrt = tuple(dict.fromkeys(r for _, pairs in items for r in pairs[1::2]))
    for col, m in lw.measures(op):
        metric = lw.metric(fb, target, m.expr)
        for k, (name, rules, steps) in enumerate(methods):
            back = lw.backward(metric, wrt, rules)
            for i, (space, pairs) in enumerate(items):
                inputs = pairs + (back,)
                node = Estimate(name, space.sites[0], read_positions(space), inputs, steps,
                                space=space)
                out[i, k, col] = lw.ir.add(node, inputs)
                if m.normalized and col not in norm:
                    norm[col] = lw.norm_refs(m, target, source)
    return [space for space, _ in items], out, norm


def lower_estimates(lw: Lowerer, op: A.Attribute, method: tuple[str, str, int]) -> None:
    """`op` as one Estimate per (site item, measure) and its Table of SweepRows. `method`:
    (Estimate method, Backward rules, ig steps), lower_ops._method's."""
    lw.bake(op.target.value)
    spaces = item_spaces(lw, op)
    check_spaces(op, spaces)
    items, est, norms = estimate_nodes(lw, op, spaces, [method])
    if not items:
        lw.table(op, [], tuple(dict.fromkeys(c for c, _ in lw.measures(op))))
        return
    sweeps = []
    for i, space in enumerate(items):
        values = tuple((col, est[i, 0, col]) for col, _ in lw.measures(op))
        norm = tuple((col, norms[col]) for col, m in lw.measures(op) if m.normalized)
        sweeps.append(SweepRows(values[0][1] if values else "", values, norm, count(space),
                                space))
    columns: tuple[str, ...] = tuple(dict.fromkeys(
        c for s in items for c in bound_columns(s)))
    columns += tuple(dict.fromkeys(c for c, _ in lw.measures(op)))
    lw.table(op, [], columns, sweeps=tuple(sweeps))
