"""Compact estimates (compiler/lower_estimates.py): the lowering's golden IR, its size (linear
in site items and layers, not in experiments), and every pass on it (golden before/after)."""

import pytest

from passcases import FIXTURES, HEAD, ROOT, UPDATE, before_after, golden, lowered

from patchc.compiler.dump_plan import ir_text
from patchc.compiler.ir import Backward, Estimate, Read
from patchc.compiler.ir_verify import verify
from patchc.compiler.ir_sweep import count
from patchc.compiler.passes.fuse_attribution import fuse_attribution
from patchc.compiler.check import check
from patchc.compiler.parse import parse
from patchc.compiler.pipeline import PASSES, experiment_counts, optimize

SPEC = """
attribute L{0,1}.resid_pre @ each, L$l.mlp.post[{0,7}] @ last
    from clean into corrupt using atp where $l >= 10
    measure ld normalized
    as atp
attribute L1.H{0,1}.z @ 1..2 from clean into corrupt using ig(steps=4)
    measure ld, prob(d.answer)
    as ig
attribute L{0,1}.attn.out @ d.p from clean into corrupt using relp
    measure ld
    as relp
"""


def test_lowering_golden() -> None:
    ir = lowered(SPEC, compact=True)
    verify(ir)
    path = FIXTURES / "lower_estimates.txt"
    if UPDATE:
        path.write_text(ir_text(ir), "utf-8")
    assert ir_text(ir) == path.read_text("utf-8"), f"{path} differs"


def test_one_estimate_per_item_and_measure() -> None:
    ir = lowered(SPEC, compact=True)
    estimates = [e for _, e in ir.of_type(Estimate)]
    assert all(e.space is not None for e in estimates)
    # atp: 2 items x 1 measure; ig: 1 item x 2 measures; relp: 1 item
    assert sorted((e.method, e.space.sites[0].kind, count(e.space)) for e in estimates) == \
        sorted([("atp", "resid_pre", 2 * 11), ("atp", "mlp.post", 2 * 2),  # L10, L11: where
                ("ig", "z", 2), ("ig", "z", 2), ("relp", "attn.out", 2)])
    # one Read per whole site and run: resid_pre x2 layers (every position), mlp.post of
    # L10, L11 (at `last`; the other layers' sites `where` drops are not read), z of two
    # heads (at 1..2), attn.out x2 (at d.p); never one per experiment
    assert ir.count(Read) == 2 * (2 + 2 + 2 + 2)
    assert [t.n_rows() for t in ir.tables] == [26, 2, 2]
    # counted from the index sets alone, as `check` does, without building the graph
    assert experiment_counts(check(parse(HEAD + SPEC, "<spec>", str(ROOT)))) == \
        {"atp": 26, "ig": 2, "relp": 2}
    assert all(not t.rows and t.sweeps for t in ir.tables)
    # a Backward per (metric, rules) of each statement (fuse_attribution merges them later)
    assert ir.count(Backward) == 1 + 2 + 1


def test_lowering_is_linear_in_layers_not_experiments() -> None:
    """`L*.resid_pre @ each`: 12 layers x 11 positions (the longest prompt) are 132
    experiments; every neuron at every position (`mlp.post[*] @ each`, 12 layers x 192
    neurons x 11 positions = 25,344 more) adds 2 Reads per layer and one Estimate."""
    small = lowered("attribute L*.resid_pre @ each from clean into corrupt using atp "
                    "measure ld as t\n", compact=True)
    big = lowered("attribute L*.resid_pre @ each, L*.mlp.post[*] @ each from clean into "
                  "corrupt using atp measure ld as t\n", compact=True)
    assert [t.n_rows() for t in small.tables] == [132]
    assert [t.n_rows() for t in big.tables] == [132 + 25344]
    # 2 forwards, 2 Reads per layer, the metric (also B's unpatched baseline), the source
    # run's unpatched baseline, the Backward, the Estimate
    assert small.g.number_of_nodes() == 2 + 2 * 12 + 1 + 1 + 1 + 1
    assert big.g.number_of_nodes() == small.g.number_of_nodes() + 2 * 12 + 1


@pytest.mark.parametrize("p", PASSES, ids=lambda p: p.__name__)
def test_pass_golden_with_estimates(p) -> None:
    before, after = before_after(SPEC, p, compact=True)
    golden(f"{p.__name__}_estimates", before, after)
    assert {e.space for _, e in after.of_type(Estimate)} <= \
        {e.space for _, e in before.of_type(Estimate)}


def test_optimized_fuses_into_one_backward_per_rules() -> None:
    ir = optimize(lowered(SPEC, compact=True))
    backs = sorted(b.rules for _, b in ir.of_type(Backward))
    assert backs == ["grad", "grad", "lrp"]  # ld (atp, ig) and prob (ig): grad; relp: lrp
    assert fuse_attribution in PASSES
