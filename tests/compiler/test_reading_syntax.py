"""The syntax of the language's §11-12: what it parses to, and that the printer (the one
canonical printer, used by `patchc fmt`) writes it back to text that parses to the same AST."""

import pytest

from patchc.compiler import ast as A
from patchc.compiler.dump import strip_spans
from patchc.compiler.parse import parse
from patchc.compiler.printer import format_spec, mexpr, pos

ROUND_TRIPS = [
    "read L*.H*.pattern in clean",
    "read L0.resid_post @ {1, 3, 9}, embed @ d.a..d.b in clean\n    as acts",
    "lens L*.resid_post @ each in clean\n    measure ld, p = prob(d.answer)\n    as lensed",
    "measure ld, acc = rank(d.answer) == 0 in clean\n    as base",
    "measure ld normalized between corrupt and clean in clean",
    "swap L0.mlp.out from clean into corrupt\n"
    "    measure ld normalized between corrupt and clean, ld normalized, t = text(4)",
    "measure seqlogprob(d.answer), seqlogprob(\" the end\"), seqlogprob(id(5)) in clean",
    "measure (ld > 0) + 1, ld == (ld >= 2), -(ld != 0), ld < 1 - 2 in clean",
    "run noisy = d.p with noise(embed @ d.a..d.b, std=0.1)",
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_round_trip(text: str) -> None:
    spec = parse(text + "\n")
    out = format_spec(spec)
    assert out == text + "\n"
    assert strip_spans(parse(out).statements) == strip_spans(spec.statements)


def test_what_it_parses_to() -> None:
    (read, lens, meas) = parse(
        "read L0.resid_post @ {3, 1} in clean\n"
        "lens embed @ d.a..d.b in clean measure p = prob(d.answer) normalized between x and y\n"
        "measure rank(d.answer) == 0 in clean\n").statements
    assert isinstance(read, A.ReadSites) and A.op_keyword(read) == "read"
    assert read.sites[0].pos.values == (3, 1)
    span = lens.sites[0].pos
    assert isinstance(span, A.PosSpan) and (span.lo.column, span.hi.column) == ("a", "b")
    (m,) = lens.clauses.measures
    assert m.name.value == "p" and m.normalized
    assert (m.between[0].value, m.between[1].value) == ("x", "y")
    assert isinstance(meas, A.MeasureRun) and A.op_keyword(meas) == "measure"
    cmp = meas.clauses.measures[0].expr
    assert isinstance(cmp, A.MBin) and cmp.op == "==" and isinstance(cmp.right, A.MNum)
    assert pos(span) == "d.a..d.b" and mexpr(cmp) == "rank(d.answer) == 0"


def test_comparisons_do_not_chain() -> None:
    with pytest.raises(Exception) as info:
        parse("measure a == b == c in clean\n")
    assert getattr(info.value, "code", None) == "E100"
