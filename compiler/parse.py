"""Text -> AST. Lark (LALR, positions propagated) builds a tree; `_ToAst` makes frozen AST
dataclasses with spans; Lark's exceptions become located ParseErrors.

`parse(text, filename)` is the entry point; `parse_file(path)` reads a file first.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from . import ast as A
from .errors import ParseError, Source, Span, SpecErrors
from .sites import parse_site_path


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
    builder = _ToAst(source)
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
            span = _span(meta) if meta is not None and not meta.empty else None
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
    if tok.type == "_NL":
        span = Span.point(tok.line, tok.column)
    hint = None
    if tok.type != "_NL" and tok.column == 1 and "_NL" not in e.expected:
        hint = "clauses that continue a statement must be indented"
    return ParseError("E100", f"unexpected {found}; expected {_expected(e.expected)}", span,
                      source, hint)


# ---------------------------------------------------------------------------------------------
# Tree -> AST


def _span(meta: Any) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tspan(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + len(tok))


def _string(tok: Token) -> str:
    try:
        return json.loads(tok)
    except json.JSONDecodeError as e:
        # The STRING terminal admits any backslash pair; JSON does not (`\q`, raw tabs).
        raise ParseError("E101", f"invalid string literal: {e.msg}", _tspan(tok)) from None


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds AST nodes bottom-up. Malformed pieces are collected in `errors` so that one
    parse reports every bad site path, not only the first."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source
        self.errors: list[ParseError] = []

    # -- small things --------------------------------------------------------------------
    def start(self, meta, items):
        return [i for i in items if not isinstance(i, Token)]

    def name(self, meta, items):
        tok = items[0]
        if "." in tok or not (tok[0].isalpha() or tok[0] == "_"):
            self.errors.append(ParseError("E105", f"expected a plain name, got {str(tok)!r}",
                                          _tspan(tok)))
        return A.Name(str(tok), _tspan(tok))

    def number(self, meta, items):
        text = "".join(str(t) for t in items)
        return float(text) if any(c in text for c in ".eE") else int(text)

    def unumber(self, meta, items):
        return self.number(meta, items)

    def signed_int(self, meta, items):
        return int("".join(str(t) for t in items))

    def string(self, meta, items):
        return _string(items[0])

    def true(self, meta, items):
        return True

    def false(self, meta, items):
        return False

    def null(self, meta, items):
        return None

    def bare(self, meta, items):
        return str(items[0])

    def tokfn(self, meta, items):
        return str(items[0])

    def column(self, meta, items):
        tok = items[0]
        parts = str(tok).split(".")
        if len(parts) != 2:
            self.errors.append(ParseError(
                "E106", f"expected DATA.column, got {str(tok)!r}", _tspan(tok)))
            parts = (parts + ["?"])[:2]
        return A.ColumnRef(parts[0], parts[1], _tspan(tok))

    # -- json ------------------------------------------------------------------------------
    def json_array(self, meta, items):
        return list(items)

    def json_object(self, meta, items):
        return dict(items)

    def json_pair(self, meta, items):
        return (_string(items[0]), items[1])

    # -- declarations ----------------------------------------------------------------------
    def model_stmt(self, meta, items):
        rev = _string(items[1]) if len(items) > 1 else None
        return A.ModelDecl(_string(items[0]), rev, _span(meta))

    def set_stmt(self, meta, items):
        value = items[1]
        return A.SetDecl(items[0], value, _span(meta))

    def data_stmt(self, meta, items):
        name, src = items
        if isinstance(src, Token):
            return A.DataDecl(name, _string(src), None, _span(meta))
        bad = [r for r in src if not isinstance(r, dict)]
        if bad:
            self.errors.append(ParseError("E107", "inline data rows must be JSON objects {...}",
                                          _span(meta)))
        return A.DataDecl(name, None, tuple(r for r in src if isinstance(r, dict)), _span(meta))

    def text_string(self, meta, items):
        return A.TextLiteral((_string(items[0]),), False, _span(meta))

    def text_list(self, meta, items):
        return A.TextLiteral(tuple(_string(t) for t in items), True, _span(meta))

    def run_stmt(self, meta, items):
        return A.RunDecl(items[0], items[1], tuple(items[2:]), _span(meta))

    def metric_stmt(self, meta, items):
        pos = items[2] if len(items) > 2 else None
        return A.MetricDecl(items[0], items[1], pos, _span(meta))

    def vector_stmt(self, meta, items):
        return A.VectorDecl(items[0], items[1], _span(meta))

    # -- interventions ---------------------------------------------------------------------
    def i_noise(self, meta, items):
        return A.INoise(items[0], tuple(items[1:]), _span(meta))

    def i_ablate(self, meta, items):
        how = items[1] if len(items) > 1 else A.Ablation("zero", None, _span(meta))
        return A.IAblate((items[0],), how, _span(meta))

    def i_steer(self, meta, items):
        return A.ISteer((items[0],), items[1], _span(meta))

    def i_scale(self, meta, items):
        return A.IScale((items[0],), items[1], _span(meta))

    def i_swap(self, meta, items):
        return A.ISwap((items[0],), items[1].value, _span(meta))

    def i_freeze_ln(self, meta, items):
        return A.IFreezeLn(items[0].value, _span(meta))

    def abl_zero(self, meta, items):
        return A.Ablation("zero", None, _span(meta))

    def abl_mean(self, meta, items):
        return A.Ablation("mean", items[0].value, _span(meta))

    def abl_resample(self, meta, items):
        return A.Ablation("resample", items[0].value, _span(meta))

    # -- operations ------------------------------------------------------------------------
    def swap_op(self, meta, items):
        sites, src, dst, clauses = items
        return A.Swap(sites, src, dst, clauses, _span(meta))

    def ablate_op(self, meta, items):
        sites, target = items[0], items[1]
        how = items[2] if len(items) == 4 else A.Ablation("zero", None, target.span)
        return A.Ablate(sites, target, how, items[-1], _span(meta))

    def backpatch_op(self, meta, items):
        src, dst, target = items[0], items[1], items[2]
        source = items[3] if len(items) == 5 else None
        if src.pos is None and dst.pos is not None:
            # A trailing `@ POS` applies to both sides (LANGUAGE.md §6).
            src = _with_pos(src, dst.pos)
        return A.Backpatch(src, dst, target, source, items[-1], _span(meta))

    def steer_op(self, meta, items):
        sites, target, by, clauses = items
        return A.Steer(sites, target, by, clauses, _span(meta))

    def scale_op(self, meta, items):
        sites, target, by, clauses = items
        return A.Scale(sites, target, by, clauses, _span(meta))

    def attribute_op(self, meta, items):
        sites, src, dst, method, clauses = items
        return A.Attribute(sites, src, dst, method, clauses, _span(meta))

    def compare_op(self, meta, items):
        methods = tuple(i for i in items if isinstance(i, A.Method))
        sites, src, dst, clauses = items[len(methods):]
        return A.Compare(methods, sites, src, dst, clauses, _span(meta))

    def trace_op(self, meta, items):
        sites, src, dst, clauses = items
        return A.Trace(sites, src, dst, clauses, _span(meta))

    def dla_op(self, meta, items):
        sites, target, clauses = items
        return A.Dla(sites, target, clauses, _span(meta))

    def method(self, meta, items):
        tok = items[0]
        return A.Method(str(tok), tuple(items[1:]), _span(meta))

    # -- clauses ---------------------------------------------------------------------------
    def clauses(self, meta, items):
        measures: list[A.Measure] = []
        name = None
        where: list[A.Cond] = []
        for kind, value in items:
            if kind == "measure":
                measures.extend(value)
            elif kind == "as":
                if name is not None:
                    self.errors.append(ParseError("E108", "a statement has one `as NAME`",
                                                  value.span))
                name = value
            else:
                where.extend(value)
        return A.Clauses(tuple(measures), name, tuple(where))

    def measure_clause(self, meta, items):
        return ("measure", items)

    def measure_item(self, meta, items):
        return A.Measure(items[0], len(items) > 1, _span(meta))

    def as_clause(self, meta, items):
        return ("as", items[0])

    def where_clause(self, meta, items):
        return ("where", items)

    def cond(self, meta, items):
        left, op, right = items
        r = right[1:] if isinstance(right, Token) else right
        return A.Cond(str(left)[1:], str(op), r, _span(meta))

    # -- sites -----------------------------------------------------------------------------
    def sites(self, meta, items):
        return tuple(items)

    def group(self, meta, items):
        pos = items[-1] if not isinstance(items[-1], A.SiteRef) else None
        members = tuple(i for i in items if isinstance(i, A.SiteRef))
        return A.Group(members, pos, _span(meta))

    def site(self, meta, items):
        tok = items[0]
        features = subspace = pos = None
        for it in items[1:]:
            if isinstance(it, tuple) and it[0] == "features":
                features = it[1]
            elif isinstance(it, tuple) and it[0] == "subspace":
                subspace = it[1]
            else:
                pos = it
        span = _tspan(tok)
        try:
            parsed = parse_site_path(str(tok), span)
        except ParseError as e:
            self.errors.append(e)
            return A.SiteRef(str(tok), "?", None, None, features, subspace or (), pos,
                             _span(meta))
        return A.SiteRef(str(tok), parsed.kind, parsed.layer, parsed.head, features,
                         subspace or (), pos, _span(meta))

    def feature_sel(self, meta, items):
        return ("features", items[0])

    def subspace(self, meta, items):
        return ("subspace", tuple(n.value for n in items))

    def slice(self, meta, items):
        return A.Slice(items[0], items[1], _span(meta))

    def idx(self, meta, items):
        return A.Idx(items[0], _span(meta))

    def star(self, meta, items):
        return A.Star(_span(meta))

    def idx_range(self, meta, items):
        return A.IdxRange(items[0], items[1], _span(meta))

    def idx_set(self, meta, items):
        return A.IdxSet(tuple(items), _span(meta))

    def capture(self, meta, items):
        return A.Capture(str(items[0])[1:], _span(meta))

    def at_pos(self, meta, items):
        return items[0]

    def pos_last(self, meta, items):
        return A.PosLast(_span(meta))

    def pos_each(self, meta, items):
        return A.PosEach(_span(meta))

    def pos_index(self, meta, items):
        return A.PosIndex(items[0], _span(meta))

    def pos_range(self, meta, items):
        return A.PosRange(items[0], items[1], _span(meta))

    def pos_column(self, meta, items):
        return items[0]

    # -- metric expressions ----------------------------------------------------------------
    def m_num(self, meta, items):
        return A.MNum(float(items[0]), _span(meta))

    def m_neg(self, meta, items):
        return A.MNeg(items[0], _span(meta))

    def _m_bin(self, op: str, meta, items):
        return A.MBin(op, items[0], items[1], _span(meta))

    def m_add(self, meta, items):
        return self._m_bin("+", meta, items)

    def m_sub(self, meta, items):
        return self._m_bin("-", meta, items)

    def m_mul(self, meta, items):
        return self._m_bin("*", meta, items)

    def m_div(self, meta, items):
        return self._m_bin("/", meta, items)

    def m_call(self, meta, items):
        return A.MCall(items[0], items[1], _span(meta))

    def m_kl(self, meta, items):
        return A.MKL(items[0].value, _span(meta))

    def m_loss(self, meta, items):
        return A.MLoss(_span(meta))

    def m_generate(self, meta, items):
        return A.MGenerate(int(items[0]), items[1], _span(meta))

    def m_ref(self, meta, items):
        return A.MRef(items[0].value, _span(meta))

    def tok_string(self, meta, items):
        return A.TokString(_string(items[0]), _span(meta))

    def tok_id(self, meta, items):
        return A.TokId(int(items[0]), _span(meta))

    # -- vector expressions ----------------------------------------------------------------
    def v_ref(self, meta, items):
        return A.VRef(items[0].value, _span(meta))

    def v_neg(self, meta, items):
        return A.VNeg(items[0], _span(meta))

    def v_add(self, meta, items):
        return A.VBin("+", items[0], items[1], _span(meta))

    def v_sub(self, meta, items):
        return A.VBin("-", items[0], items[1], _span(meta))

    def v_scale(self, meta, items):
        return A.VScale(items[0], items[1], _span(meta))

    def v_load(self, meta, items):
        return A.VLoad(_string(items[0]), _string(items[1]), _span(meta))

    def v_mean(self, meta, items):
        site: A.SiteRef = items[0]
        run, _, rest = site.text.partition(".")
        if not rest:
            self.errors.append(ParseError(
                "E109", f"mean(...) needs RUN.SITE @ POS, got {site.text!r}", site.span))
            return A.VMean(A.RunSite("?", site, site.span), _span(meta))
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
        return A.VMean(A.RunSite(run, inner, site.span), _span(meta))

    def v_sae(self, meta, items):
        return A.VSae(_string(items[0]), int(items[1]), _span(meta))

    def v_normalize(self, meta, items):
        return A.VNormalize(items[0], _span(meta))

    def scalar_one(self, meta, items):
        return A.Scalar(float(items[0]), _span(meta))

    def scalar_sweep(self, meta, items):
        return A.ScalarSweep(tuple(float(v) for v in items), _span(meta))

    # -- keyword arguments -----------------------------------------------------------------
    def kwarg(self, meta, items):
        return A.KwArg(items[0].value, items[1], _span(meta))

    def std_of(self, meta, items):
        return A.StdOf(float(items[0]), items[1], _span(meta))

    def __default__(self, data, children, meta):
        # Every rule has a method above; reaching here means the grammar grew without one.
        raise ParseError("E199", f"internal: no AST builder for grammar rule {data!r}",
                         _span(meta) if meta and not meta.empty else None)


def _with_pos(site: A.SiteRef, pos: A.Pos) -> A.SiteRef:
    return A.SiteRef(site.text, site.kind, site.layer, site.head, site.features, site.subspace,
                     pos, site.span)
