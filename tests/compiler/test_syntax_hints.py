"""Syntax errors whose cause lies before the token the parser stopped at get a hint that
names it: a bracket never closed, a misspelled keyword read as a name, a word that begins
with a keyword (`zeros`); and `%` is spelled as it is written."""

from __future__ import annotations

import pytest

from patchc.compiler.errors import ParseError
from patchc.compiler.parse import parse

HEAD = 'model "m"\nrun a = ["x y"]\nrun b = ["x z"]\nmetric m = logit(" y")\n'  # 4 lines


def _error(body: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(HEAD + body, "case.patch")
    return info.value


def test_unclosed_bracket_names_where_it_opened():
    e = _error('run c = ["x y", "x z"\nswap L0.H0.z from a into b  measure m\n')
    assert (e.code, e.span.line, e.span.col) == ("E100", 6, 1)
    assert e.hint == "the '[' on line 5 (column 9) is never closed: add ']'"


def test_unclosed_bracket_at_end_of_file():
    e = _error('measure m, p = prob(" y" in a')
    assert e.code == "E104" or e.code == "E100"
    assert e.hint == "the '(' on line 5 (column 20) is never closed: add ')'"


def test_brackets_in_strings_and_comments_do_not_count():
    e = _error('run c = ["x [y", "x (z"  # a ( comment\nmeasure m in c\n')
    assert e.hint == "the '[' on line 5 (column 9) is never closed: add ']'"
    # closed brackets with a bracket inside a string: no bracket hint
    e = _error('run c = ["x ]y"]\nswap L0.H0.z fromm a into b  measure m\n')
    assert e.hint is None or "never closed" not in e.hint


def test_word_glued_to_a_keyword():
    e = _error("ablate L0.H0.z in a with zeros  measure m\n")
    assert e.message == "unexpected 'zeros'"
    assert (e.span.line, e.span.col, e.span.end_col) == (5, 26, 31)
    assert e.hint == "did you mean `zero`?"


def test_a_word_on_the_line_above_is_not_glued():
    # a comment ending in a keyword, then a stray word at the start of the next line: the
    # error points at that word, not at a word made of both
    e = _error("# and this is between\nclean the two\n")
    assert e.message.startswith("unexpected 'clean'")
    assert (e.span.line, e.span.col) == (6, 1)
    assert e.hint != "did you mean `lens`?"  # (a look-alike, not a misspelling)
    e = _error("swap L0.H0.z from a into b  measure m  # fromm\nfoo\n")
    assert "fromm" not in (e.hint or "")


@pytest.mark.parametrize("body, word, keyword, col", [
    ("swap L0.H0.z fromm a into b  measure m", "fromm", "from", 20),
    ("swap L0.H0.z from a intoo b  measure m", "intoo", "into", 27),
])
def test_misspelled_keyword_before_the_error(body, word, keyword, col):
    e = _error(body + "\n")
    assert (e.code, e.span.line, e.span.col) == ("E100", 5, col)
    assert e.hint == f"`{word}` is not a keyword: did you mean `{keyword}`?"


def test_misspelled_keyword_itself_keeps_its_hint():
    e = _error("swap L0.H0.z from a into b  mesure m\n")
    assert e.hint == "did you mean `measure`?"


def test_percent_is_written_as_the_sign():
    e = _error("swap L0.H0.z from a into b  measure m  as t\ncircuit c = top 0.5 of t\n")
    assert e.message == "unexpected 'of'; expected '%'"


def test_a_bracket_closed_later_is_not_called_unclosed():
    e = _error("measure logit(a.x, a.y) in a\n")
    assert e.message == "unexpected ','; expected ')'"
    assert e.hint is None


def test_unnamed_literals_are_named_as_written():
    """`backpatch A, B` (it takes `A -> B`) was reported as `expected ` and nothing."""
    e = _error("backpatch L0.H0.z, L0.H1.z in a  measure m\n")
    assert e.message == "unexpected ','; expected '->'"


@pytest.mark.parametrize("by", ["3", "{1, 2}", "-0.5"])
def test_steer_by_a_number_alone_says_it_scales_a_vector(by):
    e = _error(f"steer L1.resid_post in a by {by}  measure m\n")
    assert e.message == "unexpected 'measure'; expected '*'"
    assert e.hint and "`by {1, 2, 4} * v`" in e.hint


def test_compare_of_two_tables_shows_the_form():
    e = _error("swap L0.H0.z from a into b  measure m  as t1\ncompare t1, t2\n")
    assert e.message == "unexpected end of line; expected ',', 'against'"
    assert e.hint and "`compare atp, relp against swap on SITES from A into B" in e.hint


def test_an_edge_without_a_receiver_names_it():
    e = _error("swap L0.H0.out -> from a into b  measure m\n")
    assert e.hint == ("`->` needs a receiver (`L1.H0.q`, `L1.mlp.in`, `logits`, or `*`) "
                      "before `from`")


def test_a_star_sender_takes_no_position():
    from patchc.compiler.errors import SpecErrors

    with pytest.raises(SpecErrors) as info:
        parse(HEAD + "swap * @ last -> * from a into b  measure m\n", "case.patch")
    (e,) = info.value.errors
    assert e.code == "E113" and "after its receiver" in e.message


def test_warnings_show_beside_errors():
    """A spec with errors still shows its warnings, in spec order."""
    import transformers as T

    from patchc.compiler.check import check
    from patchc.compiler.errors import SpecErrors
    from patchc.compiler.modelspec import spec_from_config

    text = ('model "m"\nrun a = ["x y"]\nmetric m = logit(id(1))\n'
            "swap L0.H0.z @ {1, 1} from a into a  measure m\n"
            "swap L9.H0.z from a into a  measure m\n")
    model = spec_from_config(T.GPT2Config(n_layer=2, n_head=2, n_embd=8).to_dict())
    with pytest.raises(SpecErrors) as info:
        check(parse(text, "case.patch"), model=model, tokenizer=None)
    shown = info.value.render()
    assert [e.code for e in info.value.errors] == ["E201"]
    assert shown.index("warning[W303]") < shown.index("error[E201]")  # line 4 before 5
