"""Plan -> one Plan per worker, for `patchc run --workers N` (patchc/workers.py runs them).

The unit of work is a *bundle*: the results that come out of one step, that is every metric
of one forward step (a batched chunk measures many experiments), or one estimate. A bundle
needs its step and every step that step depends on, transitively: the clean run it copies
from, the twin whose cache it narrows from, the backward an estimate uses.

1. Split. A chunk of experiments costing more than an even share of the sweep
   (total / workers) is cut in two, again and again, so one chunk cannot keep a single worker
   busy while the others wait. Only chunks whose products nothing but their own metrics use
   are cut: a batch group's members, or a compact sweep's range of members. Rows of a batch
   do not see each other, so a cut chunk computes the same values (bit for bit on the CPU:
   tests/patchc/test_workers.py).
2. Deal. Bundles go out largest first, each to the worker it makes least busy: a worker that
   already runs a bundle's prerequisites pays only for the bundle's own step. Prerequisites
   that several workers need are run by each. That is what sharding costs (docs/scaling.md).
   The chunks of a compact sweep are bundles of their own when no other step uses the
   sweep's metrics (a table reports them; a circuit that ranks them would need them whole):
   the sweep's metric steps then run on every worker that runs one of its chunks, each
   filling the [members, examples] rows of its own chunks (`Shard.parts`), and rank 0
   puts the rows together. Other sweeps (sparse latent sweeps, whose passes depend on which
   latents are active; sweeps whose metrics a circuit ranks) stay on one worker.
3. Each worker keeps the plan's order and its own frees: a value is released after its last
   use on that worker. Every result is owned (reported) by exactly one worker, except the
   metrics of a spread sweep, which each of its workers reports in part.

A pure function of the IR and the Plan: every worker computes the same shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .ir import Forward, IRGraph, Metric, Read
from .ir_sweep import execution_order
from .schedule import ForwardStep, NodeStep, Plan, frees, result_nodes, step_produces, step_uses

Step = ForwardStep | NodeStep


@dataclass(frozen=True)
class Shard:
    plan: Plan  # the steps this worker runs, in the plan's order
    owns: tuple[str, ...]  # result nodes (Metric, Estimate, Select) this worker reports
    flops: float  # the steps' FLOPs: its load
    # Metric id -> the (lo, hi) ranges of the sweep's execution order this worker fills, for
    # the metrics of a sweep spread over several workers (it reports them in part).
    parts: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)


def shard(ir: IRGraph, plan: Plan, workers: int) -> list[Shard]:
    """The plan's work dealt to `workers` workers (some may get none)."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    steps = split_chunks(ir, list(plan.steps), workers)
    producer = {v: k for k, s in enumerate(steps) for v in step_produces(ir, s)}
    deps = [{producer[u] for u in step_uses(ir, s) if u in producer} for s in steps]
    spread = spread_sweeps(ir, steps) if workers > 1 else set()
    chunks: dict[str, list[int]] = {}  # a spread sweep's forward -> its chunk steps
    last_chunk: dict[str, int] = {}
    for k, s in enumerate(steps):
        if isinstance(s, ForwardStep) and s.sweep is not None:
            fid = s.members[0]
            if fid in spread:
                chunks.setdefault(fid, []).append(k)
                continue
            # The chunks of any other sweep fill one [members, examples] value per metric
            # together: they stay on one worker (each needs the one before).
            if fid in last_chunk:
                deps[k].add(last_chunk[fid])
            last_chunk[fid] = k
    for k, s in enumerate(steps):  # a spread sweep's metric needs only its worker's chunks
        fid = _sweep_of(ir, s)
        if fid in chunks:
            deps[k] -= set(chunks[fid])
    bundles = _bundles(ir, steps, producer, chunks)

    def closure(k: int) -> set[int]:
        out, todo = set(), [k]
        while todo:
            j = todo.pop()
            if j not in out:
                out.add(j)
                todo += deps[j]
        return out

    need = {key: set().union(*(closure(k) for k in [key, *ks])) for key, ks in bundles.items()}
    have: list[set[int]] = [set() for _ in range(workers)]
    load = [0.0] * workers
    owned: list[list[int]] = [[] for _ in range(workers)]
    for key in sorted(bundles, key=lambda k: (-_cost(steps[k]), k)):
        extra = [sum(_cost(steps[j]) for j in need[key] - have[w]) for w in range(workers)]
        w = min(range(workers), key=lambda w: (load[w] + extra[w], w))
        have[w] |= need[key]
        load[w] += extra[w]
        owned[w] += [key, *bundles[key]]
    results = result_nodes(ir)
    out = []
    for w in range(workers):
        mine = [steps[k] for k in sorted(have[w])]
        owns = sorted({n for k in owned[w] for n in step_produces(ir, steps[k])} & results,
                      key=lambda n: (int(n[1:]), n))
        sub = plan.model_copy(update={"steps": _with_frees(ir, mine, results)})
        parts = {m: tuple(steps[k].sweep for k in chunks[fid] if k in have[w])  # type: ignore
                 for m in owns if (fid := _sweep_of_metric(ir, m)) in chunks}
        out.append(Shard(sub, tuple(owns), load[w], parts))
    return out


