"""drop_baselines: a raw column's unpatched baseline (Table.unpatched) never costs a model
pass. It stays where the plan runs the base forward anyway (a swap reads its source run
there; share_prefix makes the target's the twin of a sweep) and is dropped where only it
would run that forward (one experiment)."""

from passcases import before_after, golden, lowered

from patchc.compiler.ir import Forward, Metric
from patchc.compiler.passes.drop_baselines import drop_baselines
from patchc.compiler.pipeline import optimize

SPEC = """
vector v = mean(clean.L1.resid_post @ last)
swap L1.H0.z @ last from clean into corrupt
    measure ld
    as one
steer L{1,2}.resid_post @ last in clean by {0, 2} * v
    measure ld
    as sweep
"""


def _unpatched(ir, name):
    return dict(next(t for t in ir.tables if t.name == name).unpatched)


def test_drop_baselines_golden() -> None:
    before, after = before_after(SPEC, drop_baselines)
    golden("drop_baselines", before, after)
    # `one`: corrupt's base forward would be run for the baseline alone: dropped; clean's is
    # read by the swap: its baseline stays (trimmed logits, no pass)
    t, s = _unpatched(after, "one")["ld"]
    assert t is None and isinstance(after.node(s), Metric)
    assert after.node(after.node(s).forward).run == "clean"
    # `sweep`: four steered forwards start from clean's base forward, so it is run anyway
    t, s = _unpatched(after, "sweep")["ld"]
    assert s is None
    base = after.node(t).forward
    assert sum(f.twin == base for _, f in after.of_type(Forward)) == 4


def test_the_baselines_add_no_forward() -> None:
    """Lowered without the baselines (Table.unpatched emptied before the passes, so they
    prune it), the optimized plan has the same forwards."""
    import dataclasses

    from patchc.compiler.passes._graph import nodes_of, rebuild

    ir = lowered(SPEC)
    bare = rebuild(nodes_of(ir), [dataclasses.replace(t, unpatched=()) for t in ir.tables])
    with_baselines, without = optimize(ir), optimize(bare)

    def forwards(g):
        return sorted((f.run, f.writes != (), f.start_layer) for _, f in g.of_type(Forward))

    assert forwards(with_baselines) == forwards(without)
    # corrupt's for `one` dropped; clean's, for `one` (source) and `sweep` (target), one node
    assert with_baselines.count(Metric) == without.count(Metric) + 1
