"""dedupe: identical forwards, writes, reads and metrics become one node."""

from passcases import before_after, golden

from patchc.compiler.ir import Forward, Metric, Write
from patchc.compiler.passes.dedupe import dedupe

SPEC = """
swap L{1,3}.H0.z @ last from clean into corrupt
    measure ld normalized
    as a
swap L1.H0.z @ last from clean into corrupt
    measure ld
    as b
ablate L1.H0.z @ last in corrupt with mean(clean)
    measure ld
    as c
"""


def test_dedupe_golden() -> None:
    before, after = before_after(SPEC, dedupe)
    golden("dedupe", before, after)
    # Table b's experiment is table a's first one: its write, forward and metric merge.
    assert after.count(Forward) == before.count(Forward) - 1
    assert after.count(Write) == before.count(Write) - 1
    assert after.count(Metric) == before.count(Metric) - 1
    a, b = after.tables[0], after.tables[1]
    assert b.rows[0].values == a.rows[0].values


def test_dedupe_is_idempotent() -> None:
    _, after = before_after(SPEC, dedupe)
    assert dedupe(after).g.number_of_nodes() == after.g.number_of_nodes()


def test_dedupe_keeps_repeated_writes_of_one_forward() -> None:
    """A run that steers twice by one vector applies the (merged) write twice."""
    body = """
vector v = mean(clean.L1.resid_post @ last)
run twice = d.corrupt with steer L1.resid_post @ last by v, steer L1.resid_post @ last by v
swap L2.H0.z @ last from clean into twice
    measure ld
    as t
"""
    _, after = before_after(body, dedupe)
    # (the other forward of `twice`, its base, measures the swap's unpatched baseline)
    (f,) = [f for _, f in after.of_type(Forward) if f.run == "twice" and f.experiment is not None]
    assert len(f.writes) == 3 and f.writes[0] == f.writes[1] != f.writes[2]
