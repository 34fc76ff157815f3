"""share_prefix: forwards start from their twin's residual stream at their first layer."""

from passcases import before_after, golden

from patchc.compiler.ir import Forward, Read
from patchc.compiler.passes._graph import nodes_of
from patchc.compiler.passes.drop_baselines import lone_baselines
from patchc.compiler.passes.share_prefix import share_prefix

SPEC = """
run ablated = d.corrupt with ablate L0.mlp.out
swap L{1,3}.H0.z from clean into ablated
    measure ld normalized
    as a
swap embed @ last, L2.resid_pre @ 2 from clean into corrupt
    measure ld
    as b
"""


def test_share_prefix_golden() -> None:
    before, after = before_after(SPEC, share_prefix)
    golden("share_prefix", before, after)
    fwd = {nid: f for nid, f in after.of_type(Forward)}
    base = next(nid for nid, f in fwd.items() if f.run == "ablated" and f.experiment is None)
    starts = sorted(f.start_layer for f in fwd.values() if f.twin == base)
    assert starts == [1, 3]  # the baked L0 write is in the twin's state
    for f in fwd.values():
        if f.start:
            read = after.node(f.start)
            assert isinstance(read, Read) and read.forward == f.twin
            assert read.site.kind == "resid_pre" and read.site.layer == f.start_layer
    # No forward of `corrupt` without writes was run (only table b's unpatched baselines
    # measured it): it was taken as the twin the two of table b need; the embed swap keeps
    # it as a twin at layer 0 (for narrow_positions), the other skips to layer 2.
    made = [nid for nid, f in fwd.items() if f.run == "corrupt" and not f.writes]
    assert len(made) == 1 and made[0] in lone_baselines(nodes_of(before), before.tables)
    assert sorted(f.start_layer for f in fwd.values() if f.twin == made[0]) == [0, 2]


def test_twins_are_computed_in_full() -> None:
    _, after = before_after(SPEC, share_prefix)
    twins = {f.twin for _, f in after.of_type(Forward) if f.twin}
    for t in twins:
        f = after.node(t)
        assert f.twin is None and f.start is None and not f.narrow
