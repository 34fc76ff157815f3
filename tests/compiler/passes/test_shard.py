"""compiler/shard.py: a Plan dealt to N workers. Every result is reported by exactly one
worker, every worker can run its steps (what a step uses, an earlier step of the same worker
made), frees are per worker, too-large chunks are halved, and the load is balanced.
The before/after golden is tests/fixtures/passes/shard.txt (the plan, then its shards)."""

from __future__ import annotations

import pytest
from passcases import FIXTURES, UPDATE
from test_schedule_plan import _model, _runs

from patchc.compiler.dump_plan import dump_plan, dump_shards
from patchc.compiler.ir import Estimate, Metric
from patchc.compiler.pipeline import optimize
from patchc.compiler.schedule import ForwardStep, Plan, schedule, step_produces, step_uses
from patchc.compiler.shard import Shard, _spreadable, rows_of, shard, split_chunks, spread_sweeps
from passcases import lowered

SPEC = """
swap L*.H*.z @ last from clean into corrupt
    measure ld normalized
    as heads
swap L{1,3}.resid_pre @ each from clean into corrupt
    measure ld
    as resid
attribute L{1,2}.mlp.out from clean into corrupt using atp
    measure ld
    as atp
"""


def _plan(budget: int | None = None):
    ir = lowered(SPEC)
    opt = optimize(ir)
    return schedule(opt, _model(), _runs(), budget, naive_ir=ir), opt


def _results(ir) -> set[str]:
    return {n for n, _ in ir.of_type(Metric)} | {n for n, _ in ir.of_type(Estimate)}


def test_golden_before_after() -> None:
    plan, opt = _plan()
    actual = f"## before\n{dump_plan(plan)}\n## after\n{dump_shards(shard(opt, plan, 2))}"
    path = FIXTURES / "shard.txt"
    if UPDATE:
        path.write_text(actual, "utf-8")
    assert actual == path.read_text("utf-8"), f"{path} differs; PATCHC_UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_every_result_reported_once_and_every_shard_runnable(workers: int) -> None:
    plan, opt = _plan()
    shards = shard(opt, plan, workers)
    assert len(shards) == workers
    owned = [n for sh in shards for n in sh.owns]
    assert sorted(owned) == sorted(_results(opt))  # each exactly once
    for sh in shards:
        made: set[str] = set()
        freed: set[str] = set()
        for step in sh.plan.steps:
            uses = step_uses(opt, step)
            assert uses <= made, uses - made  # its prerequisites ran before, on this worker
            assert not uses & freed
            made |= set(step_produces(opt, step))
            freed |= set(step.frees)
        assert set(sh.owns) <= made and not set(sh.owns) & freed


def test_one_worker_runs_the_plan_unchanged() -> None:
    plan, opt = _plan()
    (only,) = shard(opt, plan, 1)
    assert only.plan == plan


def test_shards_keep_the_plan_order_and_chunks() -> None:
    plan, opt = _plan(10**9)
    order = {tuple(s.members) if isinstance(s, ForwardStep) else s.node: k
             for k, s in enumerate(split_chunks(opt, list(plan.steps), 2))}
    for sh in shard(opt, plan, 2):
        keys = [tuple(s.members) if isinstance(s, ForwardStep) else s.node
                for s in sh.plan.steps]
        assert [order[k] for k in keys] == sorted(order[k] for k in keys)


def test_a_chunk_larger_than_a_share_is_halved() -> None:
    plan, opt = _plan()
    biggest = max(plan.forward_steps(), key=lambda s: s.flops)
    total = sum(s.flops + 1 for s in plan.steps)
    assert biggest.flops > total / 4  # the sweep's heads are one pass
    split = split_chunks(opt, list(plan.steps), 4)
    assert max(s.flops for s in split if isinstance(s, ForwardStep)) <= total / 4 + 1
    members = [m for s in split if isinstance(s, ForwardStep) for m in s.members]
    assert sorted(members) == sorted(m for s in plan.forward_steps() for m in s.members)
    for s in split:
        if isinstance(s, ForwardStep):
            assert s.rows % len(s.members) == 0
            assert set(s.caches) <= {r for m in s.members for r in opt.g.successors(m)}


def test_loads_are_balanced() -> None:
    plan, opt = _plan()
    shards: list[Shard] = shard(opt, plan, 2)
    loads = sorted(sh.flops for sh in shards)
    assert loads[0] > 0.6 * loads[1], loads
    # What sharding costs: prerequisites (the clean and corrupt runs) run on both workers.
    assert sum(loads) < 1.35 * sum(s.flops + 1 for s in plan.steps)


def test_json_round_trip_of_a_shard_plan() -> None:
    plan, opt = _plan()
    for sh in shard(opt, plan, 3):
        assert Plan.model_validate_json(sh.plan.model_dump_json()) == sh.plan


def test_bad_worker_count() -> None:
    plan, opt = _plan()
    with pytest.raises(ValueError):
        shard(opt, plan, 0)


# ---- compact sweeps spread over workers -----------------------------------------------------
SWEEP_SPEC = """
swap L{1,3}.mlp.post[{0,7}] @ each from clean into corrupt
    measure ld normalized, prob(d.answer)
    as neurons
swap L0.resid_pre @ each from clean into corrupt
    measure ld
    as resid
"""


def _sweep_plan(workers: int):
    ir = lowered(SWEEP_SPEC, compact=True)
    opt = optimize(ir)
    plan = schedule(opt, _model(), _runs(), None, naive_ir=ir)
    return opt, plan, shard(opt, plan, workers)


def _sweep_metrics(ir, fid: str) -> list[str]:
    return [m for m in ir.g.successors(fid) if isinstance(ir.node(m), Metric)]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_a_sweep_spreads_over_workers_and_its_rows_are_covered_once(workers: int) -> None:
    opt, plan, shards = _sweep_plan(workers)
    sweeps = {s.members[0] for s in plan.forward_steps() if s.sweep is not None}
    assert len(sweeps) == 3 and spread_sweeps(opt, list(plan.steps)) == sweeps
    busy = 0
    for fid in sweeps:
        total = len(opt.node(fid).sweep)
        for m in _sweep_metrics(opt, fid):
            rows = [r for sh in shards if m in sh.parts for r in rows_of(opt, m, sh.parts[m])]
            assert sorted(rows) == list(range(total))  # every member row, by one worker
            assert all(m in sh.parts for sh in shards if m in sh.owns)
        busy = max(busy, sum(1 for sh in shards if any(
            isinstance(s, ForwardStep) and s.members == [fid] for s in sh.plan.steps)))
    assert busy >= 2  # a sweep's chunks run on more than one worker
    for sh in shards:  # every shard runnable; a spread metric runs after its worker's chunks
        made: set[str] = set()
        for step in sh.plan.steps:
            assert step_uses(opt, step) <= made, step_uses(opt, step) - made
            made |= set(step_produces(opt, step))


def test_one_worker_keeps_sweeps_whole() -> None:
    opt, plan, (only,) = _sweep_plan(1)
    assert only.plan == plan and only.parts == {}


def test_a_sweep_whose_metric_a_step_uses_stays_whole() -> None:
    opt, plan, _ = _sweep_plan(2)
    fid = next(s.members[0] for s in plan.forward_steps() if s.sweep is not None)
    metric = _sweep_metrics(opt, fid)[0]
    assert _spreadable(opt, fid, set())
    assert not _spreadable(opt, fid, {metric})  # e.g. a circuit ranking the table's rows
