"""`data` declarations -> DataTable: JSON Lines (the one MUST format), CSV, a JSON list of
objects, or rows written inline in the spec.

Only the standard library is used (`json`, `csv`): pandas takes longer to import than
`patchc check` may take to run. Every failure is a CheckError located at the file string of
the `data` statement (or the statement, for inline rows), and names the line of the data file
where that helps.

CSV cells are strings, except that a column whose every cell is an integer literal becomes a
column of ints (so `subject_pos` can be a per-example position) and likewise for floats.
Write text that looks like a number (an answer "1984") in a .jsonl file to keep it a string.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any

from . import ast as A
from .checked import DataTable
from .errors import CheckError, Source, Span, split_lines
from .paths import near

SUPPORTED = (".jsonl", ".csv", ".json")
_INT_RE = re.compile(r"[-+]?\d+")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")


def load_data(decl: A.DataDecl, base_dir: str = ".", source: Source | None = None) -> DataTable:
    """The rows of a `data` declaration. Raises CheckError (E314-E318)."""
    name = decl.name.value
    if decl.rows is not None:
        rows = [dict(r) for r in decl.rows]
        return _table(name, rows, None, None, decl.span, what="inline data")
    assert decl.path is not None
    span = path_span(decl, source)
    path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(decl.path)))
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED:
        raise CheckError("E315", f"data file {decl.path!r} has an unsupported type "
                         f"{ext or '(no extension)'!r}", span,
                         hint="use .jsonl (one JSON object per line), .csv or .json")
    if os.path.exists(path) and not os.path.isfile(path):
        raise CheckError("E314", f"data file {path} is "
                         f"{'a folder' if os.path.isdir(path) else 'not a regular file'}",
                         span, hint="name the .jsonl, .csv or .json file itself")
    if not os.path.isfile(path):
        raise CheckError("E314", f"data file not found: {path}", span,
                         hint=near(decl.path, path, base_dir)
                         or "relative paths resolve against the spec file's directory")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckError("E316", f"could not read data file {path}: {e}", span) from None
    short = os.path.basename(path)
    if ext == ".jsonl":
        rows, lines = _read_jsonl(text, short, span)
    elif ext == ".csv":
        rows, lines = _read_csv(text, short, span)
    else:
        rows, lines = _read_json(text, short, span)
    return _table(name, rows, lines, path, span, what=short)


def path_span(decl: A.DataDecl, source: Source | None) -> Span:
    """The span of the file string of `data NAME = "FILE"` (the statement's if unknown)."""
    if source is None:
        return decl.span
    line = source.line_text(decl.span.line)
    eq = line.find("=", decl.span.col - 1)
    start = line.find('"', eq if eq >= 0 else decl.span.col - 1)
    if start < 0:
        return decl.span
    end = start + 1
    while end < len(line) and line[end] != '"':
        end += 2 if line[end] == "\\" else 1
    return Span(decl.span.line, start + 1, decl.span.line, min(end, len(line)) + 2)


# Fewer brackets than this bound the nesting far below Python's recursion limit.
_SHALLOW = 100


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of a data file; `{"p": 1, "p": 2}` would silently keep the last value."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def _loads(text: str, where: str, span: Span) -> Any:
    """json.loads, with the ways a file can defeat it turned into E316: invalid JSON, nesting
    deeper than the parser's recursion, a lone surrogate escape (`"\\ud800"`)."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        raise CheckError("E316", f"{where} names the key {e.args[0]!r} twice in one object",
                         span) from None
    except json.JSONDecodeError as e:
        at = f"line {e.lineno}, column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        raise CheckError("E316", f"{where} is not valid JSON: {e.msg} ({at})", span) from None
    except RecursionError:
        raise CheckError("E316", f"{where} nests too deeply to read", span) from None
    if "\\u" not in text and text.count("[") + text.count("{") < _SHALLOW:
        return obj  # no escape, so no lone surrogate; too shallow for dumps to recurse deep
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise CheckError("E316", f"{where} holds a lone surrogate U+{ord(e.object[e.start]):04X}"
                         " (an escape like \\ud800 that is half a character)", span) from None
    except RecursionError:  # deep, yet within what loads could read
        raise CheckError("E316", f"{where} nests too deeply to read", span) from None
    return obj


def _read_jsonl(text: str, short: str, span: Span) -> tuple[list[dict[str, Any]], list[int]]:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    # Only \n ends a JSON Lines record: a raw U+2028 or form feed inside a string is text
    # (str.splitlines() would cut the record there).
    for lineno, raw in enumerate(split_lines(text), start=1):
        if not raw.strip():
            continue  # blank lines (a trailing newline, say) are not rows
        obj = _loads(raw, f"line {lineno} of {short}", span)
        if not isinstance(obj, dict):
            raise CheckError("E316", f"line {lineno} of {short} is a JSON "
                             f"{type(obj).__name__}, not an object {{...}}", span)
        rows.append(obj)
        lines.append(lineno)
    return rows, lines


def _read_json(text: str, short: str, span: Span) -> tuple[list[dict[str, Any]], list[int]]:
    data = _loads(text, short, span)
    if not isinstance(data, list):
        raise CheckError("E316", f"{short} must hold a JSON list of objects, not a "
                         f"{type(data).__name__}", span)
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise CheckError("E316", f"item {i} of {short} is a {type(obj).__name__}, not an "
                             "object {...}", span)
    return data, []


def _read_csv(text: str, short: str, span: Span) -> tuple[list[dict[str, Any]], list[int]]:
    # The reader sees the text whole: a quoted cell may hold a line break.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # no unclosed quote
    try:
        records = [(reader.line_num, r) for r in reader if r]
    except csv.Error as e:
        raise CheckError("E316", f"{short} is not valid CSV: {e}", span) from None
    if not records:
        return [], []
    (_, header), body = records[0], records[1:]
    dup = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if dup is not None:
        raise CheckError("E317", f"column {dup!r} appears twice in the header of {short}", span,
                         hint="give every column its own name")
    rows: list[dict[str, Any]] = []
    for lineno, rec in body:
        if len(rec) != len(header):
            raise CheckError("E317", f"line {lineno} of {short} has {len(rec)} cells but the "
                             f"header has {len(header)}", span)
        rows.append(dict(zip(header, rec)))
    for col in header:
        cells = [r[col] for r in rows]
        if cells and all(_INT_RE.fullmatch(c.strip()) for c in cells):
            for r in rows:
                r[col] = int(r[col])
        elif cells and all(_FLOAT_RE.fullmatch(c.strip()) for c in cells):
            for r in rows:
                r[col] = float(r[col])
    return rows, [lineno for lineno, _ in body]


def _table(name: str, rows: list[dict[str, Any]], lines: list[int] | None, path: str | None,
           span: Span, what: str) -> DataTable:
    if not rows:
        raise CheckError("E318", f"{what} has no rows", span)
    columns = tuple(rows[0])
    first = set(columns)
    for i, row in enumerate(rows):
        if set(row) != first:
            where = f"line {lines[i]} of {what}" if lines else f"row {i} of {what}"
            missing = sorted(first - set(row))
            extra = sorted(set(row) - first)
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has extra {', '.join(extra)}"] if extra else [])
            raise CheckError("E317", f"{where} {' and '.join(parts)} (every row needs the "
                             f"columns of the first: {', '.join(columns)})", span)
    return DataTable(name, columns, tuple(rows), path,
                     row_lines=tuple(lines) if lines else None)
