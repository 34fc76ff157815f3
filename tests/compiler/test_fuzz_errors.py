"""Fuzzing the whole front end, API and CLI (hypothesis): mutations of the bundled specs,
including the characters that split lines differently for different readers (form feed,
vertical tab, NEL, U+2028/U+2029, CR), a byte-order mark, lone surrogates, NULs, huge
numbers, deep nesting and long lines. Each mutated spec is parsed and checked against its
real model, then lowered and optimized. Asserted: nothing but a PatchcError ever escapes (the
CLI exits 0 or 1, never 2, never a traceback), and every located diagnostic's caret lands on
the line it names, a line of the spec, whose text it echoes.

PATCHC_FUZZ_SCALE=50 runs 50x the examples (a longer hunt than the default run of CI).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from patchc.cli import main  # noqa: E402
from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import NO_SPAN, PatchcError, split_lines  # noqa: E402
from patchc.compiler.lower import lower  # noqa: E402
from patchc.compiler.pipeline import optimize  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "examples" / "language"  # the examples' models and data resolve from here
EXAMPLES = [p.read_text("utf-8") for p in sorted(BASE.glob("*.patch"))]
SCALE = int(os.environ.get("PATCHC_FUZZ_SCALE", "1"))

SEPARATORS = ["\f", "\v", "\x85", "\u2028", "\u2029", "\r", "\r\n", "\x1c", "\x00", "\t"]
ODD = SEPARATORS + [
    "\ufeff", "\ud800", "\udfff", '"\\ud800"', '"\\udc00x"', "1e999999", "9" * 400,
    "-(" * 300, " " * 3000, "é", "\U0001f600", "# c\f\u2028", "@ first", "@ {}", "@ {1,3,9}",
    "measur", "normalised", "  swap", "\n  ", "samples=100000000", "steps=100000000",
    "generate(99999)", "set seed = 99999999999999999999\n", '"\\u0000"', "L99999999999.z",
    "@ ioi.a..ioi.b", " normalized between clean and corrupt", "seqlogprob(ioi.answer)",
    "text(3)", "read L0.resid_post @ last in clean\n", "lens L*.resid_post in clean\n",
]

# Words that keep a spec well-formed but wrong (check's errors rather than the parser's).
WORDS = ["L99", "H77", "mlp.ouut", "clena", "ld2", "first", "swap", "0", "-1", "ioi.nope",
         "99999999999999999999", "1e999999", "resid_mid", "kl", "each", "last", "x.y.z"]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "replace", "comment", "line", "delete", "word",
                                   "word"]))
        piece = draw(st.sampled_from(ODD) | st.characters(max_codepoint=0x10FFFF))
        if op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "replace":
            text = text[:i] + piece + text[i + draw(st.integers(1, 6)):]
        elif op == "comment":  # a separator inside a comment must not move any caret
            text = text[:i] + "# x" + draw(st.sampled_from(SEPARATORS)) + "y\n" + text[i:]
        elif op == "line":
            lines = text.split("\n")
            k = draw(st.integers(0, len(lines)))
            lines.insert(k, draw(st.sampled_from(ODD)))
            text = "\n".join(lines)
        elif op == "word":
            spans = [m.span() for m in re.finditer(r"[\w.$*]+", text)]
            a, b = spans[draw(st.integers(0, len(spans) - 1))]
            text = text[:a] + draw(st.sampled_from(WORDS)) + text[b:]
        else:
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
    return text


def assert_located(e: PatchcError, text: str) -> None:
    """Every diagnostic of `e` names a line of `text` and echoes it, caret under a column of
    that line (or one past its end)."""
    lines = split_lines(text.removeprefix("\ufeff"))
    for err in e.errors:
        assert err.code and err.render()
        if err.span == NO_SPAN:
            continue
        assert 1 <= err.line <= len(lines), (err.render(), len(lines))
        line = lines[err.line - 1]
        assert 1 <= err.col <= len(line) + 1, (err.render(), line[:200])
        rendered = err.render().splitlines()
        assert re.match(rf"\S*:{err.line}:{err.col}: (error|warning)\[", rendered[0]), rendered
        if len(rendered) > 2 and rendered[1].startswith(f" {err.line} | "):
            shown = rendered[1].split(" | ", 1)[1]
            caret = rendered[2].split(" | ", 1)[1]
            assert caret.strip().strip("^") == "", caret
            if len(line) <= 100:  # not cut to a window: the echo is the line itself
                assert len(shown) == len(line), (shown, line)
                assert caret.index("^") == err.col - 1


SETTINGS = settings(deadline=10_000, suppress_health_check=list(HealthCheck),
                    max_examples=150 * SCALE, derandomize=SCALE == 1)


@SETTINGS
@given(mutated())
def test_api_raises_only_located_patchc_errors(text: str):
    try:
        checked = check(parse(text, "fuzz.patch", str(BASE)))
        optimize(lower(checked))  # what `check` and `run` do next
    except PatchcError as e:
        assert_located(e, text)
        return
    for w in checked.warnings:
        assert_located(w, text)


@pytest.fixture(scope="module")
def lang_dir(tmp_path_factory) -> Path:
    """A folder beside links to the examples' models and data, where a spec that names
    `../models/...` resolves as in examples/language (nothing is written into the repo)."""
    root = tmp_path_factory.mktemp("fuzz")
    for name in ("models", "data"):
        (root / name).symlink_to(ROOT / "examples" / name)
    (root / "language").mkdir()
    return root / "language"


@settings(SETTINGS, max_examples=40 * SCALE)
@given(text=mutated())
def test_cli_check_exits_0_or_1_with_located_errors(lang_dir: Path, text: str):
    path = lang_dir / "fuzz.patch"
    try:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["check", str(path)])
    finally:
        path.unlink(missing_ok=True)
    out = err.getvalue()
    assert code in (0, 1), out
    assert "Traceback" not in out and "internal error" not in out, out
    lines = split_lines(text.removeprefix("\ufeff"))
    for m in re.finditer(rf"^{re.escape(str(path))}:(\d+):(\d+): ", out, re.MULTILINE):
        assert 1 <= int(m.group(1)) <= len(lines), out


@pytest.mark.parametrize("sep", SEPARATORS[:6] + ["\ufeff"])
def test_separator_in_a_comment_keeps_every_caret(sep: str):
    """The probe's case directly: a separator in a comment above a mistake."""
    text = EXAMPLES[0].replace("\n", f"\n# note{sep}more\n", 3) + "swap L0.mlp.ouut from a into b\n"
    with pytest.raises(PatchcError) as info:
        check(parse(text, "fuzz.patch", str(BASE)))
    assert_located(info.value, text)
    last = [e for e in info.value.errors if e.code == "E200"]
    assert last and last[0].line == len(split_lines(text)) - 1
