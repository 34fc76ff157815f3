"""Cutting a compact sweep (compiler/ir_sweep.py) into chunks under the memory budget.

A sweep Forward's members run in *execution order*: by position variant, then row order
(`ir_sweep.execution_order`), so that the members of one `@ each` position are neighbours and
a chunk of them can start at that position (narrow_positions). A chunk is a range [lo, hi)
of that order and its first computed position p0. As for a batch group of per-experiment
forwards (schedule._chunks), a small dynamic program over the position variants decides
which to merge: merging variants that start at different positions wastes positions,
splitting costs a pass. Work is linear in the position variants, not the members.
"""

from __future__ import annotations

import dataclasses
import math

from . import costs as C
from .ir import IRGraph, Metric
from .ir_sweep import Space, members, split
from .plan import ForwardStep

# A pass costs this much beyond its arithmetic (Python, kernel launches), in FLOPs per layer
# run: what makes a chunk of narrowed forwards worth merging with its neighbours.
OVERHEAD_FLOPS_PER_LAYER = 2e7


def variant_counts(space) -> list[int]:
    """Members per position variant (after `where`), in variant order."""
    s, p, v = space.shape
    if not space.where:
        return [s * v] * p
    import numpy as np  # (only with `where`: see ir_sweep)

    _, p_idx, _ = split(space, members(space))
    return [int(c) for c in np.bincount(p_idx, minlength=p)]


def sweep_shape(sz: C.GraphSizes, fid: str, k: int, p0: int) -> C.ForwardShape:
    """The pass of k members of sweep `fid` from position p0."""
    # (the members measure the same token ids: one set of unembedding rows for all; the
    # last block's MLP runs at the measured positions alone as sz.shape says, dead_positions)
    one = sz.shape([fid], p0)
    edges = not isinstance(sz.fwd(fid).sweep.space, Space)  # an edge sweep (ir_edges.py)
    return dataclasses.replace(one, rows=k * one.rows, edges=edges)


def _firsts(sz: C.GraphSizes, fid: str) -> list[int]:
    """The first position a pass of each position variant must compute (0 unless narrowed):
    the variant's own, or an earlier one a metric reads."""
    f = sz.fwd(fid)
    space = f.sweep.space
    if sz.naive or not f.narrow or f.twin is None:
        return [0] * len(space.positions)
    shape = sz.runs[f.run]
    metric_first = min((C.first_index(m.pos, shape) for m in
                        (sz.ir.node(c) for c in sz.ir.g.successors(fid))
                        if isinstance(m, Metric)), default=shape.width)
    return [min(C.first_index(p, shape), metric_first) for p in space.positions]


