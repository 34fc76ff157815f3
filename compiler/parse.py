"""Text -> AST. Lark (LALR, positions propagated) builds a tree; build_ast.AstBuilder makes
frozen AST dataclasses with spans; Lark's exceptions become located ParseErrors here.

`parse(text, filename)` is the entry point; `parse_file(path)` reads a file first.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Tree
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from . import ast as A
from .limits import MAX_NESTING
from .errors import ParseError, Source, Span, SpecErrors
from .build_ast import POSITION_FORMS, AstBuilder, span_of
from .syntax_hints import glued_keyword, misspelled_before, unclosed_bracket


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("patchc.grammar").joinpath("patch.lark").read_text("utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=False)


def looks_like_path(text: str) -> bool:
    """Whether an argument that may be a path or spec text names a file: one line that ends
    in `.patch`, names something on disk, or has no whitespace (every statement has a
    space, so such a string cannot be a spec). The CLI and the Python API share this rule."""
    if "\n" in text or not text.strip():
        return False
    return text.endswith(".patch") or not any(c.isspace() for c in text) or Path(text).exists()


MAX_SPEC_BYTES = 64 * 10**6  # far past any spec; data belongs in data files


def parse_file(path: str | Path) -> A.Spec:
    p = Path(path)
    if p.is_dir():
        inside = sorted(q.name for q in p.glob("*.patch"))[:3]
        hint = f"name a spec file in it, e.g. {p / inside[0]}" if inside else None
        raise ParseError("E001", "spec path is a directory, not a spec file", None,
                         Source("", str(p)), hint=hint)
    try:
        with open(p, "rb") as f:  # (at most the cap: /dev/zero would be read forever)
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise ParseError("E002", f"spec file is over {MAX_SPEC_BYTES // 10**6} MB: too "
                             "large to be a spec", None, Source("", str(p)),
                             hint="put data in a data file (`data d = \"FILE\"`)")
        # (newlines as text mode reads them, which parse and fmt expect)
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        raise ParseError("E001", "spec file not found", None, Source("", str(p)),
                         hint=_near_file(p)) from None
    except UnicodeDecodeError as e:
        raise ParseError("E002", f"spec file is not UTF-8 ({e.reason} at byte {e.start})", None,
                         Source("", str(p)), hint="save it as UTF-8") from None
    return parse(text, str(p), str(p.parent))


def _near_file(p: Path) -> str | None:
    """`did you mean X?` for a missing spec path whose folder holds a similar name (the
    `.patch` suffix left off, a letter missing)."""
    folder = p.parent
    try:
        names = [q.name for q in folder.iterdir() if q.is_file() or q.suffix == ".patch"]
    except OSError:
        return None
    if p.suffix != ".patch" and (p.name + ".patch") in names:
        return f"did you mean {folder / (p.name + '.patch')}?"
    stems = {Path(n).stem: n for n in names if n.endswith(".patch")}
    close = (difflib.get_close_matches(p.name, names, n=1, cutoff=0.7)
             or [stems[s] for s in difflib.get_close_matches(p.stem, list(stems), n=1,
                                                             cutoff=0.7)])
    return f"did you mean {folder / close[0]}?" if close else None


def parse(text: str, filename: str = "<spec>", base_dir: str = ".") -> A.Spec:
    """Parse spec text into an AST. Raises ParseError (or SpecErrors) with spans. The AST is
    frozen, so a text parsed before (a notebook runs one spec many times) comes from a small
    cache."""
    return _parse(text, filename, base_dir)


@lru_cache(maxsize=32)
def _parse(text: str, filename: str, base_dir: str) -> A.Spec:
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    source = Source(text, filename, base_dir)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, source) from None
    deep = _too_deep(tree)
    if deep is not None:
        # The AST is built, checked, lowered and printed by recursion: bound the nesting
        # here, where its place is known, rather than meet Python's recursion limit later.
        raise ParseError("E111", f"expression nested too deeply (more than {MAX_NESTING} "
                         "levels)", deep, source,
                         hint="split it into named metrics or vectors") from None
    builder = AstBuilder(source)
    try:
        statements = builder.transform(tree)
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


def _too_deep(tree: Tree) -> Span | None:
    """The span of the first subtree nested deeper than MAX_NESTING, or None (iterative).
    `-(-(-(...)))` nests, and so does a long sum (`a + b + ...`, one level per term)."""
    # Each entry keeps the nearest located tree at or above it (its meta): the span is made
    # only for the tree that is too deep.
    stack: list[tuple[Tree, int, Any]] = [(tree, 0, None)]
    while stack:
        node, depth, at = stack.pop()
        if not node.meta.empty:
            at = node.meta
        if depth > MAX_NESTING:
            return Span.point(1, 1) if at is None else Span.point(at.line, at.column)
        stack.extend((c, depth + 1, at) for c in node.children if isinstance(c, Tree))
    return None


# ---------------------------------------------------------------------------------------------
# Syntax errors: say what was found and what would have been accepted.

_TERMINAL_WORDS = {
    "PATH": "a name or site", "STRING": "a string", "INT": "an integer", "FLOAT": "a number",
    "CAPTURE": "a capture like $l", "_NL": "end of line", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "EQUAL": "'='", "AT": "'@'", "STAR": "'*'", "MINUS": "'-'", "PLUS": "'+'", "SLASH": "'/'",
    "COLON": "':'", "PERCENT": "'%'", "CMP": "a comparison", "NORMALIZED": "'normalized'",
    "$END": "end of file",
}


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    return f"'{terminal.lower()}'" if terminal.isupper() else terminal


@lru_cache(maxsize=1)
def _keywords() -> frozenset[str]:
    """Every word the grammar spells as a quoted string (`swap`, `from`, `zero`, ...)."""
    from lark.lexer import PatternStr

    return frozenset(t.pattern.value for t in _parser().terminals
                     if isinstance(t.pattern, PatternStr) and t.pattern.value.isidentifier())


@lru_cache(maxsize=1)
def _anonymous() -> dict[str, str]:
    """Lark's names for the grammar's unnamed literals (`__ANON_0` is `->`) -> `'->'`."""
    return {t.name: repr(t.pattern.value) for t in _parser().terminals
            if t.name.startswith("__ANON") and isinstance(t.pattern.value, str)}


def _expected(names: set[str]) -> str:
    words = sorted({_anonymous().get(n) or _describe(n) for n in names
                    if not n.startswith("__") or n in _anonymous()})
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
    accepts = set(getattr(e, "accepts", None) or e.expected)  # keywords included
    if isinstance(e, UnexpectedEOF) or e.token.type == "$END":
        span = Span.point(*source.last_position())
        return ParseError("E104", f"unexpected end of file; expected {_expected(e.expected)}",
                          span, source, unclosed_bracket(source.text, len(source.text), accepts))
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    glued = glued_keyword(source.text, tok.start_pos, _keywords()) if tok.type != "_NL" \
        else None
    if glued is not None:  # `with zeros`: the lexer read the keyword `zero`, then `s`
        word, keyword, at = glued
        line, col = tok.line, tok.column - (tok.start_pos - at)
        return ParseError("E100", f"unexpected {word!r}", Span(line, col, line, col + len(word)),
                          source, f"did you mean `{keyword}`?")
    width = max(1, len(str(tok)))
    span = Span(tok.line, tok.column, tok.line, tok.column + width)
    found = "end of line" if tok.type == "_NL" else repr(str(tok))
    hint = unclosed_bracket(source.text, tok.start_pos, accepts)
    if tok.type == "_NL":  # at the line's end (a comment may end in the \r of a CRLF)
        span = Span.point(tok.line, min(tok.column, len(source.line_text(tok.line)) + 1))
        if source.line_text(tok.line).startswith("measure") and "IN" in e.expected:
            hint = ("a `measure` clause that continues a statement must be indented; a "
                    "`measure ... in RUN` statement names its run")
    expected = _expected(e.expected)
    if hint is None and tok.type != "_NL" and tok.column == 1 and "_NL" not in e.expected:
        hint = "clauses that continue a statement must be indented"
    elif hint is None and tok.type in _statement_starts() and tok.column > 1 \
            and not source.line_text(tok.line)[:tok.column - 1].strip():
        hint = (f"`{tok}` starts a statement, which begins in column 1; an indented line "
                "continues the statement above it")
    before = source.line_text(tok.line)[:tok.column - 1]
    # Right after `@`, or inside a position set `@ {...`.
    if {"LAST", "EACH"} <= accepts or re.search(r"@\s*\{[^}@]*$", before):
        return ParseError("E100", f"unexpected {found} where a position belongs", span, source,
                          POSITION_FORMS)
    if hint is None and re.search(r"->\s*(from|into|in|with|by)\s*$", before):
        hint = ("`->` needs a receiver (`L1.H0.q`, `L1.mlp.in`, `logits`, or `*`) before "
                f"`{before.split()[-1]}`")
    if hint is None and accepts == {"STAR"} and re.search(r"\bby\s+[-\d.{][^*]*$", before):
        # `steer SITE in RUN by 3`: a number or a set of them scales a vector, never alone
        hint = ("`by` takes a vector: a number or a set of numbers multiplies one, as in "
                "`by {1, 2, 4} * v` with `vector v = ...` declared above")
    if hint is None and "AGAINST" in accepts and source.line_text(tok.line).startswith("compare"):
        # `compare t1, t2`: compare runs estimators against the exact swap; it takes methods
        hint = ("compare takes estimation methods and the exact swap they estimate: `compare "
                "atp, relp against swap on SITES from A into B  measure M`")
    method = re.search(r"\busing\s+(\w+)\(\s*$", before) or \
        re.search(r"\bcompare\b.*\b(\w+)\(\s*$", before)
    if hint is None and str(tok) == ")" and method:  # `using relp()`
        hint = f"write `{method[1]}` alone for its defaults (no empty parentheses)"
    if hint is None and re.search(r"[\w*\]]\.\w+\[[^\]@\"]*$", before) and \
            str(tok) in (":", ","):  # (after a site path: `L0.H3.z[:, -1]`)
        # `L0.H3.z[:, -1]`: a Python/TransformerLens slice; positions are written with `@`
        hint = ("`[...]` selects features (`[0:64]`, `[3]`); positions are written after "
                "`@`: `L0.H3.z @ last`, `@ -1`, `@ 2..5`")
    close = _close_keyword(str(tok), accepts) if tok.type == "PATH" else None
    if close:
        hint = f"did you mean `{close}`?"
    # `intoo a`: the parser took `intoo` for a name and stopped at `a`; the misspelled word
    # before is the mistake (more likely than `a` being a misspelled `as`).
    misspelled = misspelled_before(source.text, tok.start_pos, _keywords()) \
        if hint is None or close else None
    if misspelled is not None:
        hint = f"`{misspelled[0]}` is not a keyword: did you mean `{misspelled[1]}`?"
    return ParseError("E100", f"unexpected {found}; expected {expected}", span, source, hint)


def _close_keyword(word: str, expected: set[str]) -> str | None:
    """The keyword among the expected terminals that `word` misspells, if one is close."""
    words = [t.lower() for t in expected if t.isupper() and t.isidentifier()]
    # 0.7: keeps `sawp`, `reed`, `rn` (0.75-0.8) and drops look-alikes such as `clean` for
    # `lens` (0.67)
    close = difflib.get_close_matches(word.lower(), words, n=1, cutoff=0.7)
    return close[0] if close else None


@lru_cache(maxsize=1)
def _statement_starts() -> frozenset[str]:
    """The terminals that may begin a statement (`model`, `swap`, ...), read from the parser:
    what it expects where a statement begins."""
    try:
        _parser().parse("@")
    except UnexpectedToken as e:
        accepts = getattr(e, "accepts", None) or e.expected
        return frozenset(t for t in accepts if t.isupper() and t.isidentifier())
    return frozenset()
