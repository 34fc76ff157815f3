"""Hints for syntax errors whose cause lies before the token the parser stopped at.

The parser reports the first token it cannot take, but a new user's mistake is often earlier:
a `[` never closed (the parser reads on, across lines, and stops at the next statement), a
misspelled keyword that the parser took for a name (`fromm clean`: it stops at `clean`), or
a word that begins with a keyword (`with zeros`: the lexer reads `zero`, then stops at `s`).
parse.py asks these functions before it falls back on its generic hints, passing the
grammar's keywords (every quoted word of grammar/patch.lark).
"""

from __future__ import annotations

import difflib
import re

_CLOSE = {"(": ")", "[": "]", "{": "}"}
_CLOSER_TERMINALS = {"(": "RPAR", "[": "RSQB", "{": "RBRACE"}
_WORD_END = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # (\Z: `$` would match before a newline)
_WORD_START = re.compile(r"[A-Za-z0-9_]+")


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset (lines end at \\n, as Source counts)."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def unclosed_bracket(text: str, end: int, accepts: set[str]) -> str | None:
    """`the '[' on line 2 (column 9) is never closed: add ']'` when a bracket opened before
    `end` is never closed in the whole text and the parser would take its closing bracket
    here (a bracket closed later, as in `logit(a, b)`, is some other mistake). Strings and
    comments are skipped."""
    stack: list[int] = []
    open_at_end: list[int] | None = None
    i = 0
    while i < len(text):
        if open_at_end is None and i >= end:
            open_at_end = list(stack)
        c = text[i]
        if c == '"':  # a string, JSON escapes included
            j = i + 1
            while j < len(text) and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "#":
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
            continue
        if c in _CLOSE:
            stack.append(i)
        elif c in _CLOSE.values() and stack:
            stack.pop()
        i += 1
    never_closed = [o for o in (stack if open_at_end is None else open_at_end) if o in stack]
    if not never_closed:
        return None
    opener = text[never_closed[-1]]
    if _CLOSER_TERMINALS[opener] not in accepts:
        return None
    line, col = _position(text, never_closed[-1])
    return (f"the '{opener}' on line {line} (column {col}) is never closed: add "
            f"'{_CLOSE[opener]}'")


def glued_keyword(text: str, start: int, keywords: frozenset[str]
                  ) -> tuple[str, str, int] | None:
    """(word, keyword, offset of the word) when the token at `start` continues a keyword
    with no space between (`zeros`: the lexer read the keyword `zero`, then `s`)."""
    if start <= 0 or not re.match(r"[A-Za-z0-9_]", text[start:start + 1]):
        return None
    before = _WORD_END.search(text[:start])
    if before is None or before.group() not in keywords:
        return None
    after = _WORD_START.match(text, start)
    word = before.group() + (after.group() if after else "")
    return word, before.group(), before.start()


def misspelled_before(text: str, start: int, keywords: frozenset[str]
                      ) -> tuple[str, str] | None:
    """(word, keyword) when the word just before the token at `start` (after a space) is no
    keyword but close to one: `fromm` in `swap L0.H0.z fromm clean ...`."""
    before = _WORD_END.search(text[:start].rstrip(" \t"))
    if before is None or before.group() in keywords:
        return None
    word = before.group()
    close = difflib.get_close_matches(word.lower(), sorted(keywords), n=1, cutoff=0.8)
    return (word, close[0]) if close and close[0] != word.lower() else None
