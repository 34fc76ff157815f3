"""Diagnostics a new user met without guidance: a repeated position in `@ {...}` (W303)
and one metric measured twice in a measure list (E327, whose hint names the column in
syntax that compiles)."""

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
'''


def test_repeated_position_warns_naming_it():
    program = patchc.compile(HEAD + "swap L0.resid_post @ {3, 1, 3} from clean into corrupt"
                                    " measure ld\n")
    [w] = [w for w in program.warnings if w.code == "W303"]
    assert "position 3 repeated in {3, 1, 3}" in w.message and "{1, 3}" in w.message
    assert (w.span.line, w.span.col, w.span.end_col) == (6, 22, 31)
    assert program.experiments == {"op_6": 1}


def test_distinct_positions_do_not_warn():
    program = patchc.compile(HEAD + "swap L0.resid_post @ {3, 1} from clean into corrupt"
                                    " measure ld\n")
    assert not [w for w in program.warnings if w.code == "W303"]


@pytest.mark.parametrize("stmt", [
    "swap L0.mlp.out from clean into corrupt measure ld, {item}",
    "measure ld, {item} in clean",
    "lens L*.resid_post @ last in clean measure ld, {item}",
])
def test_metric_measured_twice_hint_compiles(stmt):
    item = "ld normalized between corrupt and clean"
    with pytest.raises(PatchcError) as info:
        patchc.compile(HEAD + stmt.format(item=item) + "\n")
    [e] = [e for e in info.value.errors if e.code == "E327"]
    assert e.hint == f"give this column its own name: `ld_norm = {item}`"
    fixed = e.hint.split("`")[1]
    program = patchc.compile(HEAD + stmt.format(item=fixed) + "\n")
    assert program.ir.tables[0].columns[-2:] == ("ld", "ld_norm")


def test_hint_avoids_names_in_use():
    with pytest.raises(PatchcError) as info:
        patchc.compile(HEAD + "swap L0.mlp.out from clean into corrupt measure "
                              "ld_norm = ld, ld normalized, ld normalized\n")
    [e] = [e for e in info.value.errors if e.code == "E327"]
    assert "`ld_norm2 = ld normalized`" in (e.hint or "")


@pytest.mark.parametrize("stmt", [
    "swap L0.mlp.out from clean into corrupt measure ld normalized between corrupt and corrupt",
    "lens L*.resid_post in clean measure ld normalized between clean and clean",
    "measure ld normalized between corrupt and corrupt in clean",
])
def test_normalized_between_one_run_twice(stmt):
    """It could only give NaN (0 and 1 are the same value): refused before running."""
    with pytest.raises(PatchcError) as info:
        patchc.compile(HEAD + stmt + "\n")
    [e] = info.value.errors
    assert e.code == "E471" and "cannot be both 0 and 1" in e.message
    assert e.span.line == 6 and HEAD.count("\n") == 5
