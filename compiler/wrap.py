"""Line wrapping for the canonical layout: a printed line longer than WIDTH columns breaks
onto indented continuation lines.

The grammar ignores a newline followed by indentation anywhere inside a statement (its
`_CONT` terminal), so a line may break at any space outside a string literal and still
parse to the same AST. Where it breaks is chosen for people, deterministically:

- only at a space outside a string and a site path (`L{1, 5}.mlp.out`); never right after
  `@` or `=` or a word that introduces what follows (`from`, `into`, `with`, `measure`, ...);
  never right before an operator (`@`, `=`, `-`, `*`, `>`, ...), so that a continuation line
  never starts with one;
- among the breaks that keep the line within WIDTH: the least nested (outside parentheses,
  brackets and braces first), then one right after a comma (a list of sites, measures or
  interventions breaks between its items), then the rightmost;
- when no break keeps the line within WIDTH, the first allowed one (the line is then as short
  as it can be; a single long string or site path is never split).

Continuation lines are indented two levels (2 x INDENT) deeper than the line they continue,
so they never line up with an operation's clauses (one level): a wrapped head continues at
column 9, a wrapped clause at column 13. Wrapping depends only on the line's text, so
formatting stays idempotent.
"""

from __future__ import annotations

import re

WIDTH = 100
INDENT = "    "

# Words after which a line does not break: they introduce the operand that follows.
_INTRODUCERS = frozenset({
    "model", "revision", "set", "data", "run", "metric", "vector", "with", "from", "into",
    "in", "by", "using", "against", "on", "as", "where", "and", "between", "contains",
    "measure", "swap", "ablate", "backpatch", "steer", "scale", "attribute", "compare",
    "trace", "dla", "read", "lens", "freeze", "ln", "noise",
})
_OPERATOR_START = frozenset("@=<>!+-*/")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_WORD_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)$")


def _breaks(text: str) -> list[tuple[int, int, int]]:
    """Allowed breaks of one line as (index of the space, nesting depth, 0 after a comma else
    1)."""
    out = []
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            m = _STRING.match(text, i)
            i = m.end() if m else len(text)
            continue
        if ch == "{" and i > 0 and text[i - 1] in "LH":  # a set inside a site path: one token
            i = text.find("}", i) + 1 or len(text)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch == " " and 0 < i < len(text) - 1 and text[i + 1] != " ":
            prev = text[:i].rstrip(" ")
            word = _WORD_BEFORE.search(prev)
            if (prev and prev[-1] not in "@=" and text[i + 1] not in _OPERATOR_START
                    and not (word and word.group(1) in _INTRODUCERS)):
                out.append((i, depth, 0 if prev.endswith(",") else 1))
        i += 1
    return out


def wrap_line(line: str, width: int | None = None) -> list[str]:
    """One printed line -> itself, or itself broken onto continuation lines that are indented
    two levels deeper than it (width: WIDTH unless given)."""
    width = width or WIDTH
    indent = line[:len(line) - len(line.lstrip(" "))]
    body = line[len(indent):]
    breaks = _breaks(body)
    out: list[str] = []
    start, lead = 0, indent
    while len(lead) + len(body) - start > width:
        later = [b for b in breaks if b[0] > start]
        if not later:
            break
        fitting = [b for b in later if len(lead) + b[0] - start <= width]
        at = min(fitting, key=lambda b: (b[1], b[2], -b[0]))[0] if fitting else later[0][0]
        out.append(lead + body[start:at])
        start, lead = at + 1, indent + 2 * INDENT
    out.append(lead + body[start:])
    return out


def wrap(text: str, width: int | None = None) -> str:
    """Every line of `text` (one printed statement) wrapped to `width` columns."""
    return "\n".join(part for line in text.split("\n") for part in wrap_line(line, width))
