"""Lark tree -> AST for metric and vector expressions: the `ExprBuilder` mixin of
build_ast.AstBuilder (one method per grammar rule, named after it), and the helpers that turn
Lark's positions and tokens into Spans and strings.
"""

from __future__ import annotations

import json
from typing import Any

from lark import Token, Transformer, v_args

from . import ast as A
from .errors import ParseError, Span
from .sites import parse_site_path


def span_of(meta: Any) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tspan(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + len(tok))


def _string(tok: Token) -> str:
    try:
        value = json.loads(tok)
    except json.JSONDecodeError as e:
        # The STRING terminal admits any backslash pair; JSON does not (`\q`, raw tabs).
        # json's message ends in "at" (its position goes in a suffix): say what is there.
        where = tok[e.pos] if 0 <= e.pos < len(tok) else ""
        what = f"U+{ord(where):04X}" if where and not where.isprintable() else \
            f"`{tok[e.pos:e.pos + 2]}`" if where == "\\" else f"`{where}`"
        msg = e.msg.removesuffix(" at").removesuffix(":")
        raise ParseError("E101", f"invalid string literal: {msg} {what} at character {e.pos} "
                         "of the string", _tspan(tok)) from None
    bad = first_surrogate(value)
    if bad is not None:
        # JSON lets `"\ud800"` through; no tokenizer or file system takes half a character.
        raise ParseError("E101", f"invalid string literal: a lone surrogate U+{ord(bad):04X} is "
                         "not a character", _tspan(tok),
                         hint="write the character itself, or a \\uXXXX\\uXXXX pair")
    return value


def first_surrogate(text: str) -> str | None:
    """The first lone surrogate code point in `text` (not valid Unicode text), or None."""
    return next((c for c in text if 0xD800 <= ord(c) <= 0xDFFF), None)


@v_args(meta=True)
class ExprBuilder(Transformer):
    """The expression rules of the AST builder; AstBuilder extends it (through
    build_sites.SiteBuilder) with the rest, and owns the `errors` they add to."""

    errors: list[ParseError]

    # -- metric expressions ----------------------------------------------------------------
    def m_num(self, meta, items):
        return A.MNum(float(items[0]), span_of(meta))

    def m_neg(self, meta, items):
        return A.MNeg(items[0], span_of(meta))

    def _m_bin(self, op: str, meta, items):
        return A.MBin(op, items[0], items[1], span_of(meta))

    def m_add(self, meta, items):
        return self._m_bin("+", meta, items)

    def m_sub(self, meta, items):
        return self._m_bin("-", meta, items)

    def m_mul(self, meta, items):
        return self._m_bin("*", meta, items)

    def m_div(self, meta, items):
        return self._m_bin("/", meta, items)

    def m_cmp(self, meta, items):
        return A.MBin(str(items[1]), items[0], items[2], span_of(meta))

    def m_text(self, meta, items):
        return A.MText(int(items[0]), span_of(meta))

    def m_seqlogprob(self, meta, items):
        return A.MSeqLogProb(items[0], span_of(meta))

    def m_call(self, meta, items):
        return A.MCall(items[0], items[1], span_of(meta))

    def m_kl(self, meta, items):
        return A.MKL(items[0].value, span_of(meta))

    def m_loss(self, meta, items):
        return A.MLoss(span_of(meta))

    def m_generate(self, meta, items):
        return A.MGenerate(int(items[0]), items[1], span_of(meta))

    def m_ref(self, meta, items):
        return A.MRef(items[0].value, span_of(meta))

    def tok_string(self, meta, items):
        return A.TokString(_string(items[0]), span_of(meta))

    def tok_id(self, meta, items):
        return A.TokId(int(items[0]), span_of(meta))

    # -- vector expressions ----------------------------------------------------------------
    def v_ref(self, meta, items):
        return A.VRef(items[0].value, span_of(meta))

    def v_neg(self, meta, items):
        return A.VNeg(items[0], span_of(meta))

    def v_add(self, meta, items):
        return A.VBin("+", items[0], items[1], span_of(meta))

    def v_sub(self, meta, items):
        return A.VBin("-", items[0], items[1], span_of(meta))

    def v_scale(self, meta, items):
        return A.VScale(items[0], items[1], span_of(meta))

    def v_load(self, meta, items):
        return A.VLoad(_string(items[0]), _string(items[1]), span_of(meta))

    def v_mean(self, meta, items):
        site: A.SiteRef = items[0]
        run, _, rest = site.text.partition(".")
        if not rest:
            self.errors.append(ParseError(
                "E109", f"mean(...) needs RUN.SITE @ POS, got {site.text!r}", site.span))
            return A.VMean(A.RunSite("?", site, site.span), span_of(meta))
        s = site.span
        inner_span = Span(s.line, s.col + len(run) + 1, s.end_line, s.end_col)
        try:
            parsed = parse_site_path(rest, inner_span)
        except ParseError as e:
            self.errors.append(e)
            parsed = None
        inner = A.SiteRef(rest, parsed.kind if parsed else "?", parsed.layer if parsed else None,
                          parsed.head if parsed else None, site.features, site.subspace,
                          site.pos, inner_span.to(site.span))
        return A.VMean(A.RunSite(run, inner, site.span), span_of(meta))

    def v_sae(self, meta, items):
        return A.VSae(_string(items[0]), int(items[1]), span_of(meta))

    def v_normalize(self, meta, items):
        return A.VNormalize(items[0], span_of(meta))

    def scalar_one(self, meta, items):
        return A.Scalar(float(items[0]), span_of(meta))

    def scalar_sweep(self, meta, items):
        return A.ScalarSweep(tuple(float(v) for v in items), span_of(meta))
