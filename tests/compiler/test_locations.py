"""Every diagnostic names the right place: line splitting as the parser counts lines (form
feeds, NEL and U+2028 in comments), carets on the reported line, long lines and messages cut,
and the syntax errors a person meets (indentation, misspelt keywords, positions)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from patchc.compiler.errors import (  # noqa: E402
    NO_SPAN, ParseError, PatchcError, Source, Span, render_diagnostic, split_lines)
from patchc.compiler.parse import parse, parse_file  # noqa: E402


def error(text: str) -> PatchcError:
    with pytest.raises(PatchcError) as info:
        parse(text, "s.patch")
    return info.value


def caret_line(e: PatchcError) -> tuple[str, str]:
    """The echoed source line and the caret line of a rendered diagnostic."""
    lines = e.render().splitlines()
    return lines[1].split(" | ", 1)[1], lines[2].split(" | ", 1)[1]


@pytest.mark.parametrize("sep", ["\f", "\v", "\x85", "\u2028", "\u2029", "\x1c", "\r"])
def test_separators_in_comments_do_not_move_carets(sep: str):
    text = f'model "m"\n# a {sep} comment\nswap L1.H2.z from clean corrupt\n'
    e = error(text)
    assert (e.code, e.line, e.col) == ("E100", 3, 25)
    shown, caret = caret_line(e)
    assert shown == "swap L1.H2.z from clean corrupt" and caret == " " * 24 + "^" * 7


def test_separator_on_the_error_line_is_shown_as_one_column():
    e = error('swap L1.H2.z from clean corrupt  # x\u2028y\f\n')
    shown, caret = caret_line(e)
    assert "\u2028" not in shown and "\f" not in shown
    assert shown[caret.index("^"):].startswith("corrupt")
    assert len(e.render().splitlines()) == 3


def test_split_lines_counts_only_newlines():
    assert split_lines("a\fb\r\nc\u2028d\n") == ["a\fb", "c\u2028d", ""]
    assert Source("x\n\ny  \n\n\n").last_position() == (3, 2)


def test_eof_error_names_the_last_line_with_text():
    e = error('model "m"\nswap L0.mlp.out from\n\n\n   \n')
    assert e.code in ("E100", "E104") and e.line == 2
    e = error('model "m"\nmetric m = (a - b\n\n# trailing comment\n\n')
    assert e.line == 2 and caret_line(e)[0] == "metric m = (a - b"
    for tail in ("", "\n", "\n\n  ", "  # c", "\n# c\u2028\f\n\n"):
        e = error('model "m"\nmetric m = (a - b' + tail)
        assert e.line <= 3 and caret_line(e)[0].strip(), (tail, e.render())


def test_deep_nesting_is_located():
    e = error('model "m"\nmetric ok = 1\nmetric m = ' + "-(" * 2000 + "a" + ")" * 2000 + "\n")
    assert e.code == "E111" and e.line == 3 and e.col > 11
    e = error("metric m = " + " + ".join(["1"] * 400) + "\n")  # a long flat sum nests too
    assert e.code == "E111" and e.line == 1


def test_byte_order_mark_is_accepted(tmp_path: Path):
    p = tmp_path / "s.patch"
    p.write_bytes('\ufeffmodel "m"\nrun r = d.x\n'.encode("utf-8"))
    spec = parse_file(p)
    assert len(spec.statements) == 2 and spec.statements[0].span.col == 1
    assert len(parse('\ufeffmodel "m"\n').statements) == 1


def test_float_overflow_is_located():
    e = error("model \"m\"\nscale L0.mlp.out in clean by 1e999999 measure m\n")
    assert (e.code, e.line, e.col) == ("E110", 2, 30)


def test_a_megabyte_line_is_cut_around_the_caret():
    text = "swap L1.H2.z from clean corrupt" + " " * 1_000_000 + "x\n"
    e = error(text)
    out = e.render()
    assert len(out) < 600
    shown, caret = caret_line(e)
    assert shown[caret.index("^"):].startswith("corrupt")
    far = error("run r = d.x" + " " * 500_000 + " @\n")
    shown, caret = caret_line(far)
    assert shown.startswith("...") and shown[caret.index("^")] == "@"


def test_long_messages_are_cut():
    out = render_diagnostic("E324", "cycle: " + " -> ".join(f"m{i}" for i in range(3000)),
                            Span.point(1, 1), Source("metric m0 = m1\n"))
    assert len(out) < 700 and "more characters" in out


def test_unlocated_errors_print_no_line_or_column(tmp_path: Path):
    with pytest.raises(ParseError) as info:
        parse_file(tmp_path / "nope.patch")
    out = info.value.render()
    assert out.startswith(f"{tmp_path / 'nope.patch'}: error[E001]: ") and ":1:1" not in out
    (tmp_path / "latin.patch").write_bytes(b'model "caf\xe9"\n')
    with pytest.raises(ParseError) as info:
        parse_file(tmp_path / "latin.patch")
    out = info.value.render()
    assert info.value.code == "E002" and out.startswith(f"{tmp_path / 'latin.patch'}: error")
    assert render_diagnostic("E416", "m", NO_SPAN, Source("x")) == "<spec>: error[E416]: m"
    assert render_diagnostic("E601", "m", NO_SPAN, None) == "patchc: error[E601]: m"


def test_an_indented_statement_gets_an_indentation_hint():
    e = error('model "m"\nrun a = d.x\n  swap L0.mlp.out from a into b measure m\n')
    assert (e.code, e.line, e.col) == ("E100", 3, 3)
    assert "indented line continues the statement above" in (e.hint or "")


@pytest.mark.parametrize("text,word", [
    ("swap L0.mlp.out from a into b measur m\n", "measure"),
    ("swap L0.mlp.out from a into b measure m normalised\n", "normalized"),
    ("swap L0.mlp.out form a into b measure m\n", "from"),
])
def test_misspelt_keyword_gets_did_you_mean(text: str, word: str):
    e = error(text)
    assert e.code == "E100" and e.hint == f"did you mean `{word}`?", e.render()


@pytest.mark.parametrize("text,col,code", [
    ("swap L0.mlp.out @ first from a into b measure m\n", 19, "E112"),
    ("swap L0.mlp.out @ {} from a into b measure m\n", 20, "E100"),
    ("swap L0.mlp.out @ {1, last} from a into b measure m\n", 23, "E100"),
    ("swap L0.mlp.out @ \"x\" from a into b measure m\n", 19, "E100"),
])
def test_invalid_positions_say_what_positions_may_be(text: str, col: int, code: str):
    e = error(text)
    assert (e.code, e.col) == (code, col), e.render()
    for form in ("`last`", "`each`", "`2..5`", "`{1, 3, 9}`", "`DATA.column`",
                 "`DATA.a..DATA.b`"):
        assert form in (e.hint or ""), e.render()
