"""narrow_positions: forwards whose own writes name positions are marked narrow."""

from passcases import before_after, golden

from patchc.compiler.ir import Forward, Write
from patchc.compiler.passes.narrow_positions import narrow_positions

SPEC = """
swap L{1,3}.H0.z @ last from clean into corrupt
    measure ld normalized
    as at_last
swap L2.resid_pre @ d.p from clean into corrupt
    measure ld
    as column
swap L2.mlp.out from clean into corrupt
    measure ld
    as everywhere
ablate L1.H0.z @ last in corrupt
    measure loss
    as lossy
"""


def test_narrow_positions_golden() -> None:
    before, after = before_after(SPEC, narrow_positions)
    golden("narrow_positions", before, after)
    for nid, f in after.of_type(Forward):
        own = [after.node(w) for w in f.writes]
        assert all(isinstance(w, Write) for w in own)
        at_all = any(w.pos.kind == "all" for w in own)
        table = next((t.name for t in after.tables for r in t.rows
                      for _, m in r.values if after.node(m).forward == nid), None)
        if table in ("at_last", "column"):
            assert f.narrow, nid
        if at_all or table == "lossy" or f.twin is None:
            assert not f.narrow, nid
