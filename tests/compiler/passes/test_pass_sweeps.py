"""Every pass on compact sweeps (compiler/ir_sweep.py): a golden before/after per pass, and
what each pass must decide for a sweep Forward (one node for all its members)."""

import pytest
import dataclasses

from passcases import before_after, golden, lowered

from patchc.compiler.ir import Forward
from patchc.compiler.ir_verify import verify
from patchc.compiler.passes.batch import batch
from patchc.compiler.passes.dead_positions import dead_positions
from patchc.compiler.passes.dedupe import dedupe
from patchc.compiler.passes.narrow_positions import narrow_positions
from patchc.compiler.passes.prune_reads import prune_reads
from patchc.compiler.passes.share_prefix import share_prefix
from patchc.compiler.passes.trim_logits import trim_logits
from patchc.compiler.pipeline import optimize

SPEC = """
swap L{1,3}.mlp.post[{0,7}] @ each from clean into corrupt
    measure ld normalized
    as neurons
swap L{1,3}.mlp.post[{0,7}] @ each from clean into corrupt
    measure ld normalized
    as again
ablate L{0,2}.H$h.z @ last in corrupt with mean(clean)
    where $h <= 2 and $h != 1
    measure ld
    as heads
scale L0.resid_post in clean by {0, 2}
    measure prob(d.answer)
    as scaled
"""

PASSES = [dedupe, prune_reads, share_prefix, narrow_positions, batch, trim_logits,
          dead_positions]


def sweeps(ir) -> dict[str, Forward]:
    return {nid: f for nid, f in ir.of_type(Forward) if f.sweep is not None}


@pytest.mark.parametrize("p", PASSES, ids=lambda p: p.__name__)
def test_pass_golden_with_sweeps(p) -> None:
    before, after = before_after(SPEC, p, compact=True)
    golden(f"{p.__name__}_sweep", before, after)
    assert sum(len(f.sweep) for f in sweeps(after).values()) <= \
        sum(len(f.sweep) for f in sweeps(before).values())


def test_lowering_makes_one_sweep_per_layer() -> None:
    ir = lowered(SPEC, compact=True)
    verify(ir)
    found = sorted((f.sweep.mode, f.sweep.space.sites[0].kind, f.sweep.space.sites[0].layer,
                    len(f.sweep)) for f in sweeps(ir).values())
    # neurons: 2 per layer x 11 positions (the longest prompt), twice; heads: 2 layers, head 0
    # and 2 (`where`); scale: one site, two values
    assert found == sorted([("replace", "mlp.post", 1, 22), ("replace", "mlp.post", 3, 22)] * 2
                           + [("mean", "z", 0, 2), ("mean", "z", 2, 2)]
                           + [("mul", "resid_post", 0, 2)])
    assert [t.n_rows() for t in ir.tables] == [44, 44, 4, 2]
    assert all(not t.rows for t in ir.tables)


def test_passes_decide_per_sweep() -> None:
    ir = optimize(lowered(SPEC, compact=True))
    found = sweeps(ir)
    # dedupe: the repeated statement's sweeps are the first one's
    assert len(found) == 2 + 2 + 1
    for f in found.values():
        layer = f.sweep.space.sites[0].layer
        assert f.group is None  # batch: a sweep is its own batch
        assert f.logit_positions is not None  # trim_logits
        # dead_positions: the members' writes count (L3's MLP neurons: live from L4 on)
        assert f.live_from == {"mlp.post": layer + 1, "z": layer, "resid_post": layer + 1}[
            f.sweep.space.sites[0].kind]
        if f.sweep.space.sites[0].kind == "resid_post":
            assert f.twin is None and not f.narrow  # every position from layer 0: no gain
            continue
        # share_prefix: from the sweep's layer; narrow_positions: one position each
        assert f.twin is not None and f.start_layer == layer and f.narrow
        assert (f.start is None) == (layer == 0)


def _plan(budget: int | None, body: str = SPEC):
    from passcases import HEAD, ROOT

    from patchc.compiler.check import check
    from patchc.compiler.parse import parse
    from patchc.compiler.schedule import run_shapes, schedule

    checked = check(parse(HEAD + body, "<spec>", str(ROOT)))
    ir = optimize(lowered(body, compact=True))
    return checked, ir, schedule(ir, checked.model, run_shapes(checked), budget)