def spread_sweeps(ir: IRGraph, steps: list[Step]) -> set[str]:
    """The compact sweeps whose chunks may run on different workers."""
    used = {u for s in steps for u in step_uses(ir, s)}
    return {s.members[0] for s in steps if isinstance(s, ForwardStep) and
            s.sweep is not None and _spreadable(ir, s.members[0], used)}


def _spreadable(ir: IRGraph, fid: str, used: set[str] | dict) -> bool:
    """Not a sparse latent sweep, only metrics use it, and no step uses those (only tables
    do)."""
    f: Forward = ir.node(fid)  # type: ignore[assignment]
    after = list(ir.g.successors(fid))
    return not f.sparse and f.same_as is None and \
        all(isinstance(ir.node(m), Metric) and m not in used for m in after)


def rows_of(ir: IRGraph, metric: str, ranges: tuple[tuple[int, int], ...]) -> list[int]:
    """The member rows of a spread sweep's metric that the chunks `ranges` fill."""
    f: Forward = ir.node(ir.node(metric).forward)  # type: ignore[union-attr]
    order = execution_order(f.sweep.space)
    return [int(r) for lo, hi in ranges for r in order[lo:hi]]


def _sweep_of_metric(ir: IRGraph, nid: str) -> str | None:
    """The forward of a Metric node (None for other nodes)."""
    node = ir.node(nid)
    return node.forward if isinstance(node, Metric) else None


def _sweep_of(ir: IRGraph, s: Step) -> str | None:
    """The forward of a metric step (None for other steps)."""
    if isinstance(s, NodeStep) and s.kind == "metric":
        return _sweep_of_metric(ir, s.node)
    return None


def split_chunks(ir: IRGraph, steps: list[Step], workers: int) -> list[Step]:
    """Halve the costliest leaf chunk while it costs more than an even share of the work."""
    if workers < 2:
        return steps
    share = sum(_cost(s) for s in steps) / workers
    while True:
        users: dict[str, list[Step]] = {}  # value -> the steps that use it
        for s in steps:
            for u in step_uses(ir, s):
                users.setdefault(u, []).append(s)
        leaves = [k for k, s in enumerate(steps) if _splittable(ir, s, users)]
        k = max(leaves, key=lambda k: (_cost(steps[k]), -k), default=None)
        if k is None or _cost(steps[k]) <= share:
            return steps
        steps = steps[:k] + _halves(ir, steps[k]) + steps[k + 1:]  # type: ignore[arg-type]


def _splittable(ir: IRGraph, s: Step, users: dict[str, list[Step]]) -> bool:
    """A chunk of 2+ experiments whose products only its own metrics use (a batch group's
    members, or a range of a spreadable sweep's members)."""
    if not isinstance(s, ForwardStep) or s.keep_kv or s.generate:
        return False
    if s.sweep is not None:
        lo, hi = s.sweep
        return hi - lo >= 2 and _spreadable(ir, s.members[0], users)
    if len(s.members) < 2:
        return False
    return all(isinstance(o, NodeStep) and o.kind == "metric"
               for v in step_produces(ir, s) for o in users.get(v, ()))


def _halves(ir: IRGraph, s: ForwardStep) -> list[ForwardStep]:
    if s.sweep is not None:  # two ranges of the sweep's members
        lo, hi = s.sweep
        mid = lo + math.ceil((hi - lo) / 2)
        per_member = s.rows // (hi - lo)
        return [s.model_copy(update={
            "sweep": (a, b), "rows": per_member * (b - a), "flops": s.flops * (b - a) / (hi - lo),
            "bytes": int(s.bytes * (b - a) / (hi - lo))}) for a, b in ((lo, mid), (mid, hi))]
    cut = math.ceil(len(s.members) / 2)
    per_member = s.rows // len(s.members)
    out = []
    for members in (s.members[:cut], s.members[cut:]):
        part = len(members) / len(s.members)
        out.append(s.model_copy(update={
            "members": members, "rows": per_member * len(members),
            "flops": s.flops * part, "bytes": int(s.bytes * part),
            "caches": [r for m in members for r in ir.g.successors(m)
                       if isinstance(ir.node(r), Read)]}))
    return out


def _bundles(ir: IRGraph, steps: list[Step], producer: dict[str, int],
             chunks: dict[str, list[int]]) -> dict[int, list[int]]:
    """Key step -> its result steps: a metric belongs to its forward's step (to each chunk of
    a spread sweep), an estimate is its own key."""
    out: dict[int, list[int]] = {}
    for k, s in enumerate(steps):
        if isinstance(s, NodeStep) and s.kind == "metric":
            fid = _sweep_of_metric(ir, s.node)
            for key in chunks.get(fid, [producer[fid]]):
                out.setdefault(key, []).append(k)
        elif isinstance(s, NodeStep) and s.kind in ("estimate", "select"):
            out.setdefault(k, [])
    return out


def _cost(s: Step) -> float:
    # Every step costs something (a metric's Python, a pass's launch): without the floor a
    # worker would take a bundle of free metrics over an idle one.
    return s.flops + 1.0


def _with_frees(ir: IRGraph, steps: list[Step], results: set[str]) -> list[Step]:
    """Copies of the steps whose frees release each value after its last use among them."""
    return [s.model_copy(update={"frees": gone})
            for s, gone in zip(steps, frees(ir, steps, results))]
