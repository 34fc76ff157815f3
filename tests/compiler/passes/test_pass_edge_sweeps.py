"""Every pass on edge sweeps (compiler/ir_edges.py: swap/ablate over single edges, one sweep
Forward per receiver group): a golden before/after per pass."""

import pytest
from passcases import before_after, golden

from patchc.compiler.ir import Forward
from patchc.compiler.passes.batch import batch
from patchc.compiler.passes.dead_positions import dead_positions
from patchc.compiler.passes.dedupe import dedupe
from patchc.compiler.passes.narrow_positions import narrow_positions
from patchc.compiler.passes.prune_reads import prune_reads
from patchc.compiler.passes.share_prefix import share_prefix
from patchc.compiler.passes.trim_logits import trim_logits

SPEC = """
swap L0.H*.out -> L1.H{0,1}.q, L1.mlp.out -> logits, L0.mlp.out -> logits
    from clean into corrupt measure ld normalized as paths
swap L0.H*.out -> L1.H{0,1}.q, L1.mlp.out -> logits, L0.mlp.out -> logits
    from clean into corrupt measure ld normalized as again
ablate embed -> L1.H$h.k @ last in corrupt with mean(clean) where $h <= 2 measure ld as late
"""

PASSES = [dedupe, prune_reads, share_prefix, narrow_positions, batch, trim_logits,
          dead_positions]


def _sweeps(ir) -> dict[str, Forward]:
    return {nid: f for nid, f in ir.of_type(Forward) if f.sweep is not None}


@pytest.mark.parametrize("p", PASSES, ids=lambda p: p.__name__)
def test_pass_golden_with_edge_sweeps(p) -> None:
    before, after = before_after(SPEC, p, compact=True)
    golden(f"{p.__name__}_edge_sweep", before, after)
    assert len(_sweeps(before)) >= 3
    if p is share_prefix:  # each sweep starts at its receivers' layer (logits: after L11)
        starts = {f.sweep.space.receivers[0].kind: (f.start_layer, after.node(f.start).site)
                  for f in _sweeps(after).values()}
        assert {k: (s, str(site)) for k, (s, site) in starts.items()} == {
            "q.in": (1, "L1.resid_pre"), "logits.in": (12, "L12.logits.in"),
            "k.in": (1, "L1.resid_pre")}
    if p is narrow_positions:  # `@ last`: only the last position is computed
        assert [f.narrow for f in _sweeps(after).values()] == [False, False, True]
