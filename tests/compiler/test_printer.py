"""The AST printer and the AST dump: golden files, round trips, canonical spelling.

Golden files live in tests/fixtures/ast/<spec>.txt (dump_ast) and tests/fixtures/fmt/<spec>.patch
(format_spec), for every spec in examples/language/ and tests/fixtures/specs/. Regenerate them
after an intended change with `PATCHC_UPDATE_GOLDEN=1 pytest tests/compiler/test_printer.py`
and review the diff.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from patchc.compiler.parse import parse, parse_file  # noqa: E402
from patchc.compiler.dump import dump_ast, strip_spans  # noqa: E402
from patchc.compiler.fmt import has_comments  # noqa: E402
from patchc.compiler.printer import format_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SPECS = sorted((ROOT / "examples" / "language").glob("*.patch")) + sorted(
    (FIXTURES / "specs").glob("*.patch"))
UPDATE = os.environ.get("PATCHC_UPDATE_GOLDEN") == "1"


def golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, "utf-8")
        return
    assert path.exists(), f"missing golden file {path}; run with PATCHC_UPDATE_GOLDEN=1"
    assert actual == path.read_text("utf-8"), f"{path} differs; PATCHC_UPDATE_GOLDEN=1 rewrites"


def test_specs_found():
    assert len(SPECS) >= 7


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_golden_ast(path: Path):
    golden(FIXTURES / "ast" / f"{path.stem}.txt", dump_ast(parse_file(path)))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_golden_fmt(path: Path):
    golden(FIXTURES / "fmt" / f"{path.stem}.patch", format_spec(parse_file(path)))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_fmt_is_idempotent(path: Path):
    once = format_spec(parse_file(path))
    assert format_spec(parse(once)) == once


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_fmt_preserves_ast(path: Path):
    spec = parse_file(path)
    again = parse(format_spec(spec))
    assert strip_spans(again) == strip_spans(spec)
    assert again != spec or not spec.statements  # spans do differ: the helper matters


def test_strip_spans_keeps_values():
    a = parse("metric m = logit(x.a) - 1")
    b = parse("metric   m =   logit(x.a)-1")
    c = parse("metric m = logit(x.a) - 2")
    assert a != b and strip_spans(a) == strip_spans(b) and strip_spans(a) != strip_spans(c)


# ---- canonical spelling ------------------------------------------------------------------------


def fmt(text: str) -> str:
    return format_spec(parse(text))


@pytest.mark.parametrize("src, expected", [
    # metric precedence: only the parentheses the grammar needs
    ("metric m = (a-b)-c", "metric m = a - b - c"),
    ("metric m = a-(b-c)", "metric m = a - (b - c)"),
    ("metric m = a+(b+c)", "metric m = a + (b + c)"),
    ("metric m = (a*b)+c", "metric m = a * b + c"),
    ("metric m = a*(b+c)", "metric m = a * (b + c)"),
    ("metric m = (a/b)/c", "metric m = a / b / c"),
    ("metric m = a/(b*c)", "metric m = a / (b * c)"),
    ("metric m = -(a)", "metric m = -a"),
    ("metric m = -(a*b)", "metric m = -(a * b)"),
    ("metric m = --a", "metric m = --a"),
    ("metric m = 2*-a", "metric m = 2 * -a"),
    ("metric m = ((logit(d.a)))", "metric m = logit(d.a)"),
    # numbers: the AST stores floats; integral ones print as ints
    ("metric m = 2.0*a + 0.5 - 1e-3 + 3e20", "metric m = 2 * a + 0.5 - 0.001 + 3e+20"),
    ("metric m = logit( id( 5 ) )@-1", "metric m = logit(id(5)) @ -1"),
    ("metric m = generate( 3 )contains d.a", "metric m = generate(3) contains d.a"),
    ("metric m = kl(clean) + loss + rank(\"x\")", "metric m = kl(clean) + loss + rank(\"x\")"),
    # vectors
    ("vector v = {1.0,4.0,8.0}*love", "vector v = {1, 4, 8} * love"),
    ("vector v = 2*(a+b)", "vector v = 2 * (a + b)"),
    ("vector v = (a+b)+c", "vector v = a + b + c"),
    ("vector v = a-(b-c)", "vector v = a - (b - c)"),
    ("vector v = -(2*a)", "vector v = -(2 * a)"),
    ("vector v = -3*a", "vector v = -3 * a"),
    ("vector v = normalize((a))+(0.5*b)", "vector v = normalize(a) + 0.5 * b"),
    ("vector v = mean( r.L6.resid_post@last )", "vector v = mean(r.L6.resid_post @ last)"),
    ("vector v = load( \"f\",key = \"k\" )", "vector v = load(\"f\", key=\"k\")"),
    ("vector v = sae(\"f\",feature=3)", "vector v = sae(\"f\", feature=3)"),
    # sites
    ("swap L*.H*.z@last from a into b", "swap L*.H*.z @ last from a into b"),
    ("swap all(L9.H6.z,L9.H9.z)@3 from a into b", "swap all(L9.H6.z, L9.H9.z) @ 3 from a into b"),
    ("swap L1.mlp.post[ 0 : 5 ][v,w]@2..5 from a into b",
     "swap L1.mlp.post[0:5][v, w] @ 2..5 from a into b"),
    ("swap L1.mlp.post[{1,2}] from a into b", "swap L1.mlp.post[{1, 2}] from a into b"),
    ("swap L{1,2}.z from a into b", "swap L{1,2}.z from a into b"),  # paths print as written
    # strings are re-escaped with JSON, non-ASCII kept
    ('run r = "caf\\u00e9 \\"x\\""', 'run r = "café \\"x\\""'),
    ('run r = [ "a" , "b", ]', 'run r = ["a", "b"]'),
    # set values and keyword arguments keep their type
    ('set dtype = "float32"', "set dtype = float32"),
    ('set memory = "8GB"', 'set memory = "8GB"'),
    ('set x = "true"', 'set x = "true"'),
    ("set lr = 1.0", "set lr = 1.0"),
    ("set seed = 0", "set seed = 0"),
    ("run r = d.p with noise(embed@d.s,std=3*std(embed),samples=10,seed=1)",
     "run r = d.p with noise(embed @ d.s, std=3 * std(embed), samples=10, seed=1)"),
    ("attribute L1.z from a into b using ig(steps=32.0, ah=false)",
     "attribute L1.z from a into b using ig(steps=32.0, ah=false)"),
    # ablation defaults to zero
    ("ablate L1.z in b with zero", "ablate L1.z in b"),
    ("run r = d.p with ablate L1.z with zero, freeze ln from a",
     "run r = d.p with ablate L1.z, freeze ln from a"),
])
def test_canonical(src: str, expected: str):
    assert fmt(src) == expected + "\n"
    assert fmt(expected) == expected + "\n"


def test_clauses_on_continuation_lines_in_order():
    src = "swap L1.z from a into b as t measure x normalized, y where $a > $b and $a >= -2"
    assert fmt(src) == (
        "swap L1.z from a into b\n"
        "    where $a > $b and $a >= -2\n"
        "    measure x normalized, y\n"
        "    as t\n"
    )


def test_several_measure_clauses_merge():
    assert fmt("dla L1.z in b measure x measure y") == "dla L1.z in b\n    measure x, y\n"


def test_backpatch_shared_pos_prints_once():
    expected = "backpatch L$j.resid_post -> L$i.resid_post @ last in q\n"
    assert fmt("backpatch L$j.resid_post @ last -> L$i.resid_post @ last in q") == expected
    assert fmt("backpatch L$j.resid_post -> L$i.resid_post @ last in q") == expected
    assert fmt("backpatch L$j.resid_post @ 2 -> L$i.resid_post in q from p") == (
        "backpatch L$j.resid_post @ 2 -> L$i.resid_post in q from p\n")
    assert fmt("backpatch L3.resid_post @ 2 -> L1.resid_post @ 0..2 in q") == (
        "backpatch L3.resid_post @ 2 -> L1.resid_post @ 0..2 in q\n")


def test_blank_lines_between_groups_and_before_operations():
    src = ('model "m"\nset seed = 1\nset dtype = float32\ndata d = "f.jsonl"\nrun a = d.x\n'
           "run b = d.y\nmetric m = logit(d.z)\nswap L1.z from a into b\ndla L1.z in a\n"
           "metric n = loss\n")
    assert fmt(src) == (
        'model "m"\n\nset seed = 1\nset dtype = float32\n\ndata d = "f.jsonl"\n\nrun a = d.x\n'
        "run b = d.y\n\nmetric m = logit(d.z)\n\nswap L1.z from a into b\n\ndla L1.z in a\n\n"
        "metric n = loss\n")


def test_inline_data_rows():
    src = 'data d = [{"a": 1, "b": 2.0, "c": [null, true]}, {"a": -3, "s": "é\\n"}]'
    assert fmt(src) == (
        "data d = [\n"
        '    {"a": 1, "b": 2.0, "c": [null, true]},\n'
        '    {"a": -3, "s": "é\\n"}\n'
        "]\n")
    assert fmt("data d = [ ]") == "data d = []\n"


def test_empty_spec():
    assert fmt("") == ""
    assert fmt("# only a comment\n\n") == ""


def test_format_spec_drops_comments_and_they_are_detected():
    src = '# header\nmodel "m"  # trailing\nrun r = "a # not a comment"\n'
    out = fmt(src)
    assert "#" not in out.replace('"a # not a comment"', "")
    assert has_comments(src)
    assert not has_comments(out)
    assert not has_comments('run r = "a # b \\" # c"\n')
    assert has_comments('run r = "a \\" b" # c\n')


def test_examples_have_comments():
    assert any(has_comments(p.read_text("utf-8")) for p in SPECS)


def test_dump_ast_shape():
    out = dump_ast(parse("swap L1.H*.z @ last from a into b\n    as t\n"))
    assert out.splitlines() == [
        "Spec",
        "  statements:",
        "    [0] Swap @1:1-2:9",
        "      sites:",
        '        [0] SiteRef @1:6-1:13 text="L1.H*.z" kind="z" features=None subspace=()',
        "          layer: Idx @1:7-1:8 value=1",
        "          head: Star @1:10-1:11",
        "          pos: PosLast @1:16-1:20",
        '      source: Name @1:26-1:27 value="a"',
        '      target: Name @1:33-1:34 value="b"',
        "      clauses: Clauses measures=() where=()",
        '        name: Name @2:8-2:9 value="t"',
    ]


def test_dump_ast_of_a_node():
    spec = parse("metric m = 1")
    assert dump_ast(spec.statements[0].expr) == "MNum @1:12-1:13 value=1.0\n"
