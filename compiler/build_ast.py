"""Lark tree -> AST: `AstBuilder` makes the frozen dataclasses of ast.py, with the Span of
every node, from the tree that the grammar (grammar/patch.lark) gives. One method per
grammar rule or alias, named after it. parse.py drives it. The rules of sites and positions
are in build_sites.py and those of metric and vector expressions in build_exprs.py (mixins
it extends), with the helpers all use.
"""

from __future__ import annotations

import math

from lark import Token, v_args

from . import ast as A
from .errors import ParseError, Source
from .build_exprs import _string, _tspan, span_of
from .build_sites import POSITION_FORMS, SiteBuilder  # noqa: F401 - parse.py imports it here


@v_args(meta=True)
class AstBuilder(SiteBuilder):
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
        if not any(c in text for c in ".eE"):
            return int(text)
        value = float(text)
        if math.isinf(value):  # `1e999999`: would run as inf and fill tables with NaN
            raise ParseError("E110", f"number out of range: {text} is beyond a 64-bit float",
                             span_of(meta))
        return value

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
        out = dict(items)
        if len(out) != len(items):  # `{"p": 1, "p": 2}` would silently keep the last
            keys = [k for k, _ in items]
            dup = next(k for i, k in enumerate(keys) if k in keys[:i])
            self.errors.append(ParseError("E107", f"an inline object names the key {dup!r} "
                                          "twice", span_of(meta)))
        return out

    def json_pair(self, meta, items):
        return (_string(items[0]), items[1])

    # -- declarations ----------------------------------------------------------------------
    def model_stmt(self, meta, items):
        rev = _string(items[1]) if len(items) > 1 else None
        return A.ModelDecl(_string(items[0]), rev, span_of(meta))

    def set_stmt(self, meta, items):
        value = items[1]
        return A.SetDecl(items[0], value, span_of(meta))

    def data_stmt(self, meta, items):
        name, src = items
        if isinstance(src, Token):
            return A.DataDecl(name, _string(src), None, span_of(meta))
        bad = [r for r in src if not isinstance(r, dict)]
        if bad:
            self.errors.append(ParseError("E107", "inline data rows must be JSON objects {...}",
                                          span_of(meta)))
        return A.DataDecl(name, None, tuple(r for r in src if isinstance(r, dict)), span_of(meta))

    def text_string(self, meta, items):
        return A.TextLiteral((_string(items[0]),), False, span_of(meta))

    def text_list(self, meta, items):
        return A.TextLiteral(tuple(_string(t) for t in items), True, span_of(meta))

    def run_stmt(self, meta, items):
        return A.RunDecl(items[0], items[1], tuple(items[2:]), span_of(meta))

    def metric_stmt(self, meta, items):
        pos = items[2] if len(items) > 2 else None
        return A.MetricDecl(items[0], items[1], pos, span_of(meta))

    def vector_stmt(self, meta, items):
        return A.VectorDecl(items[0], items[1], span_of(meta))

    def sae_stmt(self, meta, items):
        site = items[2] if len(items) > 2 else None
        return A.DictDecl("sae", items[0], _string(items[1]), site, span_of(meta))

    def transcoder_stmt(self, meta, items):
        site = items[2] if len(items) > 2 else None
        return A.DictDecl("transcoder", items[0], _string(items[1]), site, span_of(meta))

    # -- interventions ---------------------------------------------------------------------
    def i_noise(self, meta, items):
        return A.INoise(items[0], tuple(items[1:]), span_of(meta))

    def i_ablate(self, meta, items):
        how = items[1] if len(items) > 1 else A.Ablation("zero", None, span_of(meta))
        return A.IAblate((items[0],), how, span_of(meta))

    def i_steer(self, meta, items):
        return A.ISteer((items[0],), items[1], span_of(meta))

    def i_scale(self, meta, items):
        return A.IScale((items[0],), items[1], span_of(meta))

    def i_swap(self, meta, items):
        return A.ISwap((items[0],), items[1].value, span_of(meta))

    def i_freeze_ln(self, meta, items):
        return A.IFreezeLn(items[0].value, span_of(meta))

    def abl_zero(self, meta, items):
        return A.Ablation("zero", None, span_of(meta))

    def abl_mean(self, meta, items):
        return A.Ablation("mean", items[0].value, span_of(meta))

    def abl_resample(self, meta, items):
        return A.Ablation("resample", items[0].value, span_of(meta))

    # -- operations ------------------------------------------------------------------------
    def swap_op(self, meta, items):
        sites, src, dst, clauses = items
        return A.Swap(sites, src, dst, clauses, span_of(meta))

    def ablate_op(self, meta, items):
        sites, target = items[0], items[1]
        how = items[2] if len(items) == 4 else A.Ablation("zero", None, target.span)
        return A.Ablate(sites, target, how, items[-1], span_of(meta))

    def backpatch_op(self, meta, items):
        src, dst, target = items[0], items[1], items[2]
        source = items[3] if len(items) == 5 else None
        if src.pos is None and dst.pos is not None:
            # A trailing `@ POS` applies to both sides (docs/language.md §8, backpatch).
            src = _with_pos(src, dst.pos)
        return A.Backpatch(src, dst, target, source, items[-1], span_of(meta))

    def steer_op(self, meta, items):
        sites, target, by, clauses = items
        return A.Steer(sites, target, by, clauses, span_of(meta))

    def scale_op(self, meta, items):
        sites, target, by, clauses = items
        return A.Scale(sites, target, by, clauses, span_of(meta))

    def attribute_op(self, meta, items):
        sites, src, dst, method, clauses = items
        return A.Attribute(sites, src, dst, method, clauses, span_of(meta))

    def compare_op(self, meta, items):
        methods = tuple(i for i in items if isinstance(i, A.Method))
        sites, src, dst, clauses = items[len(methods):]
        return A.Compare(methods, sites, src, dst, clauses, span_of(meta))

    def trace_op(self, meta, items):
        sites, src, dst, clauses = items
        return A.Trace(sites, src, dst, clauses, span_of(meta))

    def dla_op(self, meta, items):
        sites, target, clauses = items
        return A.Dla(sites, target, clauses, span_of(meta))

    def read_op(self, meta, items):
        sites, target, clauses = items
        return A.ReadSites(sites, target, clauses, span_of(meta))

    def lens_op(self, meta, items):
        sites, target, clauses = items
        return A.Lens(sites, target, clauses, span_of(meta))

    def measure_op(self, meta, items):
        *measures, target, clauses = items
        own = A.Clauses(tuple(measures) + clauses.measures, clauses.name, clauses.where)
        return A.MeasureRun(target, own, span_of(meta))

    # -- circuits --------------------------------------------------------------------------
    def circuit_stmt(self, meta, items):
        name, sizes, table = items
        is_list = isinstance(sizes, list)
        sizes = tuple(sizes) if is_list else (sizes,)
        return A.CircuitDecl(name, sizes, table, is_list, span_of(meta))

    def size_list(self, meta, items):
        return list(items)

    def size_count(self, meta, items):
        return A.CircuitSize(int(items[0]), False, span_of(meta))

    def size_percent(self, meta, items):
        text = str(items[0])
        value = int(text) if text.isdigit() else float(text)
        return A.CircuitSize(value, True, span_of(meta))

    def evaluate_op(self, meta, items):
        circuit, target, how, clauses = items
        return A.Evaluate(circuit, target, how, clauses, span_of(meta))

    def eval_ablate(self, meta, items):
        return A.Ablation("ablate", items[0].value, span_of(meta))

    def eval_mean(self, meta, items):
        return A.Ablation("mean", items[0].value, span_of(meta))

    def method(self, meta, items):
        tok = items[0]
        return A.Method(str(tok), tuple(items[1:]), span_of(meta))

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
        name = items.pop(0) if isinstance(items[0], A.Name) else None
        norm = items[1] if len(items) > 1 else None
        between = norm[1] if norm is not None else None
        return A.Measure(items[0], norm is not None, span_of(meta), between, name)

    def normalization(self, meta, items):
        return ("normalized", (items[1], items[2]) if len(items) == 3 else None)

    def as_clause(self, meta, items):
        return ("as", items[0])

    def where_clause(self, meta, items):
        return ("where", items)

    def cond(self, meta, items):
        left, op, right = items
        r = right[1:] if isinstance(right, Token) else right
        return A.Cond(str(left)[1:], str(op), r, span_of(meta))

    # -- keyword arguments -----------------------------------------------------------------
    def kwarg(self, meta, items):
        return A.KwArg(items[0].value, items[1], span_of(meta))

    def std_of(self, meta, items):
        return A.StdOf(float(items[0]), items[1], span_of(meta))

    def __default__(self, data, children, meta):
        # Every rule has a method above; reaching here means the grammar grew without one.
        raise ParseError("E199", f"internal: no AST builder for grammar rule {data!r}",
                         span_of(meta) if meta and not meta.empty else None)


def _with_pos(site: A.SiteRef, pos: A.Pos) -> A.SiteRef:
    return A.SiteRef(site.text, site.kind, site.layer, site.head, site.features, site.subspace,
                     pos, site.span)
