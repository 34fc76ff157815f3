"""batch: forwards with the same start (run, twin, layer, narrowing) share a group."""

from passcases import before_after, golden

from patchc.compiler.ir import Forward
from patchc.compiler.passes.batch import batch

SPEC = """
swap L{1,3}.H{0,1}.z @ last from clean into corrupt
    measure ld normalized
    as heads
backpatch L3.resid_post -> L1.resid_post @ last in corrupt from clean
    measure ld
    as back
"""


def test_batch_golden() -> None:
    before, after = before_after(SPEC, batch)
    golden("batch", before, after)
    groups: dict[int, list[Forward]] = {}
    for _, f in after.of_type(Forward):
        if f.group is not None:
            groups.setdefault(f.group, []).append(f)
    # L1.H0, L1.H1 and the backpatch into L1 start at layer 1; L3.H0 and L3.H1 at layer 3.
    assert sorted(len(g) for g in groups.values()) == [2, 3]
    for members in groups.values():
        keys = {(f.run, f.twin, f.start_layer, f.start, f.narrow) for f in members}
        assert len(keys) == 1
    twins = {f.twin for _, f in after.of_type(Forward) if f.twin}
    assert all(after.node(t).group is None for t in twins)


def test_leaves_batch_across_depths() -> None:
    """A zero-ablation needs no other forward, a mean-ablation waits for the corrupt run's
    mean: different depths, but neither feeds a forward, so those that start at the same
    layer share a group (one pass, not two)."""
    _, after = before_after("ablate L*.mlp.out in clean\n    measure ld\n    as t\n"
                            "ablate L*.attn.out in clean with mean(corrupt)\n"
                            "    measure ld\n    as u\n", batch)
    starts: dict[int, set] = {}
    for _, f in after.of_type(Forward):
        if f.run == "clean" and f.experiment is not None:
            starts.setdefault(f.start_layer, set()).add(f.group)
    # every layer's two ablations in one group; groups differ between layers
    assert all(len(g) == 1 and None not in g for g in starts.values()), starts
    assert len({g for gs in starts.values() for g in gs}) == len(starts)
