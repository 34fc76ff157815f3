"""trim_logits: forwards unembed only the positions (and token ids) metrics read."""

from passcases import before_after, golden

from patchc.compiler.ir import Forward, Positions
from patchc.compiler.passes.trim_logits import trim_logits

SPEC = """
metric at_p = logit(d.answer) @ d.p
swap L1.H0.z @ last from clean into corrupt
    measure ld normalized
    as tokens
swap L2.H0.z @ last from clean into corrupt
    measure logprob(d.answer), at_p
    as softmax
swap L3.H0.z @ last from clean into corrupt
    measure loss
    as full
swap L3.H1.z @ last from clean into corrupt
    measure kl(clean)
    as kl_clean
"""


def test_trim_logits_golden() -> None:
    before, after = before_after(SPEC, trim_logits)
    golden("trim_logits", before, after)
    by_table = {}
    for t in after.tables:
        fid = after.node(t.rows[0].values[0][1]).forward
        by_table[t.name] = after.node(fid)
    last, column = Positions("last"), Positions("column", column=("d", "p"))
    assert by_table["tokens"].logit_positions == (last,) and by_table["tokens"].logit_tokens
    assert set(by_table["softmax"].logit_positions) == {last, column}
    assert not by_table["softmax"].logit_tokens
    assert by_table["full"].logit_positions is None
    assert by_table["kl_clean"].logit_positions == (last,) and not by_table["kl_clean"].logit_tokens
    clean = next(f for _, f in after.of_type(Forward) if f.run == "clean")
    # clean is measured (normalized) and compared with (kl): all the vocabulary at last; and
    # at d.p, the unpatched baseline of softmax's raw `at_p` on its source run.
    assert set(clean.logit_positions) == {last, column} and not clean.logit_tokens