def sweep_chunks(sz: C.GraphSizes, fid: str, cap_bytes: int | None, batch_size: int | None
                 ) -> list[tuple[int, int, int]]:
    """(lo, hi, p0) chunks of the sweep's execution order."""
    f = sz.fwd(fid)
    counts = variant_counts(f.sweep.space)
    firsts = _firsts(sz, fid)
    buckets = [(firsts[p], int(c)) for p, c in enumerate(counts) if c]
    if not buckets:
        return []
    per_member = sz.rows(fid)
    memo: dict[int, tuple[int, float]] = {}

    def per_pass(p0: int) -> tuple[int, float]:
        if p0 not in memo:
            most = sum(c for _, c in buckets)
            if batch_size is not None:
                most = min(most, max(1, batch_size // per_member))
            one = sweep_shape(sz, fid, 1, p0)
            if cap_bytes is not None:
                # A pass's bytes grow by `per` a member beyond a fixed part (its prefix's
                # keys and values): the most members whose pass fits the cap.
                b1 = C.forward_bytes(sz.model, one, sz.b)
                per = max(C.forward_bytes(sz.model, sweep_shape(sz, fid, 2, p0), sz.b) - b1, 1)
                most = min(most, max(1, (cap_bytes - (b1 - per)) // per))
                while most > 1 and C.forward_bytes(sz.model, sweep_shape(sz, fid, most, p0),
                                                   sz.b) > cap_bytes:
                    most -= 1
            memo[p0] = (most, C.forward_flops(sz.model, one))
        return memo[p0]

    overhead = OVERHEAD_FLOPS_PER_LAYER * (sz.model.n_layers - f.start_layer + 2)
    starts = [0]
    for _, c in buckets:
        starts.append(starts[-1] + c)

    firsts_of: dict[tuple[int, int], int] = {}  # (a, b) -> min first position of a span

    def first_of(a: int, b: int) -> int:
        got = firsts_of.get((a, b))
        if got is None:  # (the spans grow one bucket at a time: extend the shorter one's)
            shorter = firsts_of.get((a, b - 1))
            got = buckets[b - 1][0] if shorter is None and b - 1 == a else \
                min(buckets[b - 1][0], shorter) if shorter is not None else \
                min(p for p, _ in buckets[a:b])
            firsts_of[a, b] = got
        return got

    def cost(a: int, b: int) -> float:
        p0 = first_of(a, b)
        if b - a > 1 and cap_bytes is not None and \
                C.forward_bytes(sz.model, sweep_shape(sz, fid, 1, p0), sz.b) > cap_bytes:
            return math.inf  # merged, even one member would not fit from this position
        most, per = per_pass(p0)
        n = starts[b] - starts[a]
        return math.ceil(n / most) * overhead + n * per

    # Merging is only worth it between neighbouring variants: consider spans of up to 8.
    out = []
    for a, b in cheapest_spans(len(buckets), cost, window=8):
        p0 = first_of(a, b)
        most = per_pass(p0)[0]
        out += [(lo, min(lo + most, starts[b]), p0) for lo in range(starts[a], starts[b], most)]
    return out


def sweep_steps(ir: IRGraph, sz: C.GraphSizes, fid: str, cap: int | None,
                batch_size: int | None, naive: bool) -> list[ForwardStep]:
    """The chunks of a compact sweep, one pass each."""
    f = sz.fwd(fid)
    if cap is not None:  # its metrics' [members, examples] values live from the first chunk
        cap -= sum(sz.value(m) for m in ir.g.successors(fid) if isinstance(ir.node(m), Metric))
        cap -= max(cap, 0) // 50  # slack for the small values other steps keep alive meanwhile
    if naive:  # one full pass per member: summarized as one step of that many passes
        k = len(f.sweep)
        shape = sweep_shape(sz, fid, 1, 0)
        return [ForwardStep(members=[fid], run=f.run, rows=shape.rows, width=shape.width,
                            flops=k * C.forward_flops(sz.model, shape),
                            bytes=C.forward_bytes(sz.model, shape, sz.b), sweep=(0, k),
                            passes=k)]
    out = []
    for lo, hi, p0 in sweep_chunks(sz, fid, cap, batch_size):
        shape = sweep_shape(sz, fid, hi - lo, p0)
        out.append(ForwardStep(
            members=[fid], run=f.run, samples=f.samples, rows=shape.rows, width=shape.width,
            p0=p0, start_layer=shape.start_layer, start=None if naive else f.start,
            twin=None if naive else f.twin, keep_kv=False,
            logit_positions=shape.logit_positions, logit_tokens=shape.vocab is not None,
            generate=False, flops=C.forward_flops(sz.model, shape),
            bytes=C.forward_bytes(sz.model, shape, sz.b), sweep=(lo, hi)))
    return out


def cheapest_spans(n: int, cost, window: int | None = None) -> list[tuple[int, int]]:
    """Cut buckets 0..n-1 into consecutive spans [a, b) of least total `cost(a, b)` (dynamic
    programming; spans of at most `window` buckets when given), in order."""
    best: list[tuple[float, int]] = [(0.0, 0)] + [(math.inf, 0)] * n
    for b in range(1, n + 1):
        for a in range(max(0, b - window) if window else 0, b):
            c = best[a][0] + cost(a, b)
            if c < best[b][0]:
                best[b] = (c, a)
    spans = []
    b = n
    while b:
        a = best[b][1]
        spans.append((a, b))
        b = a
    return spans[::-1]
