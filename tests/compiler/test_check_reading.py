"""Check errors of the statements and additions of the language's §11-12 (read, lens,
measure ... in RUN, normalized between, position sets and spans, text, seqlogprob): each
with its code, line, column and message, and no cascade."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402

# lines 1-7; a case's own lines start at line 8
HEAD = '''model "./gpt2"
data ioi = "data/ioi.jsonl"
data facts = "data/facts.jsonl"
data s = [{"p": "When Mary and John went", "a": 1, "b": 3}, {"p": "the cat sat on it", "a": 2, "b": 0}]
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''  # noqa: E501

CASES = [
    ("read_measures", "read L0.resid_post in clean  measure ld",
     "E360", 8, 38, "`read` caches values and measures nothing"),
    ("lens_not_residual", "lens L0.mlp.post in clean  measure ld",
     "E361", 8, 6, "L0.mlp.post is not one"),
    ("lens_slice", "lens L0.resid_post[0:4] in clean  measure ld",
     "E361", 8, 6, "is not one"),
    ("lens_range", "lens L0.resid_post @ 1..3 in clean  measure ld",
     "E362", 8, 22, "a lens decodes one position per row"),
    ("lens_loss", "lens L0.resid_post in clean  measure loss",
     "E362", 8, 38, "cannot measure loss"),
    ("read_group", "read all(L0.mlp.out, L1.mlp.out) in clean",
     "E363", 8, 6, "takes sites, not a group"),
    ("read_attn_pattern", "read L0.attn.pattern in clean",
     "E363", 8, 6, "not `L0.attn.pattern`"),
    ("measure_bare_normalized", "measure ld normalized in clean",
     "E364", 8, 9, "bare `normalized` has nothing to map"),
    ("between_other_size", "swap L0.mlp.out from clean into corrupt\n"
     "    measure ld normalized between fact and clean\nrun fact = facts.prompt",
     "E365", 9, 35, "run `fact` has 2 examples, the measured run `corrupt` 3"),
    ("between_unknown_run", "measure ld normalized between corupt and clean in clean",
     "E309", 8, 31, "unknown run `corupt`"),
    ("text_in_expression", "measure text(3) + 1 in clean",
     "E366", 8, 9, "text(N) is a string per example"),
    ("text_normalized", "swap L0.mlp.out from clean into corrupt  measure text(2) normalized",
     "E366", 8, 50, "text(N) cannot be normalized"),
    ("text_attributed", "attribute L0.mlp.out from clean into corrupt using atp  measure "
     "text(2)", "E366", 8, 65, "estimates a metric of the prompt's logits"),
    ("seqlogprob_not_last", "metric sl = seqlogprob(ioi.answer) @ 2\nmeasure sl in clean",
     "E367", 9, 9, "measured at the last position"),
    ("span_two_tables",
     "run p = s.p\nablate embed @ s.a..facts.subject_pos in p  measure logit(\"the\")",
     "E368", 9, 16, "both ends from one data table"),
    ("span_empty", "run p = s.p\nablate embed @ s.a..s.b in p  measure logit(\"the\")",
     "E368", 9, 16, "row 1: empty position span a = 2 .. b = 0"),
    ("measure_where", "measure ld in clean\n    where $l > 1",
     "E369", 9, 11, "nothing for `where` to filter"),
    ("position_set_outside", "read L0.resid_post @ {1, 30} in clean",
     "E303", 8, 22, "got @ 30"),
    ("text_zero", "measure text(0) in clean", "E340", 8, 9, "text(0) must generate"),
    ("named_column_twice", "measure a = ld, a = logit(ioi.answer) in clean",
     "E327", 8, 17, "the result column `a` is measured twice"),
]


@pytest.fixture(scope="session")
def models() -> Models:
    return build()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_invalid_spec(models: Models, case):
    _id, body, code, line, col, fragment = case
    spec = parse(HEAD + body + "\n", "case.patch", models.spec_dir())
    with pytest.raises(PatchcError) as info:
        check(spec)
    errors = info.value.errors
    assert [(e.code, e.line, e.col) for e in errors] == [(code, line, col)], \
        [e.render() for e in errors]
    assert fragment in errors[0].message, errors[0].render()


def test_valid_statements_check(models: Models):
    spec = parse(HEAD + """run p = s.p
run noisy = s.p with noise(embed @ s.a..s.a, std=0.1)
read L*.H0.pattern, L0.resid_post @ {1, 3} in clean as acts
lens L*.resid_post @ each in clean measure ld, p = prob(ioi.answer) normalized between corrupt and clean
measure ld, acc = rank(ioi.answer) == 0, seqlogprob(ioi.answer), text(3) in clean as base
measure logit("the") in noisy
""", "case.patch", models.spec_dir())  # noqa: E501
    checked = check(spec)
    assert not [w for w in checked.warnings if w.code != "W301"]
