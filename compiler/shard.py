"""Plan -> one Plan per worker, for `patchc run --workers N` (patchc/workers.py runs them).

The unit of work is a *bundle*: the results that come out of one step, that is every metric
of one forward step (a batched chunk measures many experiments), or one estimate. A bundle
needs its step and every step that step depends on, transitively: the clean run it copies
from, the twin whose cache it narrows from, the backward an estimate uses.

1. Split. A chunk of experiments costing more than an even share of the sweep
   (total / workers) is cut in two, again and again, so one chunk cannot keep a single worker
   busy while the others wait. Only chunks whose products nothing but their own metrics use
   are cut. Rows of a batch do not see each other, so a cut chunk computes the same values
   (bit for bit on the CPU: tests/patchc/test_workers.py).
2. Deal. Bundles go out largest first, each to the worker it makes least busy: a worker that
   already runs a bundle's prerequisites pays only for the bundle's own step. Prerequisites
   that several workers need are run by each. That is what sharding costs (docs/scaling.md).
3. Each worker keeps the plan's order and its own frees: a value is released after its last
   use on that worker. Every result is owned (reported) by exactly one worker.

A pure function of the IR and the Plan: every worker computes the same shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ir import IRGraph, Read
from .schedule import ForwardStep, NodeStep, Plan, frees, result_nodes, step_produces, step_uses

Step = ForwardStep | NodeStep


@dataclass(frozen=True)
class Shard:
    plan: Plan  # the steps this worker runs, in the plan's order
    owns: tuple[str, ...]  # result nodes (Metric, Estimate, Select) this worker reports
    flops: float  # the steps' FLOPs: its load


def shard(ir: IRGraph, plan: Plan, workers: int) -> list[Shard]:
    """The plan's work dealt to `workers` workers (some may get none)."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    steps = split_chunks(ir, list(plan.steps), workers)
    producer = {v: k for k, s in enumerate(steps) for v in step_produces(ir, s)}
    deps = [{producer[u] for u in step_uses(ir, s) if u in producer} for s in steps]
    bundles = _bundles(ir, steps, producer)

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
        out.append(Shard(sub, tuple(owns), load[w]))
    return out


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
    """A chunk of 2+ experiments whose products only its own metrics use."""
    if not isinstance(s, ForwardStep) or len(s.members) < 2 or s.keep_kv or s.generate:
        return False
    return all(isinstance(o, NodeStep) and o.kind == "metric"
               for v in step_produces(ir, s) for o in users.get(v, ()))


def _halves(ir: IRGraph, s: ForwardStep) -> list[ForwardStep]:
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


def _bundles(ir: IRGraph, steps: list[Step], producer: dict[str, int]) -> dict[int, list[int]]:
    """Key step -> its result steps: a metric belongs to its forward's step, an estimate is
    its own key."""
    out: dict[int, list[int]] = {}
    for k, s in enumerate(steps):
        if isinstance(s, NodeStep) and s.kind == "metric":
            node = ir.node(s.node)
            out.setdefault(producer[node.forward], []).append(k)  # type: ignore[union-attr]
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