@pytest.mark.parametrize("budget_mb", [40, 60, 200])
def test_sweep_chunks_cover_every_member_once_and_fit_the_budget(budget_mb: int) -> None:
    _, ir, plan = _plan(budget_mb * 1_000_000)
    assert not plan.over_budget and plan.optimized.peak_bytes <= budget_mb * 1_000_000
    for fid, f in sweeps(ir).items():
        chunks = sorted(s.sweep for s in plan.forward_steps() if s.members == [fid])
        assert chunks[0][0] == 0 and chunks[-1][1] == len(f.sweep)
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # no gap, no overlap
    # every member once (the repeated statement's sweeps were deduped), plus the base runs
    assert plan.optimized.experiments == sum(len(f.sweep) for f in sweeps(ir).values()) + \
        sum(1 for s in plan.forward_steps() if s.sweep is None)


def test_a_budget_nothing_fits_is_refused_naming_the_smallest_that_does() -> None:
    from patchc.compiler.budget import check_budget, smallest_budget
    from patchc.compiler.errors import CheckError
    from patchc.compiler.schedule import run_shapes

    body = 'set memory = "20MB"\n' + SPEC
    checked, ir, _ = _plan(None, body)
    with pytest.raises(CheckError) as e:
        check_budget(checked, ir, run_shapes(checked), 4)
    assert e.value.code == "E422" and e.value.span.line == 9  # the `set memory` line
    need = smallest_budget(ir, checked.model, run_shapes(checked), None, 4)
    assert f"smallest budget that fits is {need / 1e6:.0f} MB" in e.value.message
    for budget in (need, need + 10_000_000):
        ok = dataclasses.replace(checked, options=checked.options.model_copy(
            update={"memory": f"{budget // 1_000_000}MB"}))
        check_budget(ok, ir, run_shapes(checked), 4)  # no error


@pytest.mark.parametrize("workers", [2, 3])
def test_shards_cover_each_sweeps_members_once(workers: int) -> None:
    """A sweep's chunks may go to several workers (compiler/shard.py): each reports the
    sweep's metrics for its own chunks' members, and together they cover every member once;
    every other result is reported by one worker."""
    from patchc.compiler.ir import Metric
    from patchc.compiler.shard import rows_of, shard

    _, ir, plan = _plan(40_000_000)
    shards = shard(ir, plan, workers)
    spread = {m for sh in shards for m in sh.parts}
    once = sorted(n for sh in shards for n in sh.owns if n not in spread)
    assert once == sorted(n for n, _ in ir.of_type(Metric) if n not in spread)
    for fid, f in sweeps(ir).items():
        holders = [sh for sh in shards if any(s.kind == "forward" and s.members == [fid]
                                              for s in sh.plan.steps)]
        chunks = [s.sweep for sh in holders for s in sh.plan.steps if s.kind == "forward"
                  and s.members == [fid]]
        assert sum(b - a for a, b in chunks) == len(f.sweep)  # no member twice
        for m in (m for m in ir.g.successors(fid) if isinstance(ir.node(m), Metric)):
            rows = [r for sh in holders for r in rows_of(ir, m, sh.parts.get(m, ()))]
            if len(holders) > 1 or m in spread:
                assert sorted(rows) == list(range(len(f.sweep)))


def test_one_member_per_layer_lowers_per_experiment() -> None:
    """`L*.mlp.out` (all positions) has one member per layer: as sweeps its chunks could not
    batch with the plain forwards that start at the same layer, so it lowers per experiment;
    `@ each` (a member per position) stays a sweep."""
    one = lowered("ablate L*.mlp.out in clean\n    measure ld\n    as t\n", compact=True)
    assert not sweeps(one) and all(t.rows and not t.sweeps for t in one.tables)
    each = lowered("ablate L*.mlp.out @ each in clean\n    measure ld\n    as t\n",
                   compact=True)
    assert sweeps(each) and all(t.sweeps for t in each.tables)
