"""dead_positions: a forward measured at a few positions, with no read or write of its own on
the MLP side of the top blocks, computes the last block's MLP there only."""

from passcases import before_after, golden

from patchc.compiler.ir import Forward, Site
from patchc.compiler.passes.dead_positions import dead_positions, touched_layer

SPEC = """
swap L1.H0.z @ last from clean into corrupt
    measure ld
    as low
swap L3.H0.z from clean into corrupt
    measure ld
    as top_head
swap L3.mlp.out @ last from clean into corrupt
    measure ld
    as top_mlp
swap L1.H1.z @ last from clean into corrupt
    measure loss
    as full
"""


def test_dead_positions_golden() -> None:
    before, after = before_after(SPEC, dead_positions)
    golden("dead_positions", before, after)
    assert all(f.live_from is None for _, f in before.of_type(Forward))
    by_table = {t.name: after.node(after.node(t.rows[0].values[0][1]).forward)
                for t in after.tables}
    # Its own write is a head's z at layer 1, computed before that layer's MLP: from
    # layer 1's MLP on, only the measured position is live.
    assert by_table["low"].live_from == 1
    # A head's z is computed before the MLP: layer 3's MLP may still be cut.
    assert by_table["top_head"].live_from == 3
    # A write to layer 3's MLP output needs that MLP at every position it writes.
    assert by_table["top_mlp"].live_from == 4
    # `loss` reads the logits at every position: nothing is dead.
    assert by_table["full"].live_from is None
    # The clean run feeds the swaps with reads of L3.mlp.out: its last MLP is needed.
    clean = next(f for _, f in after.of_type(Forward) if f.run == "clean")
    assert clean.live_from == 4


def test_touched_layer() -> None:
    assert touched_layer(Site("embed")) == -1
    assert touched_layer(Site("resid_pre", 2)) == 1
    assert touched_layer(Site("z", 2, 1)) == 1
    assert touched_layer(Site("resid_post", 2)) == 2
    assert touched_layer(Site("mlp.post", 2, None, (0, 4))) == 2
    assert touched_layer(Site("ln_final.scale")) == float("inf")
    # edge receivers: a head's q/k/v input comes before its block's MLP; the MLP's does not
    assert touched_layer(Site("k.in", 3, 1)) == 2
    assert touched_layer(Site("mlp.in", 3)) == 3
    assert touched_layer(Site("logits.in")) == float("inf")
