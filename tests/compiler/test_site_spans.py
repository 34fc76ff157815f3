"""An error about a site underlines the site (its path and `[...]` selections), never the
`@ POS` after it: checked for every operation, from the Python API."""

from pathlib import Path

import pytest

import patchc
from patchc.compiler.errors import PatchcError

ROOT = Path(__file__).resolve().parents[2]
HEAD = f'''model "{ROOT / 'examples' / 'models' / 'tiny-gpt2'}"
data ioi = "{ROOT / 'examples' / 'data' / 'ioi.jsonl'}"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
vector v = mean(clean.L0.resid_post @ last)
'''
BAD = "L0.resid_pst"
OPERATIONS = [
    f"read {BAD} @ last in clean",
    f"lens {BAD} @ last in clean",
    f"dla {BAD} @ last in clean",
    f"swap {BAD} @ last from clean into corrupt measure ld",
    f"ablate {BAD} @ last in corrupt measure ld",
    f"scale {BAD} @ last in clean by 0 measure ld",
    f"steer {BAD} @ last in corrupt by 2 * v measure ld",
    f"attribute {BAD} @ last from clean into corrupt using atp measure ld",
    f"compare atp against swap on {BAD} @ last from clean into corrupt measure ld",
    f"trace {BAD} @ last from clean into corrupt measure ld",
    f"backpatch {BAD} @ last -> L0.resid_pre @ last in clean measure ld",
    f"backpatch L1.resid_post @ last -> {BAD} @ last in clean measure ld",
    f"ablate all(L0.mlp.out, {BAD}) @ last in corrupt measure ld",
]


@pytest.mark.parametrize("stmt", OPERATIONS)
def test_bad_site_caret_covers_the_site_only(stmt):
    with pytest.raises(PatchcError) as info:
        patchc.compile(HEAD + stmt + "\n")
    e = next(e for e in info.value.errors if e.code == "E200")
    line = stmt
    col = line.index(BAD) + 1
    assert (e.span.line, e.span.col, e.span.end_line, e.span.end_col) == \
        (7, col, 7, col + len(BAD))
    caret = e.render().splitlines()[2]
    assert caret.endswith("^" * len(BAD))


def test_site_span_keeps_its_selections():
    with pytest.raises(PatchcError) as info:
        patchc.compile(HEAD + "ablate L0.mlp_pst[0:4] @ last in clean measure ld\n")
    e = next(e for e in info.value.errors if e.code == "E200")
    assert (e.span.col, e.span.end_col) == (8, 8 + len("L0.mlp_pst[0:4]"))
