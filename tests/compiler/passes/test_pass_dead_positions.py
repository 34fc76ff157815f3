"""dead_positions: a forward measured at a few positions, with no read or write of its own on
the MLP side of the top blocks, computes the last block's MLP there only."""

from passcases import before_after, golden

from patchc.compiler.ir import Forward, Read, Site
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


GRAD_SPEC = """
run a = d.clean
run b = d.corrupt
run c = d.clean
run e = d.corrupt
run g = d.clean
run h = d.corrupt
metric at_p = logit(d.answer) - logit(d.distractor) @ d.p
attribute L11.mlp.out @ 2, L11.resid_post @ last, L11.ln2.scale @ 1 from clean into corrupt
    using atp measure ld as grads
attribute L11.mlp.out @ 2 from a into b using relp measure ld as relp
read L11.mlp.out @ 2 in b as kept
attribute L11.mlp.post[0:4] @ last from c into e using ig(steps=2) measure ld as inside
attribute L11.mlp.out @ 2 from g into h using atp measure at_p as column
"""


def test_dead_positions_gradient_only_reads_golden() -> None:
    """Reads that only gradient estimates use, on the top block's MLP side, leave its MLP to
    the metric positions; a table's read, a site inside the MLP, or a source run that cannot
    be shown to hold the metric's positions keep it whole (the 12-layer tiny model: L11 is
    its last block)."""
    before, after = before_after(GRAD_SPEC, dead_positions)
    golden("dead_positions_gradient_only", before, after)
    live = {f.run: f.live_from for _, f in after.of_type(Forward)}
    assert live == {
        "clean": 0, "corrupt": 0,  # mlp.out, resid_post and ln2.scale: gradient-only
        "a": 0,  # the source of relp: gradient-only too
        "b": 12,  # its L11.mlp.out is also a `read` table's: every position stays
        "c": 12, "e": 12,  # mlp.post sits inside the MLP: its hooks would see one position
        "g": 12,  # a per-example column resolved in another run: not trusted
        "h": 0,  # the differentiated run's own metric positions
    }
    # Counting every read, as before, each of them keeps its last MLP whole.
    for fid, _ in after.of_type(Forward):
        sites = [r.site for r in map(after.node, after.g.successors(fid))
                 if isinstance(r, Read)]
        assert max(touched_layer(s) for s in sites) + 1 == 12
