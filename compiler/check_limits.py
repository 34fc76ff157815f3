"""The chain limits of `check`: how deep and how large metrics and vectors grow once the
declarations they name are written out (E354), and how long a chain of runs reading runs may
be (E355). Lowering inlines these by recursion; beyond the limits it would meet Python's
recursion limit or build exponentially large expressions. The limits are in limits.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Iterable, Iterator

from . import ast as A
from .check_context import Context
from .check_runs import run_deps
from .check_vectors import vector_deps
from .errors import Span
from .limits import MAX_EXPANDED, MAX_NESTING, MAX_RUN_CHAIN


def check_chains(ctx: Context, runs: list[A.RunDecl]) -> None:
    """Expanded metrics and vectors at most MAX_NESTING deep and MAX_EXPANDED large (E354);
    run chains at most MAX_RUN_CHAIN long (E355). Call only when there is no cycle
    (E324/E344). One error per kind: the first declaration, in line order, past the limit
    (later ones build on it)."""
    _nesting(ctx, "metric", ctx.metrics, A.MRef)
    _nesting(ctx, "vector", ctx.vectors, A.VRef)
    decls: dict[tuple[str, str], Any] = {("run", r.name.value): r for r in runs}
    decls.update({("vector", n): v for n, v in ctx.vectors.items()})

    def deps(node: Hashable) -> list[Hashable]:
        d = decls[node]
        found = run_deps(d) if node[0] == "run" else vector_deps(d.expr)  # type: ignore
        return [x for x in found if x in decls]

    length = _bottom_up(list(decls), deps, lambda node, values: 1 + max(
        (values.get(s, 0) for s in deps(node)), default=0))
    over = [k for k in decls if k[0] == "run" and length[k] > MAX_RUN_CHAIN]
    if over:
        key = min(over, key=lambda k: decls[k].span.line)
        ctx.error("E355", f"run `{key[1]}` reads a chain of {length[key]} runs and vectors; "
                  f"at most {MAX_RUN_CHAIN}", decls[key].name.span,
                  hint="read from fewer runs in a row")


def _nesting(ctx: Context, kind: str, decls: dict[str, Any], ref: type) -> None:
    """Depth and size of each declaration's expression with the references written out
    (lowering inlines them: `v2 = v1 + v1` doubles with every link)."""
    def deps(name: Hashable) -> list[Hashable]:
        return [n.name for n in _nodes(decls[name].expr) if isinstance(n, ref)
                and n.name in decls]

    def depth(name: Hashable, below: dict[Hashable, int]) -> int:
        return _depth(decls[name].expr, lambda n: below.get(n.name, 0)
                      if isinstance(n, ref) else 0)

    def size(name: Hashable, below: dict[Hashable, int]) -> int:
        return sum(1 + (below.get(n.name, 0) if isinstance(n, ref) else 0)
                   for n in _nodes(decls[name].expr))

    levels = _bottom_up(list(decls), deps, depth)
    sizes = _bottom_up(list(decls), deps, size)
    over = [d for n, d in decls.items() if levels[n] > MAX_NESTING or sizes[n] > MAX_EXPANDED]
    if over:
        first = min(over, key=lambda d: d.span.line)
        name = first.name.value
        how = (f"nests {levels[name]} levels deep" if levels[name] > MAX_NESTING else
               f"grows to {sizes[name]} terms")
        limit = (f"{MAX_NESTING} levels" if levels[name] > MAX_NESTING else
                 f"{MAX_EXPANDED} terms")
        ctx.error("E354", f"{kind} `{name}` {how} once the {kind}s it names are written "
                  f"out; at most {limit}", first.name.span,
                  hint=f"name fewer {kind}s in a chain")


def _bottom_up(nodes: list[Hashable], edges: Callable[[Hashable], Iterable[Hashable]],
             combine: Callable[[Hashable, dict], int]) -> dict[Hashable, int]:
    """A value per node of an acyclic graph, `combine(node, values)`, computed after its
    successors' values (post-order, iteratively: chains may be long)."""
    value: dict[Hashable, int] = {}
    for root in nodes:
        if root in value:
            continue
        stack = [(root, iter(edges(root)))]
        on_path = {root}
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in value and nxt not in on_path:  # on_path: a cycle, reported
                    on_path.add(nxt)
                    stack.append((nxt, iter(edges(nxt))))
                continue
            stack.pop()
            on_path.discard(node)
            value[node] = combine(node, value)
    return value


_FIELDS: dict[type, tuple[str, ...]] = {}  # field names per AST class, looked up once


def _children(node: Any) -> Iterator[Any]:
    """The AST nodes directly inside `node` (any dataclass field that holds one)."""
    names = _FIELDS.get(type(node))
    if names is None:
        names = _FIELDS[type(node)] = tuple(f.name for f in dataclasses.fields(node))
    for name in names:
        v = getattr(node, name)
        items = v if isinstance(v, tuple) else (v,)
        for item in items:
            if dataclasses.is_dataclass(item) and not isinstance(item, (type, Span)):
                yield item


def _nodes(expr: Any) -> Iterator[Any]:
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_children(node))


def _depth(expr: Any, extra: Callable[[Any], int]) -> int:
    """Levels of `expr`, where a node at level k that names another declaration counts
    k + that declaration's own levels (`extra`)."""
    deepest = 0
    stack = [(expr, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level + extra(node))
        stack.extend((c, level + 1) for c in _children(node))
    return deepest
