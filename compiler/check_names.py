"""Names: reserved keywords, declarations (duplicates, keywords as names) and reference
cycles.

The keywords are read from the grammar itself (every quoted word in grammar/patch.lark is a
string terminal of Lark's parser), so a keyword added to the grammar is reserved at once.
The grammar's contextual lexer lets `run swap = ...` parse; reserving the word here gives a
clear message instead of a confusing parse error somewhere later.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Hashable, Iterable

from . import ast as A
from .check_context import KIND_WORD, Context


# Words of the grammar that stay usable as names: they are keywords only inside the circuit
# statement, and `as circuit` names a table in the language's own examples.
UNRESERVED = frozenset({"circuit", "top", "of"})


@lru_cache(maxsize=1)
def keywords() -> frozenset[str]:
    """Every word the grammar spells as a quoted string (`swap`, `from`, `normalized`...),
    except the UNRESERVED few."""
    from lark.lexer import PatternStr

    from .parse import _parser

    return frozenset(
        t.pattern.value for t in _parser().terminals
        if isinstance(t.pattern, PatternStr) and t.pattern.value.isidentifier()
    ) - UNRESERVED


def declare(ctx: Context, name: A.Name, kind: str, seen: dict[str, tuple[str, int]]) -> bool:
    """Record a declaration of `name` as `kind`; report a keyword (E307) or a name declared
    before (E308). Data, runs, metrics and vectors share one namespace (a name means one
    thing); result tables have their own (pass a separate `seen`). False if rejected."""
    value = name.value
    if value in keywords():
        ctx.error("E307", f"`{value}` is a keyword and cannot name a {KIND_WORD[kind]}",
                  name.span, hint=f"rename it, e.g. `{value}_`")
        return False
    if value in seen:
        prev_kind, prev_line = seen[value]
        what = "" if prev_kind == kind else f" as a {KIND_WORD[prev_kind]}"
        ctx.error("E308", f"`{value}` is already declared{what} on line {prev_line}",
                  name.span, hint=f"each {KIND_WORD[kind]} needs its own name")
        return False
    seen[value] = (kind, name.span.line)
    return True


def find_cycle(nodes: Iterable[Hashable],
               edges: Callable[[Hashable], Iterable[Hashable]]) -> list[Hashable] | None:
    """A cycle of the graph (`[a, b, a]`), or None. Depth-first, iterative (deep chains of
    metrics must not hit Python's recursion limit)."""
    color: dict[Hashable, int] = {}  # 1 on the current path, 2 done
    for root in nodes:
        if color.get(root):
            continue
        stack = [(root, iter(edges(root)))]
        path = [root]
        color[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                color[node] = 2
                continue
            state = color.get(nxt)
            if state == 1:
                return path[path.index(nxt):] + [nxt]
            if state is None:
                color[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(edges(nxt))))
    return None
