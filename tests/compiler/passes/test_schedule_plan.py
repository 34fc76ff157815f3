"""compiler/schedule.py: the Plan orders every node after what it uses, frees each value
after its last use, splits batch groups under the memory budget, and round-trips as JSON."""

import pytest
from passcases import lowered

from patchc.compiler import costs as C
from patchc.compiler.dump_plan import dump_plan
from patchc.compiler.ir import Forward, Read, Write
from patchc.compiler.pipeline import optimize
from patchc.compiler.schedule import ForwardStep, Plan, _uses, schedule
from patchc.compiler.modelspec import spec_from_config

SPEC = """
swap L*.H{0,5}.z @ last from clean into corrupt
    measure ld normalized
    as heads
swap L{2,7}.resid_pre @ each from clean into corrupt
    measure ld, kl(clean)
    as resid
attribute L{1,2}.mlp.out from clean into corrupt using atp
    measure ld
    as atp
"""


def _model():
    import json

    from passcases import ROOT

    cfg = json.loads((ROOT / "examples/models/tiny-gpt2/config.json").read_text())
    return spec_from_config(cfg)


def _runs() -> dict[str, C.RunShape]:
    # Two prompts of 11 and 9 tokens (the inline data of passcases.HEAD): left padded to 11.
    return {"clean": C.RunShape((11, 9), {("d", "p"): (2, 4)}),
            "corrupt": C.RunShape((11, 9), {("d", "p"): (2, 4)})}


def _plan(budget: int | None = None) -> tuple[Plan, object, object]:
    ir = lowered(SPEC)
    opt = optimize(ir)
    return schedule(opt, _model(), _runs(), budget, naive_ir=ir), opt, ir


def test_every_node_once_in_dependency_order() -> None:
    plan, opt, _ = _plan()
    done: set[str] = set()
    seen: list[str] = []
    for step in plan.steps:
        ids = step.members if isinstance(step, ForwardStep) else [step.node]
        for nid in ids:
            for dep in opt.g.predecessors(nid):
                node = opt.node(dep)
                if isinstance(node, Write):
                    assert all(i in done for i in node.inputs), (nid, dep)
                elif isinstance(node, Read):
                    assert node.forward in done, (nid, dep)
                else:
                    assert dep in done, (nid, dep)
        seen += ids
        for nid in ids:
            done.add(nid)
            done |= {r for r in opt.g.successors(nid) if isinstance(opt.node(r), Read)}
    kinds = (Read, Write)
    expected = [n for n in opt.g.nodes if not isinstance(opt.node(n), kinds)]
    assert sorted(seen) == sorted(expected)


def test_values_are_freed_after_their_last_use() -> None:
    plan, opt, _ = _plan()
    freed: set[str] = set()
    for step in plan.steps:
        ids = step.members if isinstance(step, ForwardStep) else [step.node]
        uses = {u for i in ids for u in _uses(opt, i)}
        assert not uses & freed, uses & freed
        assert not set(step.frees) & freed
        freed |= set(step.frees)


def test_narrowed_steps_start_at_the_first_written_position() -> None:
    plan, opt, _ = _plan()
    steps = plan.forward_steps()
    last = [s for s in steps if s.start_layer and all(
        opt.node(w).pos.kind == "last" for m in s.members
        for w in opt.node(m).writes[len(opt.node(opt.node(m).twin).writes):])]
    assert last and all(s.p0 == 10 for s in last)  # width 11: only the last position
    each = [s for s in steps if any(opt.node(w).pos.kind == "index" for m in s.members
                                    for w in opt.node(m).writes)]
    # `@ each` position i is padded index 2 + i in the 9-token row (the minimum over rows).
    assert {s.p0 for s in each} <= set(range(11)) and len(each) >= 2
    twins = {s.twin for s in steps if s.p0}
    assert all(next(x for x in steps if x.members == [t]).keep_kv for t in twins)


def test_naive_plan_and_flops() -> None:
    plan, _, ir = _plan()
    assert plan.naive is not None
    assert plan.naive.forwards == ir.count(Forward)
    assert plan.optimized.forwards < plan.naive.forwards
    assert plan.optimized.flops * 2 < plan.naive.flops  # the backward costs the same in both
    assert plan.optimized.backwards == 1


@pytest.mark.parametrize("budget_mb", [3, 6, 40])
def test_chunks_fit_the_budget(budget_mb: int) -> None:
    budget = budget_mb * 10**6 + C.RESERVE_BYTES
    plan, _, _ = _plan(budget)
    multi = [s for s in plan.forward_steps() if len(s.members) > 1]
    for k, s in enumerate(plan.steps):
        if isinstance(s, ForwardStep) and len(s.members) > 1:
            assert k not in plan.over_budget
    if budget_mb == 40:
        assert plan.optimized.peak_bytes <= budget and not plan.over_budget
        assert max(len(s.members) for s in multi) >= 5
    small, _, _ = _plan(3 * 10**6 + C.RESERVE_BYTES)
    assert small.optimized.forwards >= plan.optimized.forwards


def test_plan_json_round_trip_and_text() -> None:
    plan, _, _ = _plan(10**9)
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again == plan
    text = dump_plan(plan)
    assert text.startswith(f"plan: {plan.optimized.forwards} model passes for ")
    assert "naive" in text and "steps:" in text


def _ig_flops(body: str) -> float:
    from patchc.compiler.ir import Estimate

    opt = optimize(lowered(body, compact=True))
    plan = schedule(opt, _model(), _runs(), None)
    return sum(s.flops for s in plan.steps
               if s.kind == "estimate" and isinstance(opt.node(s.node), Estimate))


def test_a_compact_ig_is_costed_from_each_members_layer() -> None:
    """runtime/ig_sweeps.py starts a member's passes at its site's layer and takes input
    gradients only: the plan's FLOPs follow (a late layer costs less, and the whole is below
    full passes of every layer)."""
    ig = "attribute L{L}.mlp.out @ each from clean into corrupt using ig(steps=4)\n" \
         "    measure ld\n    as t\n"
    early, late = _ig_flops(ig.replace("{L}", "1")), _ig_flops(ig.replace("{L}", "10"))
    assert 0 < late < early / 3
    run = _runs()["corrupt"]
    full = C.forward_flops(_model(), C.ForwardShape(run.n, run.width))
    assert early < 2 * 5 * run.width * full  # 5 points per member, one member per position
