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
from patchc.compiler.shard import Shard, shard, split_chunks
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
