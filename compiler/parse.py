"""Text -> AST. Lark (LALR, positions propagated) builds a tree; build_ast.AstBuilder makes
frozen AST dataclasses with spans; Lark's exceptions become located ParseErrors here.

`parse(text, filename)` is the entry point; `parse_file(path)` reads a file first.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from . import ast as A
from .errors import ParseError, Source, Span, SpecErrors
from .build_ast import AstBuilder, span_of


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("patchc.grammar").joinpath("patch.lark").read_text("utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=False)


def parse_file(path: str | Path) -> A.Spec:
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ParseError("E001", f"spec file not found: {p}") from None
    except UnicodeDecodeError as e:
        raise ParseError("E002", f"spec file is not UTF-8: {p} ({e.reason} at byte {e.start})")\
            from None
    return parse(text, str(p), str(p.parent))


def parse(text: str, filename: str = "<spec>", base_dir: str = ".") -> A.Spec:
    """Parse spec text into an AST. Raises ParseError (or SpecErrors) with spans."""
    source = Source(text, filename, base_dir)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, source) from None
    builder = AstBuilder(source)
    try:
        statements = builder.transform(tree)
    except RecursionError:
        # The tree is built bottom-up by recursion; hundreds of nested `-`s exhaust it.
        raise ParseError("E111", "expression nested too deeply", None, source) from None
    except VisitError as e:
        # Lark wraps what a builder method raises; a ParseError inside is the user's mistake.
        if isinstance(e.orig_exc, ParseError):
            raise e.orig_exc.with_source(source) from None
        if isinstance(e.orig_exc, (OverflowError, ValueError)):
            # int()/float() of a literal: more than 4300 digits, or an int beyond float range.
            meta = getattr(e.obj, "meta", None)
            span = span_of(meta) if meta is not None and not meta.empty else None
            detail = str(e.orig_exc).split(";")[0]
            raise ParseError("E110", f"number out of range ({detail})", span, source) from None
        raise
    except ParseError as e:
        raise e.with_source(source) from None
    if builder.errors:
        raise SpecErrors(builder.errors).with_source(source)
    return A.Spec(tuple(statements), source)


# ---------------------------------------------------------------------------------------------
# Syntax errors: say what was found and what would have been accepted.

_TERMINAL_WORDS = {
    "PATH": "a name or site", "STRING": "a string", "INT": "an integer", "FLOAT": "a number",
    "CAPTURE": "a capture like $l", "_NL": "end of line", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "EQUAL": "'='", "AT": "'@'", "STAR": "'*'", "MINUS": "'-'", "PLUS": "'+'", "SLASH": "'/'",
    "COLON": "':'", "CMP": "a comparison", "NORMALIZED": "'normalized'", "$END": "end of file",
}


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    return f"'{terminal.lower()}'" if terminal.isupper() else terminal


def _expected(names: set[str]) -> str:
    words = sorted({_describe(n) for n in names if not n.startswith("__")})
    if len(words) > 8:
        words = words[:8] + ["..."]
    return ", ".join(words)


def _syntax_error(e: UnexpectedInput, source: Source) -> ParseError:
    line, col = max(1, getattr(e, "line", 1) or 1), max(1, getattr(e, "column", 1) or 1)
    if isinstance(e, UnexpectedCharacters):
        ch = source.text[e.pos_in_stream] if e.pos_in_stream < len(source.text) else "?"
        msg = f"unexpected character {ch!r}"
        if ch == "'":
            msg += "; strings use double quotes"
        return ParseError("E101", msg, Span.point(line, col), source)
    if isinstance(e, UnexpectedEOF):
        lines = source.text.splitlines() or [""]
        span = Span.point(len(lines), len(lines[-1]) + 1)
        return ParseError("E104", f"unexpected end of file; expected {_expected(e.expected)}",
                          span, source)
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    if tok.type == "$END":
        lines = source.text.splitlines() or [""]
        span = Span.point(len(lines), len(lines[-1]) + 1)
        return ParseError("E104", f"unexpected end of file; expected {_expected(e.expected)}",
                          span, source)
    width = max(1, len(str(tok)))
    span = Span(tok.line, tok.column, tok.line, tok.column + width)
    found = "end of line" if tok.type == "_NL" else repr(str(tok))
    hint = None
    if tok.type == "_NL":
        span = Span.point(tok.line, tok.column)
        line_text = source.text.splitlines()[tok.line - 1] if tok.line else ""
        if line_text.startswith("measure") and "IN" in e.expected:
            hint = ("a `measure` clause that continues a statement must be indented; a "
                    "`measure ... in RUN` statement names its run")
    if hint is None and tok.type != "_NL" and tok.column == 1 and "_NL" not in e.expected:
        hint = "clauses that continue a statement must be indented"
    return ParseError("E100", f"unexpected {found}; expected {_expected(e.expected)}", span,
                      source, hint)
