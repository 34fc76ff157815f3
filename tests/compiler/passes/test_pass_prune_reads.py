"""prune_reads: nodes that no table reaches are dropped."""

from passcases import before_after, golden, lowered

from patchc.compiler.ir import ALL_POSITIONS, Forward, Read, Site
from patchc.compiler.ir_verify import verify
from patchc.compiler.passes.prune_reads import prune_reads

SPEC = """
swap L{1,3}.H0.z @ last from clean into corrupt
    measure ld
    as a
"""


def test_prune_reads_golden() -> None:
    before, after = before_after(SPEC, prune_reads)
    # Lowering makes nothing dead: add a Read nobody consumes and a forward nobody reads.
    dead = before.copy()
    f0 = next(nid for nid, f in dead.of_type(Forward) if f.run == "clean")
    dead.add(Read(f0, Site("resid_post", 2), ALL_POSITIONS), [f0])
    extra = dead.add(Forward("clean", (), 99))
    dead.add(Read(extra, Site("embed"), ALL_POSITIONS), [extra])
    verify(dead)
    after = prune_reads(dead)
    verify(after)
    golden("prune_reads", dead, after)
    assert after.g.number_of_nodes() == before.g.number_of_nodes()
    assert set(after.g.nodes) == set(before.g.nodes)


def test_prune_reads_keeps_what_tables_use() -> None:
    ir = lowered(SPEC)
    assert set(prune_reads(ir).g.nodes) == set(ir.g.nodes)
