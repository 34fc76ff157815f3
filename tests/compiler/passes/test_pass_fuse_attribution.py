"""fuse_attribution: one Backward per (metric, rules), with the union of the reads."""

from passcases import before_after, golden

from patchc.compiler.ir import Backward, Estimate
from patchc.compiler.passes.fuse_attribution import fuse_attribution

SPEC = """
attribute L{1,2}.mlp.out from clean into corrupt using atp
    measure ld
    as mlp
attribute L{1,2}.attn.out from clean into corrupt using atp
    measure ld
    as attn
attribute L1.mlp.out from clean into corrupt using relp
    measure ld
    as relp
"""


def test_fuse_attribution_golden() -> None:
    before, after = before_after(SPEC, fuse_attribution)
    golden("fuse_attribution", before, after)
    assert before.count(Backward) == 3 and after.count(Backward) == 2
    grads = [b for _, b in after.of_type(Backward) if b.rules == "grad"]
    assert len(grads) == 1 and len(grads[0].wrt) == 4
    for _, e in after.of_type(Estimate):
        assert isinstance(after.node(e.inputs[-1]), Backward)
