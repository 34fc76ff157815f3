"""`patchc fmt`: the canonical layout of printer.format_spec, keeping the user's comments.

The AST has no comments, so they are scanned again from `spec.source.text` with the
grammar's rule (a `#` outside a string literal, to the end of its line) and put back next to
the statement they belong to:

- comment-only lines before a statement stay directly above it, at column 1 (blank lines
  between such comment lines are kept, collapsed to one);
- a comment at the end of a statement's first line stays at the end of that printed line,
  two spaces before the `#`;
- a comment at the end of a later line of a statement (`    measure ld  # why`) stays at the
  end of the printed line with the same code, or else the one printed line that starts with
  the same keyword, when the statement's comments keep their order that way;
- any other comment inside a statement (on a later line, or a comment-only line between its
  clauses), and indented comment-only lines right after it (before any unindented comment),
  are printed as indented comment lines right after the statement;
- comments after the last statement stay at the end, after one blank line.

A result table without `as NAME` is called `op_LINE` after its statement's line. When the
layout moves such a statement to another line, fmt writes `as op_LINE` with the old line, so
that reformatting never renames a result table (the CSV files a run writes).

Every comment of the input is in the output, in the same order, and formatting is idempotent:
the output puts each comment where the rules above find it again. A formatter must never lose
what the user wrote.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass, field

from . import ast as A
from . import printer

# The grammar's STRING terminal, or a comment. Scanning both in one pass from the left is how
# the lexer sees the text: a `#` inside a string is text, a `"` inside a comment is comment.
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*')


@dataclass(frozen=True, slots=True)
class Comment:
    """One `#` comment: 1-based line and column (lines counted by `\\n`, as Lark does), its
    text from the `#` with trailing whitespace removed, and whether only whitespace precedes
    it on its line."""

    line: int
    col: int
    text: str
    own_line: bool


def comments(text: str) -> list[Comment]:
    """Every comment of spec text, in order."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    out = []
    for m in _STRING_OR_COMMENT.finditer(text):
        if not m.group().startswith("#"):
            continue
        line = bisect.bisect_right(starts, m.start())
        before = text[starts[line - 1]:m.start()]
        out.append(Comment(line, m.start() - starts[line - 1] + 1,
                           m.group().rstrip(" \t\r\f\v"), not before.strip(" \t\f\r\v")))
    return out


def has_comments(text: str) -> bool:
    """Does spec text contain a `#` comment (a `#` outside a string literal)?"""
    return bool(comments(text))


@dataclass
class _Block:
    """Comment lines printed at column 1, each with whether a blank line precedes it."""

    lines: list[tuple[bool, str]] = field(default_factory=list)

    def add(self, c: Comment, blank_lines: set[int], prev_line: int | None) -> None:
        blank = prev_line is not None and any(
            n in blank_lines for n in range(prev_line + 1, c.line))
        self.lines.append((bool(self.lines) and blank, c.text))

    def render(self) -> list[str]:
        out: list[str] = []
        for blank, text in self.lines:
            out += ["", text] if blank else [text]
        return out


@dataclass
class _Attached:
    """Where each comment goes, by statement index."""

    leading: dict[int, _Block] = field(default_factory=dict)
    first_line: dict[int, str] = field(default_factory=dict)
    # (code before the comment, or None for a comment on a line of its own, comment text)
    after: dict[int, list[tuple[str | None, str]]] = field(default_factory=dict)
    footer: _Block = field(default_factory=_Block)


def _attach(spec: A.Spec) -> _Attached:
    text = spec.source.text
    stmts = spec.statements
    firsts = [s.span.line for s in stmts]
    blank_lines = {n for n, line in enumerate(text.split("\n"), 1) if not line.strip()}
    at = _Attached()
    gap_open: dict[int, bool] = {}  # gap after statement i: an unindented comment was seen
    prev_line: dict[int, int] = {}  # gap -> line of its previous block comment
    for c in comments(text):
        i = bisect.bisect_right(firsts, c.line) - 1  # the last statement starting at or above
        if i >= 0 and c.line <= stmts[i].span.end_line:
            if c.line == stmts[i].span.line and not c.own_line:
                at.first_line[i] = c.text
            else:
                code = None if c.own_line else spec.source.line_text(c.line)[:c.col - 1]
                at.after.setdefault(i, []).append((code, c.text))
            continue
        # Between statement i and i + 1 (i = -1: before the first; i + 1 = len: the end).
        if i >= 0 and c.col > 1 and not gap_open.get(i):
            at.after.setdefault(i, []).append((None, c.text))
            continue
        gap_open[i] = True
        block = at.footer if i + 1 == len(stmts) else at.leading.setdefault(i + 1, _Block())
        block.add(c, blank_lines, prev_line.get(i))
        prev_line[i] = c.line
    return at


def format_source(spec: A.Spec) -> str:
    """Canonical source for a spec with the comments of `spec.source.text` kept."""
    at = _attach(spec)
    out: list[str] = []
    prev: A.Statement | None = None
    for i, s in enumerate(spec.statements):
        if printer.blank_before(prev, s):
            out.append("")
        if i in at.leading:
            out += at.leading[i].render()
        if isinstance(s, A.OPERATIONS) and s.clauses.name is None and len(out) + 1 != s.span.line:
            s = named(s)
        lines = printer.statement(s).split("\n")
        if i in at.first_line:
            lines[0] += "  " + at.first_line[i]
        after = _on_their_lines(lines, at.after.get(i, []))
        out += lines
        out += [printer.INDENT + text for text in after]
        prev = s
    if at.footer.lines:
        if out:
            out.append("")
        out += at.footer.render()
    return "\n".join(out) + "\n" if out else ""


def _on_their_lines(lines: list[str], inner: list[tuple[str | None, str]]) -> list[str]:
    """Put the comments that ended a later line of a statement at the end of its printed
    line (in place, in `lines`); returns the comments printed after the statement. All stay
    after the statement when that would change their order."""
    homes: dict[int, str] = {}
    for code, text in inner:
        k = _home(code, lines) if code is not None else None
        if k is None or k in homes:
            break
        homes[k] = text
    placed = [homes[k] for k in sorted(homes)]
    if not placed or placed != [t for _, t in inner[:len(placed)]]:
        return [t for _, t in inner]
    for k, text in homes.items():
        lines[k] += "  " + text
    return [t for _, t in inner[len(placed):]]


def _home(code: str, lines: list[str]) -> int | None:
    """The printed line (not the first) that a source line's code became: the one line with
    that code, else the one line that starts with the same keyword."""
    code = code.strip()
    same = [k for k, line in enumerate(lines) if k and line.strip() == code]
    if len(same) == 1:
        return same[0]
    word = code.split(maxsplit=1)[0] if code else ""
    starts = [k for k, line in enumerate(lines)
              if k and word.isidentifier() and line.split(maxsplit=1)[:1] == [word]]
    return starts[0] if len(starts) == 1 else None


def named(op: A.Operation) -> A.Operation:
    """The operation with its default table name `op_LINE` written out."""
    name = A.Name(A.table_name(op), op.span)
    return dataclasses.replace(op, clauses=dataclasses.replace(op.clauses, name=name))


def name_tables(spec: A.Spec) -> A.Spec:
    """The spec with every default table name written out (to compare a spec with its
    formatted text: same statements, same table names)."""
    stmts = tuple(named(s) if isinstance(s, A.OPERATIONS) and s.clauses.name is None else s
                  for s in spec.statements)
    return dataclasses.replace(spec, statements=stmts)
