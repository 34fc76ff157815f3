"""runtime/writes.make_readers: the Reads of one site share one hook, and each gets exactly
what its own make_reader hook would store."""

from __future__ import annotations

import torch

from patchc.compiler.ir import Positions, Read, Site
from patchc.runtime.inputs import make_batch
from patchc.runtime.writes import make_reader, make_readers


def test_reads_of_one_site_share_a_hook_and_match_make_reader() -> None:
    batch = make_batch([[5, 6, 7, 8], [9, 10]], pad_id=0)  # left padded to 4
    site = Site("resid_pre", 1)
    reads = [("r0", Read("f0", site, Positions("index", lo=0))),
             ("r1", Read("f0", site, Positions("last"))),
             ("r2", Read("f0", site, Positions("range", lo=0, hi=1))),
             ("r3", Read("f0", Site("resid_pre", 2), Positions("last"))),
             ("r4", Read("f0", site, stat="std"))]
    got: dict = {}
    hooks = make_readers(reads, batch, {}, got.__setitem__)
    # resid_pre L1 (three position reads), resid_pre L2, and the std statistic on its own.
    assert [(k, layer) for k, layer, _, _ in hooks] == \
        [("resid_pre", 1), ("resid_pre", 2), ("resid_pre", 1)]
    act = torch.randn(2, 4, 3)
    for _, _, _, fn in hooks:
        assert fn(act) is None
    for rid, read in reads:
        alone: dict = {}
        make_reader(read, batch, {}, lambda v, alone=alone: alone.__setitem__("v", v))(act)
        assert torch.equal(got[rid].value, alone["v"].value), rid
        assert got[rid].pos == read.pos
