"""Lark tree -> AST for site references, edges, `all(...)` groups, index patterns and
positions: the `SiteBuilder` mixin of build_ast.AstBuilder (one method per grammar rule,
named after it). It collects a malformed site path in `errors` and goes on, so one parse
reports every bad site, not only the first.
"""

from __future__ import annotations

from lark import v_args

from . import ast as A
from .build_exprs import ExprBuilder, _tspan, span_of
from .errors import ParseError, Source
from .sites import parse_site_path


# What may follow `@`: the hint of every error about a position.
POSITION_FORMS = ("a position is `last`, `each`, a token index (`3`, `-1`), a range (`2..5`), "
                  "a set (`{1, 3, 9}`), a per-example column (`DATA.column`) or a range "
                  "between two columns (`DATA.a..DATA.b`)")


@v_args(meta=True)
class SiteBuilder(ExprBuilder):
    """The site and position rules of the AST builder; AstBuilder extends it with the
    statements, and owns the `errors` and `source` they use."""

    errors: list[ParseError]
    source: Source

    # -- sites -----------------------------------------------------------------------------
    def sites(self, meta, items):
        return tuple(items)

    def group(self, meta, items):
        pos = items[-1] if not isinstance(items[-1], (A.SiteRef, A.Edge)) else None
        edges = tuple(i for i in items if isinstance(i, A.Edge))
        members = tuple(i for i in items if isinstance(i, A.SiteRef))
        if edges and members:
            self.errors.append(ParseError("E113", "all(...) joins sites or edges, not both",
                                          span_of(meta)))
        if edges:
            return A.EdgeGroup(edges, pos, span_of(meta))
        return A.Group(members, pos, span_of(meta))

    def edge(self, meta, items):
        sender, receiver = items
        if sender.pos is not None:
            self.errors.append(ParseError(
                "E113", "an edge's positions are written after its receiver "
                "(`S -> R @ POS` applies to both ends)", sender.span))
        return A.Edge(sender, receiver, span_of(meta))

    def every(self, meta, items):
        return A.Every(span_of(meta), items[0] if items else None)

    def site(self, meta, items):
        tok = items[0]
        features = subspace = pos = None
        span = _tspan(tok)
        # The site's span is its path and any `[...]` selections, not `@ POS` (which has its
        # own): an error about the site underlines the site only.
        whole = span
        for it in items[1:]:
            if isinstance(it, tuple) and it[0] == "features":
                features, whole = it[1], span.to(it[2])
            elif isinstance(it, tuple) and it[0] == "subspace":
                subspace, whole = it[1], span.to(it[2])
            else:
                pos = it
        try:
            parsed = parse_site_path(str(tok), span)
        except ParseError as e:
            self.errors.append(e)
            return A.SiteRef(str(tok), "?", None, None, features, subspace or (), pos, whole)
        return A.SiteRef(str(tok), parsed.kind, parsed.layer, parsed.head, features,
                         subspace or (), pos, whole)

    def feature_sel(self, meta, items):
        return ("features", items[0], span_of(meta))

    def subspace(self, meta, items):
        return ("subspace", tuple(n.value for n in items), span_of(meta))

    def slice(self, meta, items):
        return A.Slice(items[0], items[1], span_of(meta))

    def idx(self, meta, items):
        return A.Idx(items[0], span_of(meta))

    def star(self, meta, items):
        return A.Star(span_of(meta))

    def idx_range(self, meta, items):
        return A.IdxRange(items[0], items[1], span_of(meta))

    def idx_set(self, meta, items):
        return A.IdxSet(tuple(items), span_of(meta))

    def capture(self, meta, items):
        return A.Capture(str(items[0])[1:], span_of(meta))

    def at_pos(self, meta, items):
        return items[0]

    def pos_last(self, meta, items):
        return A.PosLast(span_of(meta))

    def pos_each(self, meta, items):
        return A.PosEach(span_of(meta))

    def pos_index(self, meta, items):
        return A.PosIndex(items[0], span_of(meta))

    def pos_range(self, meta, items):
        return A.PosRange(items[0], items[1], span_of(meta))

    def pos_column(self, meta, items):
        ref = items[0]
        last = self.errors[-1] if self.errors else None
        if last is not None and last.code == "E106" and last.span == ref.span:
            # `@ first`: not a column reference gone wrong, but an unknown kind of position.
            s = ref.span
            word = self.source.line_text(s.line)[s.col - 1:s.end_col - 1]
            self.errors[-1] = ParseError("E112", f"`{word}` is not a position", s,
                                         hint=POSITION_FORMS)
        return ref

    def pos_set(self, meta, items):
        return A.PosSet(tuple(items), span_of(meta))

    def pos_span(self, meta, items):
        return A.PosSpan(items[0], items[1], span_of(meta))
