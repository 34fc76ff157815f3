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


def _error(stmt: str, code: str) -> PatchcError:
    with pytest.raises(PatchcError) as info:
        patchc.compile(HEAD + stmt + "\n")
    [e] = [e for e in info.value.errors if e.code == code]
    return e


@pytest.mark.parametrize(("stmt", "code", "hint"), [
    # Habits from TransformerLens and nnsight, each met with the patchc way to write it.
    ("read blocks.1.attn.hook_pattern in clean as p", "E363", "read L1.H*.pattern in RUN"),
    ("read L0.H3 in clean as p", "E200", "L0.H3.z (the head's output before W_O)"),
    ("read transformer.h.0.mlp.output in clean as p", "E200", "is L0.mlp.out"),
    ("read L0.H3.z[:, -1] in clean as p", "E100", "positions are written after `@`"),
    ("swap L0.mlp.out from clean into corrupt measure logit_diff", "E312",
     "declared metrics: ld"),
])
def test_peer_habits_get_a_hint_in_patchc_terms(stmt: str, code: str, hint: str):
    assert hint in (_error(stmt, code).hint or "")


def test_site_list_names_only_this_models_sites():
    e = _error("read L0.resid_poost2x in clean as p", "E200")
    assert "router" not in (e.hint or "")  # (a dense model: no mixture-of-experts sites)


@pytest.mark.parametrize(("site", "words"), [
    ("blocks.0.ln1.hook_scale", "TransformerLens' hook_scale holds σ"),
    ("ln_final.hook_scale", "reciprocal"),
    ("blocks.1.attn.hook_z[3]", "not head 3"),
])
def test_transformerlens_names_that_mean_something_else_here_warn(site: str, words: str):
    program = patchc.compile(HEAD + f"read {site} in clean as r\n")
    [w] = [w for w in program.warnings if w.code == "W305"]
    assert words in w.message and w.span.line == 6
    canonical = patchc.compile(HEAD + "read L0.ln1.scale, L1.H3.z in clean as r\n")
    assert not [w for w in canonical.warnings if w.code == "W305"]


@pytest.mark.parametrize(("stmt", "line"), [
    ("attribute L*.H*.q @ last from clean into corrupt using relp(ah=true) measure ld", 6),
    ("attribute * -> * from clean into corrupt using relp(ah=true) measure ld", 6),
])
def test_relp_ah_over_q_and_k_warns_that_they_get_nothing(stmt: str, line: int):
    program = patchc.compile(HEAD + stmt + "\n")
    [w] = [w for w in program.warnings if w.code == "W306"]
    assert w.span.line == line and "no relevance reaches q or k" in w.message
    plain = patchc.compile(HEAD + stmt.replace("relp(ah=true)", "relp") + "\n")
    assert not [w for w in plain.warnings if w.code == "W306"]


def test_empty_method_parentheses_get_a_hint():
    e = _error("attribute L*.mlp.out from clean into corrupt using relp() measure ld", "E100")
    assert e.hint == "write `relp` alone for its defaults (no empty parentheses)"


def test_a_layer_or_head_named_twice_counts_once():
    """`L{1, -3}` on a 4-layer model is layer 1 twice: one row, not two equal ones (a
    circuit over the table would keep a node through its own duplicate)."""
    head = HEAD.replace("tiny-gpt2", "ioi-gpt2")
    program = patchc.compile(head + "swap L{1, -3}.mlp.out, L0.H{0, 0}.z from clean into corrupt"
                                    " measure ld\n")
    got = sorted(w.message for w in program.warnings if w.code == "W303")
    assert got == ["H0 named twice in H{0, 0}: each counts once",
                   "L1 named twice in L{1, -3}: each counts once"]
    assert program.experiments == {"op_6": 2}
    features = patchc.compile(head + "read L0.mlp.out[{3, 3, -125}] in clean as r\n")
    [w] = [w for w in features.warnings if w.code == "W303"]
    assert w.message == "feature 3 named twice in {3, 3, -125}: each counts once"
