"""Circuits in the compiler: `circuit NAME = top K of TABLE` and `evaluate` parse, print back,
check with located errors (E370-E374, E530), and lower to one Select and gated Writes; the
areas cpr/cmd follow the MIB benchmark's trapezoids."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

from patchc.compiler import ast as A  # noqa: E402
from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import PatchcError, PlanError  # noqa: E402
from patchc.compiler.fmt import format_source  # noqa: E402
from patchc.compiler.ir import Forward, Select, Write  # noqa: E402
from patchc.compiler.lower import count_rows, lower  # noqa: E402
from patchc.compiler.lower_circuits import areas, size_of  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402

HEAD = '''model "./gpt2"
data ioi = "data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
swap L*.H*.z from clean into corrupt  measure ld  as heads
'''  # a case's own lines start at line 7


@pytest.fixture(scope="session")
def models() -> Models:
    return build()


def _check(models: Models, body: str):
    return check(parse(HEAD + body, "case.patch", models.spec_dir()))


def _errors(models: Models, body: str) -> list[PatchcError]:
    with pytest.raises(PatchcError) as info:
        _check(models, body)
    return info.value.errors


def test_parse_and_print_round_trip():
    text = ("circuit c = top {5, 10%, 2.5%} of heads\n\n"
            "evaluate c in clean with mean(corrupt)\n    measure ld\n    as ev\n")
    spec = parse(text)
    decl, ev = spec.statements
    assert isinstance(decl, A.CircuitDecl) and decl.is_list
    assert [(k.value, k.percent) for k in decl.sizes] == [(5, False), (10, True), (2.5, True)]
    assert isinstance(ev, A.Evaluate) and (ev.how.kind, ev.how.run) == ("mean", "corrupt")
    assert format_source(spec) == text
    one = "circuit c = top 7 of t\n"
    assert format_source(parse(one)) == one


def test_circuit_words_stay_names(models: Models):
    """`circuit`, `top` and `of` are keywords only inside the circuit statement (the
    language's own example names a table `circuit`)."""
    _check(models, "ablate L0.H0.z in clean  measure ld  as circuit\nrun top = ioi.clean\n")


CASES = [  # (id, body, code, line, col, message fragment)
    ("unknown_table", "circuit c = top 5 of heds", "E370", 7, 22, "unknown result table `heds`"),
    ("table_after", "circuit c = top 5 of later\nablate L0.H0.z in clean  measure ld  as later",
     "E370", 7, 22, "made on line 8, after this circuit"),
    ("not_a_node_table", "dla L*.H*.out in clean  measure ld  as d\ncircuit c = top 5 of d",
     "E371", 8, 22, "made by `dla`) is not a node or edge table"),
    ("percent_zero", "circuit c = top 0% of heads", "E372", 7, 17, "got 0%"),
    ("percent_too_big", "circuit c = top {5, 150%} of heads", "E372", 7, 21, "got 150%"),
    ("size_twice", "circuit c = top {5, 5} of heads", "E372", 7, 21, "listed twice"),
    ("unknown_circuit", "evaluate cc in clean with ablate(corrupt)  measure ld", "E373", 7, 10,
     "unknown circuit `cc`"),
    ("normalized", "circuit c = top 5 of heads\n"
     "evaluate c in clean with ablate(corrupt)  measure ld normalized", "E374", 8, 51,
     "faithfulness"),
    ("measured_twice", "circuit c = top 5 of heads\n"
     "evaluate c in clean with ablate(corrupt)  measure ld  measure ld", "E327", 8, 63,
     "measured twice"),
    ("unknown_run", "circuit c = top 5 of heads\n"
     "evaluate c in clean with ablate(corupt)  measure ld", "E309", 8, 26,
     "unknown run `corupt`"),
    ("nothing_measured", "circuit c = top 5 of heads\nevaluate c in clean with mean(corrupt)",
     "E337", 8, 1, "measures nothing"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_invalid(models: Models, case):
    _id, body, code, line, col, fragment = case
    errors = _errors(models, body + "\n")
    assert [(e.code, e.line, e.col) for e in errors] == [(code, line, col)], \
        [e.render() for e in errors]
    assert fragment in errors[0].message
    assert f"case.patch:{line}:{col}: error[{code}]" in errors[0].render()


def test_size_beyond_the_table(models: Models):
    """K larger than the table's rows (16 heads): E530 where `patchc check` counts rows."""
    checked = _check(models, "circuit c = top {4, 17} of heads\n")
    with pytest.raises(PlanError) as info:
        count_rows(checked)
    assert info.value.code == "E530" and (info.value.span.line, info.value.span.col) == (7, 21)
    assert "has 16 rows: a circuit cannot keep 17" in info.value.message


def test_lowering(models: Models):
    """One Select over the table's rows; per size a forward of B with one gated write per
    head (size 0: gated to keep nothing; every row: B's own forward); faithfulness
    normalized between."""
    checked = _check(models, "circuit c = top {0, 4, 16} of heads\n"
                     "evaluate c in clean with ablate(corrupt)  measure ld  as ev\n")
    assert count_rows(checked) == {"heads": 16, "c": 16, "ev": 3}
    ir = lower(checked)
    (sid, sel), = ir.of_type(Select)
    heads = next(t for t in ir.tables if t.name == "heads")
    assert sel.rows == tuple(dict(r.values)["ld"] for r in heads.rows)
    assert ir.node(sel.reference).forward == next(
        i for i, f in ir.of_type(Forward) if f.run == "corrupt" and not f.writes)
    ev = next(t for t in ir.tables if t.name == "ev")
    assert ev.columns == ("nodes", "fraction", "ld", "faithfulness")
    forwards = [ir.node(ir.node(dict(r.values)["ld"]).forward) for r in ev.rows]
    empty, four, full = forwards
    assert full.run == "clean" and full.writes == ()
    gated = [ir.node(w) for w in four.writes]
    assert len(gated) == 16 and all(w.gate == sid and w.top == 4 for w in gated)
    assert sorted(w.rows for w in gated) == [(i,) for i in range(16)]
    assert all(isinstance(ir.node(w), Write) and (ir.node(w).gate, ir.node(w).top) == (sid, 0)
               for w in empty.writes)
    norm = dict(ev.rows[1].normalize)["faithfulness"]
    assert [ir.node(ir.node(m).forward) for m in norm] == [empty, full]
    circuit = next(t for t in ir.tables if t.name == "c")
    assert circuit.op == "circuit" and circuit.select == sid


def test_size_of():
    k = A.CircuitSize
    span = parse("model \"m\"\n").statements[0].span
    assert size_of(k(29, True, span), 100) == (29, 0.29)  # not 28: 0.29 * 100 < 29
    assert size_of(k(10, True, span), 16) == (1, 0.1)  # floor
    assert size_of(k(100, True, span), 16) == (16, 1.0)
    assert size_of(k(0, False, span), 16) == (0, 0.0)
    assert size_of(k(4, False, span), 16) == (4, 0.25)


def test_areas():
    # Two trapezoids: [0, .5] from 0 to .8, [.5, 1] from .8 to 1 (points in any order).
    cpr, cmd = areas([(1.0, 1.0), (0.0, 0.0), (0.5, 0.8)])
    assert cpr == pytest.approx(0.5 * 0.4 + 0.5 * 0.9)
    assert cmd == pytest.approx(0.5 * (1 + 0.2) / 2 + 0.5 * (0.2 + 0) / 2)
    # Above 1 counts as distance from 1 too; one size has no area.
    assert areas([(0.1, 1.5), (0.2, 1.5)])[1] == pytest.approx(0.1 * 0.5)
    assert all(math.isnan(a) for a in areas([(0.5, 0.7)]))


def test_edge_circuit_lowering(models: Models):
    """An edge circuit: the receiver writes of path patching (one per receiver), gated per
    size (the empty circuit: top 0), `rows` naming each sender's table row."""
    checked = _check(models, "attribute * -> * from corrupt into clean using eap  measure ld"
                     "  as edges\ncircuit c = top {0, 7} of edges\n"
                     "evaluate c in clean with ablate(corrupt)  measure ld  as ev\n")
    ir = lower(checked)
    (sid, _), = ir.of_type(Select)
    edges = next(t for t in ir.tables if t.name == "edges")
    ev = next(t for t in ir.tables if t.name == "ev")
    assert ev.columns == ("edges", "fraction", "ld", "faithfulness")
    empty, seven = [ir.node(ir.node(dict(r.values)["ld"]).forward) for r in ev.rows]
    plain = [ir.node(w) for w in empty.writes]
    gated = [ir.node(w) for w in seven.writes]
    assert all(w.gate == sid and w.top == 0 and w.senders for w in plain)
    assert [(w.site, w.senders) for w in gated] == [(w.site, w.senders) for w in plain]
    assert all(w.gate == sid and w.top == 7 and len(w.rows) == len(w.senders) for w in gated)
    # The edge table lowers compactly: its rows are the members of its edge Estimate.
    keys = [k for b in edges.sweeps for k in b.space.row_keys()]
    index = {(dict(k)["sender"], dict(k)["receiver"]): i for i, k in enumerate(keys)}
    from patchc.compiler.edges import receiver_text

    for w in gated:
        for s, row in zip(w.senders, w.rows):
            assert index[str(s), receiver_text(w.site)] == row
    assert sum(len(w.rows) for w in gated) == edges.n_rows() == len(keys)


def test_sizes_that_keep_nothing_or_repeat_warn(models: Models):
    """A circuit of one size keeping none of 16 rows (1%) warns (W474); in a list of sizes
    such a point belongs to the curve (MIB's grid) and does not. 50% and 8 of 16 rows are
    the same point of the curve (W475); 1% and 2% keep the same 0 rows at two places of it
    and do not warn. Located at the size."""
    one = _check(models, "circuit c = top 1% of heads\n")
    assert [(w.code, w.span.line, w.span.col) for w in one.warnings] == [("W474", 7, 17)]
    assert "keeps none of its 16 rows" in one.warnings[0].message
    many = _check(models, "circuit c = top {1%, 2%, 50%, 8, 4} of heads\n")
    assert [(w.code, w.span.line, w.span.col) for w in many.warnings] == [("W475", 7, 31)]
    assert "as `top 50%`" in many.warnings[0].message
    assert not _check(models, "circuit c = top {10%, 50%, 3} of heads\n").warnings
    assert not _check(models, "circuit c = top 0 of heads\n").warnings  # the empty circuit


def test_rows_that_repeat_an_edge_warn(models: Models) -> None:
    """A capture over the k heads of a grouped-query model keeps one row per query head, and
    rows of one kv group patch one edge: W304 at the circuit. A pattern lists each kv head
    once: no warning."""
    head = HEAD.replace('"./gpt2"', '"./llama"').replace("L*.H*.z", "L0.mlp.out")
    cap = check(parse(head + "swap L0.H0.out -> L1.H$h.k from clean into corrupt  measure ld  "
                      "as cap\ncircuit c = top 2 of cap\n", "case.patch", models.spec_dir()))
    (w,) = [w for w in cap.warnings if w.code == "W304"]
    assert w.line == 8 and "6 row(s) of `cap`" in w.message
    pat = check(parse(head + "swap L0.H0.out -> L1.H*.k from clean into corrupt  measure ld  "
                      "as pat\ncircuit c = top 2 of pat\n", "case.patch", models.spec_dir()))
    assert not [w for w in pat.warnings if w.code == "W304"]


def test_items_that_overlap_warn_at_one_position_only(models: Models) -> None:
    """Two items naming one edge at the same positions repeat it (W304); the same edge at
    another position is another row's own component."""
    body = ("swap L0.H0.out -> L1.H0.q, L0.H*.out -> L1.H0.q, L0.H0.out -> L1.H0.q @ last "
            "from clean into corrupt  measure ld  as t\ncircuit c = top 2 of t\n")
    (w,) = [w for w in _check(models, body).warnings if w.code == "W304"]
    assert "1 row(s) of `t`" in w.message
