"""`data` loaders: .jsonl, .csv, .json and inline rows, and their errors."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from patchc.compiler import ast as A  # noqa: E402
from patchc.compiler.data import load_data, path_span  # noqa: E402
from patchc.compiler.errors import CheckError, Span  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402


def decl(text: str, base: Path) -> tuple[A.DataDecl, object]:
    spec = parse(text, "d.patch", str(base))
    (d,) = [s for s in spec.statements if isinstance(s, A.DataDecl)]
    return d, spec.source


def load(base: Path, text: str):
    d, source = decl(text, base)
    return load_data(d, str(base), source)  # type: ignore[arg-type]


def error(base: Path, text: str) -> CheckError:
    with pytest.raises(CheckError) as info:
        load(base, text)
    return info.value


def test_jsonl(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text('{"p": "x y", "n": 1}\n\n{"p": "z", "n": 2}\n')
    t = load(tmp_path, 'data d = "a.jsonl"')
    assert t.name == "d" and t.columns == ("p", "n")
    assert t.rows == ({"p": "x y", "n": 1}, {"p": "z", "n": 2})
    assert t.path == str(tmp_path / "a.jsonl")
    assert t.row_lines == (1, 3)  # the blank line is not a row
    assert t.where(1) == "row 1 (line 3 of a.jsonl)"


def test_relative_to_base_dir(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_text('{"p": "x"}\n')
    assert load(tmp_path, 'data d = "sub/a.jsonl"').rows == ({"p": "x"},)


def test_csv_types(tmp_path: Path):
    (tmp_path / "a.csv").write_bytes(
        '\ufeffprompt,pos,w,answer\n"I love, this",3,0.5, Paris\nWhat,-1,2, Rome\n'
        .encode("utf-8"))
    t = load(tmp_path, 'data d = "a.csv"')
    assert t.columns == ("prompt", "pos", "w", "answer")
    assert t.rows[0] == {"prompt": "I love, this", "pos": 3, "w": 0.5, "answer": " Paris"}
    assert t.rows[1]["pos"] == -1 and t.rows[1]["w"] == 2.0
    assert t.row_lines == (2, 3)


def test_json_list(tmp_path: Path):
    (tmp_path / "a.json").write_text('[{"p": "x"}, {"p": "y"}]')
    t = load(tmp_path, 'data d = "a.json"')
    assert [r["p"] for r in t.rows] == ["x", "y"] and t.row_lines is None


def test_inline(tmp_path: Path):
    t = load(tmp_path, 'data d = [{"p": "x", "i": 1}, {"p": "y", "i": 2}]')
    assert t.path is None and t.columns == ("p", "i") and len(t.rows) == 2
    assert t.where(0) == "row 0"


def test_path_span_points_at_the_string(tmp_path: Path):
    d, source = decl('data  dd =   "some\\"file.jsonl"  # comment', tmp_path)
    s = path_span(d, source)  # type: ignore[arg-type]
    assert (s.line, s.col, s.end_col) == (1, 14, 32)


@pytest.mark.parametrize("files,text,code,fragment", [
    ({}, 'data d = "missing.jsonl"', "E314", "data file not found"),
    ({"a.txt": "x"}, 'data d = "a.txt"', "E315", "unsupported type '.txt'"),
    ({"a": "x"}, 'data d = "a"', "E315", "(no extension)"),
    ({"a.jsonl": '{"p": 1}\n{"p": 2,}\n'}, 'data d = "a.jsonl"', "E316",
     "line 2 of a.jsonl is not valid JSON"),
    ({"a.jsonl": '{"p": 1}\n[1, 2]\n'}, 'data d = "a.jsonl"', "E316",
     "line 2 of a.jsonl is a JSON list, not an object"),
    ({"a.json": '{"p": 1}'}, 'data d = "a.json"', "E316", "must hold a JSON list of objects"),
    ({"a.json": '[{"p": 1}, 3]'}, 'data d = "a.json"', "E316", "item 1 of a.json is a int"),
    ({"a.json": '[{"p": 1'}, 'data d = "a.json"', "E316", "a.json is not valid JSON"),
    ({"a.jsonl": b"\xff\xfe"}, 'data d = "a.jsonl"', "E316", "could not read data file"),
    ({"a.jsonl": '{"p": 1}\n{"q": 2}\n'}, 'data d = "a.jsonl"', "E317",
     "line 2 of a.jsonl lacks p and has extra q"),
    ({"a.csv": "p,q\n1,2\n3\n"}, 'data d = "a.csv"', "E317",
     "line 3 of a.csv has 1 cells but the header has 2"),
    ({}, 'data d = [{"p": 1}, {"p": 1, "q": 2}]', "E317", "row 1 of inline data has extra q"),
    ({"a.jsonl": "\n\n"}, 'data d = "a.jsonl"', "E318", "a.jsonl has no rows"),
    ({"a.csv": "p,q\n"}, 'data d = "a.csv"', "E318", "a.csv has no rows"),
    ({"a.json": "[]"}, 'data d = "a.json"', "E318", "a.json has no rows"),
    ({}, "data d = []", "E318", "inline data has no rows"),
])
def test_errors(tmp_path: Path, files: dict, text: str, code: str, fragment: str):
    for name, content in files.items():
        p = tmp_path / name
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    e = error(tmp_path, text)
    assert e.code == code and fragment in e.message, e.message
    assert e.span.line == 1
    # File errors point at the file string; inline-row errors at the statement.
    assert e.span.col == (10 if '"' in text.split("=")[1][:3] else 1)


def test_jsonl_record_may_hold_line_separators(tmp_path: Path):
    # A raw U+2028 or NEL inside a string is text; only \n ends a record.
    (tmp_path / "a.jsonl").write_text('{"p": "a\u2028b\x85c"}\r\n{"p": "e"}\n', "utf-8")
    t = load(tmp_path, 'data d = "a.jsonl"')
    assert t.rows == ({"p": "a\u2028b\x85c"}, {"p": "e"}) and t.row_lines == (1, 2)


def test_csv_quoted_newline_is_kept(tmp_path: Path):
    (tmp_path / "a.csv").write_text('p,q\n"two\nlines",x\nthree,y\n', "utf-8")
    t = load(tmp_path, 'data d = "a.csv"')
    assert t.rows == ({"p": "two\nlines", "q": "x"}, {"p": "three", "q": "y"})


@pytest.mark.parametrize("files,fragment", [
    ({"a.csv": "p,q,p\n1,2,3\n"}, "column 'p' appears twice in the header of a.csv"),
    ({"a.jsonl": '{"p": "\\ud800"}\n'}, "line 1 of a.jsonl holds a lone surrogate U+D800"),
    ({"a.jsonl": '{"\\udfff": "x"}\n'}, "holds a lone surrogate U+DFFF"),
    ({"a.json": '[{"p": "x\\ud800"}]'}, "a.json holds a lone surrogate"),
    ({"a.jsonl": '{"p": ' + "[" * 100_000 + "]" * 100_000 + "}\n"},
     "line 1 of a.jsonl nests too deeply"),
])
def test_data_mistakes_are_located(tmp_path: Path, files: dict, fragment: str):
    for name, content in files.items():
        (tmp_path / name).write_text(content, "utf-8")
    e = error(tmp_path, f'data d = "{next(iter(files))}"')
    assert e.code in ("E316", "E317") and fragment in e.message, e.message
    assert (e.span.line, e.span.col) == (1, 10)


def test_inline_surrogate_is_a_syntax_error(tmp_path: Path):
    from patchc.compiler.errors import ParseError

    with pytest.raises(ParseError) as info:
        parse('data d = [{"p": "\\ud800"}]')
    assert info.value.code == "E101" and "lone surrogate U+D800" in info.value.message
    assert (info.value.span.line, info.value.span.col) == (1, 17)


@pytest.mark.parametrize("text,fragment", [
    ('run a = "I lo\x00ve"', "Invalid control character U+0000 at character 5 of the string"),
    ('run a = "I lo\tve"', "Invalid control character U+0009 at character 5"),
    ('run a = "I lo\\qve"', "Invalid \\escape `\\q` at character 5"),
])
def test_a_bad_string_says_what_is_wrong_where(text: str, fragment: str):
    """A string JSON rejects names the character and where it is in the string (json's own
    message stops at "at")."""
    from patchc.compiler.errors import ParseError

    with pytest.raises(ParseError) as info:
        parse(text)
    assert info.value.code == "E101" and fragment in info.value.message, info.value.message


@pytest.mark.parametrize("name,content,fragment", [
    ("a.jsonl", '{"p": "a", "p": "b"}\n', "line 1 of a.jsonl names the key 'p' twice"),
    ("a.json", '[{"p": "a", "q": {"r": 1, "r": 2}}]', "a.json names the key 'r' twice"),
    ("a.csv", 'p\n"unterminated\n', "a.csv is not valid CSV"),
])
def test_silent_data_mistakes_are_errors(tmp_path: Path, name: str, content: str, fragment: str):
    (tmp_path / name).write_text(content, "utf-8")
    e = error(tmp_path, f'data d = "{name}"')
    assert e.code == "E316" and fragment in e.message, e.message


def test_inline_duplicate_key_is_an_error():
    from patchc.compiler.errors import PatchcError

    with pytest.raises(PatchcError) as info:
        parse('data d = [{"p": "x", "q": 1, "p": "y"}]')
    assert info.value.code == "E107" and "names the key 'p' twice" in info.value.message
    assert (info.value.span.line, info.value.span.col) == (1, 11)


def test_a_shallow_row_without_escapes_is_not_encoded_again(monkeypatch):
    """The surrogate check (json.dumps of the row) runs only where a `\\u` escape could have
    made one, or where the row nests deep enough for dumps to meet the recursion limit."""
    from patchc.compiler import data

    calls: list[object] = []
    real = data.json.dumps
    monkeypatch.setattr(data.json, "dumps", lambda obj, **kw: calls.append(obj) or real(obj, **kw))
    span = Span(1, 1, 1, 2)
    assert data._loads('{"p": "x", "q": [1, {"r": 2}]}', "line 1", span) == \
        {"p": "x", "q": [1, {"r": 2}]}
    assert calls == []
    assert data._loads('{"p": "\\u00e9"}', "line 1", span) == {"p": "é"}
    deep = "[" * 150 + "]" * 150
    assert data._loads(deep, "line 1", span) is not None and len(calls) == 2
