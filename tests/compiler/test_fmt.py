"""`patchc fmt` (compiler/fmt.py): the canonical layout with every comment kept.

Placement rules are pinned by small examples; hypothesis then injects comments at random line
ends and between random lines of the example specs (and of random specs from test_fuzz) and
checks that formatting keeps every comment in order, keeps the AST, and is idempotent.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_fuzz import spec_text  # noqa: E402  (tests/compiler is on sys.path under pytest)

from patchc.compiler.dump import strip_spans  # noqa: E402
from patchc.compiler.fmt import comments, format_source, name_tables, has_comments  # noqa: E402
from patchc.compiler.parse import parse, parse_file  # noqa: E402
from patchc.compiler.printer import format_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "examples" / "language").glob("*.patch")) + sorted(
    (ROOT / "tests" / "fixtures" / "specs").glob("*.patch"))
TEXTS = [p.read_text("utf-8") for p in SPECS]
SCALE = int(os.environ.get("PATCHC_FUZZ_SCALE", "1"))
SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck),
                    max_examples=200 * SCALE)


def fmt(text: str) -> str:
    return format_source(parse(text))


def texts(text: str) -> list[str]:
    return [c.text for c in comments(text)]


def check_fmt(text: str) -> str:
    """Format `text` and check the properties every input must have; returns the output."""
    spec = parse(text)
    out = format_source(spec)
    assert texts(out) == texts(text), out  # every comment, in the same order
    again = parse(out)
    assert strip_spans(name_tables(again)) == strip_spans(name_tables(spec)), out
    assert format_source(again) == out, out
    assert format_spec(name_tables(spec)) == format_spec(name_tables(again))
    return out


# ---- scanning ------------------------------------------------------------------------------------


def test_comments_scanned_like_the_lexer():
    src = ('run r = "a # not" # one "quoted"\n'
           '  # two\n'
           'run s = "esc \\" # still string" #three  \r\n'
           'data d = [{"k": "#"}]#four\n')
    found = comments(src)
    assert [(c.line, c.col, c.text, c.own_line) for c in found] == [
        (1, 19, '# one "quoted"', False),
        (2, 3, "# two", True),
        (3, 33, "#three", False),
        (4, 22, "#four", False),
    ]
    assert has_comments(src) and not has_comments('run r = "# x"\n')


# ---- placement ---------------------------------------------------------------------------------

TRICKY = '''  # indented before everything
# header

# second paragraph
model "m"  # the model
    # indented, after model
# about the data
data d = [  # rows
  {"a": "#not"},  # c1
  # inside
  {"b": 2}
]  # c2
run r = [
 "a", # x
 "b"
]
swap L1.z from a into b
# unindented, between head and clause
  measure m # m
  as t

    # indented after a blank line
# footer 1

# footer 2
'''

TRICKY_OUT = '''# indented before everything
# header

# second paragraph
model "m"  # the model
    # indented, after model

# about the data
data d = [  # rows
    {"a": "#not"},  # c1
    {"b": 2}
]
    # inside
    # c2

run r = ["a", "b"]
    # x

swap L1.z from a into b
    measure m
    as t
    # unindented, between head and clause
    # m
    # indented after a blank line

# footer 1

# footer 2
'''


def test_placement_rules():
    assert check_fmt(TRICKY) == TRICKY_OUT
    assert fmt(TRICKY_OUT) == TRICKY_OUT


def test_leading_comments_sit_directly_above_after_the_group_blank():
    src = 'run a = "x"\n\n# about b\n\nrun b = "y"\n# about the swap\nswap L1.z from a into b\n'
    assert check_fmt(src) == (
        'run a = "x"\n# about b\nrun b = "y"\n\n# about the swap\nswap L1.z from a into b\n'
        "    as op_7\n")  # the statement moved from line 7: its table keeps its name


def test_a_moved_statement_keeps_its_table_name():
    out = check_fmt('run a = "x"\n\n\n\nswap L1.z from a into a  measure m\n')
    assert out.endswith("    as op_5\n")
    assert "as op_" not in check_fmt('run a = "x"\n\nswap L1.z from a into a\n')


def test_first_line_comment_of_a_statement_printed_on_several_lines():
    src = "swap L1.z from a into b measure m as t  # why\n"
    assert check_fmt(src) == "swap L1.z from a into b  # why\n    measure m\n    as t\n"


def test_comments_that_end_clause_lines_stay_on_them():
    src = ("swap L$l.z from a into b\n"
           "  where $l > 0  # layers\n"
           "  measure m   # 0 = b, 1 = a\n"
           "  as t # the table\n")
    assert check_fmt(src) == ("swap L$l.z from a into b\n"
                              "    where $l > 0  # layers\n"
                              "    measure m  # 0 = b, 1 = a\n"
                              "    as t  # the table\n")


def test_clause_comments_that_would_change_order_go_after_the_statement():
    # `as` is printed after `measure`: the comments would swap places, so both go after
    src = "swap L1.z from a into b as t  # first line\n  # own line\n  measure m  # m\n"
    assert check_fmt(src) == ("swap L1.z from a into b  # first line\n    measure m\n"
                              "    as t\n    # own line\n    # m\n")


@pytest.mark.parametrize("src, expected", [
    ("", ""),
    ("\n\n", ""),
    ("# only\n", "# only\n"),
    ("   # only, indented\n\n\n# two   \n", "# only, indented\n\n# two\n"),
    ('model "m"', 'model "m"\n'),
    ('model "m" # no newline at the end', 'model "m"  # no newline at the end\n'),
    ('# a\r\nmodel "m"  # b\r\n\r\n# c\r\n', '# a\nmodel "m"  # b\n\n# c\n'),
])
def test_edges(src: str, expected: str):
    assert check_fmt(src) == expected


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_examples(path: Path):
    text = path.read_text("utf-8")
    out = check_fmt(text)
    assert has_comments(text)
    # Without its comments (and the `as op_LINE` that keeps a moved table's name) the output
    # is exactly format_spec's.
    def bare(text: str) -> list[str]:
        return [line.split("  #")[0] for line in text.splitlines()
                if not line.lstrip().startswith(("#", "as op_"))]

    assert bare(out) == bare(format_spec(parse_file(path)))


def test_without_comments_it_is_format_spec():
    for text in TEXTS:
        canonical = format_spec(parse(text))
        assert format_source(parse(canonical)) == canonical


# ---- hypothesis: random comments in the examples and in random specs ------------------------

comment = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12).map(
    lambda s: "#" + s)
indent = st.sampled_from(["", "", "  ", "    ", "\t"])
gap = st.sampled_from([" ", "  ", "\t", ""])


@st.composite
def with_comments(draw, base: st.SearchStrategy[str]) -> str:
    """`base` text with comments appended to random line ends and comment-only lines (at
    random indentation, blank lines around some) inserted between random lines."""
    lines = draw(base).split("\n")
    out: list[str] = []
    for line in lines:
        while draw(st.integers(0, 4)) == 0:
            out.append(draw(indent) + draw(comment))
            if draw(st.integers(0, 3)) == 0:
                out.append("")
        if "#" not in line and draw(st.integers(0, 2)) == 0:
            line += draw(gap) + draw(comment)
        out.append(line)
    return "\n".join(out)


@SETTINGS
@given(with_comments(st.sampled_from(TEXTS)))
def test_random_comments_in_examples(text: str):
    check_fmt(text)


@SETTINGS
@given(with_comments(spec_text()))
def test_random_comments_in_random_specs(text: str):
    check_fmt(text)
