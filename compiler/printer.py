"""The one printer: a deterministic text form for every stage (DESIGN.md, "Conventions").

AST section (this file so far):

- `format_spec(spec)` writes canonical `.patch` source, what `patchc fmt` writes. Parsing its
  output gives the same AST (spans aside), and formatting is idempotent.
- `dump_ast(spec)` writes an indented tree of the AST with spans, for `patchc compile --emit
  ast` and the golden tests under tests/fixtures/ast/.

Comments are NOT preserved: the AST does not keep them, so `format_spec` drops every `#`
comment of the source. `has_comments(text)` lets the CLI warn before `patchc fmt` rewrites a
file that has some.

IR and Plan printing belong in their own sections below the AST ones, one per stage.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields, is_dataclass
from typing import Any

from . import ast as A
from .errors import Span

INDENT = "    "

# ---------------------------------------------------------------------------------------------
# Leaves: numbers, strings, names


_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')  # the grammar's STRING terminal


def has_comments(text: str) -> bool:
    """Does spec text contain a `#` comment (a `#` outside a string literal)?"""
    return "#" in _STRING.sub("", text)


def _float(v: float) -> str:
    """A float that keeps its type when re-parsed (`1.0`, `0.001`, `1e+20`)."""
    if math.isinf(v):
        return "1e999" if v > 0 else "-1e999"
    return repr(v)


def _num(v: float | int) -> str:
    """A number the AST stores as float but the user most likely wrote as an int: `4`, `0.5`."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return _float(v) if isinstance(v, float) else str(v)


def _str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _value(v: Any) -> str:
    """A `set` value or keyword argument. A string and a bare word parse to the same str, so a
    plain identifier prints bare (`dtype = float32`) and anything else quoted (`"8GB"`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, A.StdOf):
        return f"{_num(v.factor)} * std({site(v.site)})"
    if isinstance(v, str) and _BARE.match(v) and v not in ("true", "false"):
        return v
    return _str(v)


def _json(v: Any) -> str:
    """One JSON value on one line (floats via `_float`, so they re-parse to the same value)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_str(k)}: {_json(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_json(x) for x in v) + "]"
    if v is None or isinstance(v, (bool, str)):
        return json.dumps(v, ensure_ascii=False)
    return _float(v) if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------
# Sites and positions


def index(i: A.FeatureSel | A.Pos) -> str:
    """An index pattern, feature selection or position: `3`, `*`, `0..2`, `{1, 5}`, `$l`,
    `0:512`, `last`, `each`, `data.column`."""
    if isinstance(i, (A.Idx, A.PosIndex)):
        return str(i.value)
    if isinstance(i, (A.IdxRange, A.PosRange)):
        return f"{i.lo}..{i.hi}"
    if isinstance(i, A.IdxSet):
        return "{" + ", ".join(map(str, i.values)) + "}"
    if isinstance(i, A.Capture):
        return f"${i.name}"
    if isinstance(i, A.Slice):
        return f"{i.lo}:{i.hi}"
    if isinstance(i, A.ColumnRef):
        return column(i)
    return {A.Star: "*", A.PosLast: "last", A.PosEach: "each"}[type(i)]


def _at(p: A.Pos | None) -> str:
    return f" @ {index(p)}" if p is not None else ""


def column(c: A.ColumnRef) -> str:
    return f"{c.data}.{c.column}"


def site(s: A.SiteRef, with_pos: bool = True, prefix: str = "") -> str:
    out = prefix + s.text
    if s.features is not None:
        out += f"[{index(s.features)}]"
    if s.subspace:
        out += "[" + ", ".join(s.subspace) + "]"
    return out + (_at(s.pos) if with_pos else "")


def site_item(item: A.SiteItem) -> str:
    if isinstance(item, A.Group):
        return "all(" + ", ".join(site(m) for m in item.members) + ")" + _at(item.pos)
    return site(item)


def sites(items: tuple[A.SiteItem, ...]) -> str:
    return ", ".join(site_item(i) for i in items)


# ---------------------------------------------------------------------------------------------
# Expressions. Parentheses only where precedence or left-associativity needs them.

_MPREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _mprec(e: A.MExpr) -> int:
    return _MPREC[e.op] if isinstance(e, A.MBin) else 3


def mexpr(e: A.MExpr) -> str:
    if isinstance(e, A.MBin):
        p = _MPREC[e.op]
        left, right = mexpr(e.left), mexpr(e.right)
        if _mprec(e.left) < p:
            left = f"({left})"
        if _mprec(e.right) <= p:  # same level on the right: `a - (b - c)`
            right = f"({right})"
        return f"{left} {e.op} {right}"
    if isinstance(e, A.MNeg):
        inner = mexpr(e.operand)
        return f"-({inner})" if isinstance(e.operand, A.MBin) else f"-{inner}"
    if isinstance(e, A.MNum):
        return _num(e.value)
    if isinstance(e, A.MRef):
        return e.name
    if isinstance(e, A.MCall):
        return f"{e.fn}({tok(e.tok)})"
    if isinstance(e, A.MKL):
        return f"kl({e.run})"
    if isinstance(e, A.MLoss):
        return "loss"
    assert isinstance(e, A.MGenerate)
    return f"generate({e.n}) contains {column(e.answer)}"


def tok(t: A.Tok) -> str:
    if isinstance(t, A.TokString):
        return _str(t.text)
    if isinstance(t, A.TokId):
        return f"id({t.token_id})"
    return column(t)


def scalar(s: A.ScalarLike) -> str:
    if isinstance(s, A.ScalarSweep):
        return "{" + ", ".join(_num(v) for v in s.values) + "}"
    return _num(s.value)


def vexpr(e: A.VExpr) -> str:
    if isinstance(e, A.VBin):
        right = vexpr(e.right)
        if isinstance(e.right, A.VBin):
            right = f"({right})"
        return f"{vexpr(e.left)} {e.op} {right}"
    if isinstance(e, A.VScale):
        return f"{scalar(e.factor)} * {_vfactor(e.vec)}"
    if isinstance(e, A.VNeg):
        return f"-{_vfactor(e.operand)}"
    if isinstance(e, A.VRef):
        return e.name
    if isinstance(e, A.VLoad):
        return f"load({_str(e.path)}, key={_str(e.key)})"
    if isinstance(e, A.VMean):
        return f"mean({site(e.of.site, prefix=e.of.run + '.')})"
    if isinstance(e, A.VSae):
        return f"sae({_str(e.path)}, feature={e.feature})"
    assert isinstance(e, A.VNormalize)
    return f"normalize({vexpr(e.arg)})"


def _vfactor(e: A.VExpr) -> str:
    return f"({vexpr(e)})" if isinstance(e, (A.VBin, A.VScale)) else vexpr(e)


def measure(m: A.Measure) -> str:
    return mexpr(m.expr) + (" normalized" if m.normalized else "")


def _kwargs(kwargs: tuple[A.KwArg, ...]) -> str:
    return ", ".join(f"{k.name}={_value(k.value)}" for k in kwargs)


def method(m: A.Method) -> str:
    return f"{m.name}({_kwargs(m.kwargs)})" if m.kwargs else m.name


def _ablation(how: A.Ablation) -> str:
    """`` (zero, the default), ` with mean(A)`, ` with resample(A)`."""
    return "" if how.kind == "zero" else f" with {how.kind}({how.run})"


# ---------------------------------------------------------------------------------------------
# Statements


def intervention(i: A.Intervention) -> str:
    if isinstance(i, A.INoise):
        return f"noise({site(i.site)}, {_kwargs(i.kwargs)})"
    if isinstance(i, A.IAblate):
        return f"ablate {sites(i.sites)}{_ablation(i.how)}"
    if isinstance(i, A.ISteer):
        return f"steer {sites(i.sites)} by {vexpr(i.by)}"
    if isinstance(i, A.IScale):
        return f"scale {sites(i.sites)} by {scalar(i.by)}"
    if isinstance(i, A.ISwap):
        return f"swap {sites(i.sites)} from {i.source}"
    assert isinstance(i, A.IFreezeLn)
    return f"freeze ln from {i.source}"


def _text(t: A.TextSource) -> str:
    if isinstance(t, A.ColumnRef):
        return column(t)
    if t.is_list:
        return "[" + ", ".join(_str(s) for s in t.texts) + "]"
    return _str(t.texts[0])


def _declaration(s: A.Statement) -> str:
    if isinstance(s, A.ModelDecl):
        rev = f" revision {_str(s.revision)}" if s.revision is not None else ""
        return f"model {_str(s.model_id)}{rev}"
    if isinstance(s, A.SetDecl):
        return f"set {s.name.value} = {_value(s.value)}"
    if isinstance(s, A.DataDecl):
        if s.rows is None:
            return f"data {s.name.value} = {_str(s.path or '')}"
        if not s.rows:
            return f"data {s.name.value} = []"
        rows = ",\n".join(INDENT + _json(r) for r in s.rows)
        return f"data {s.name.value} = [\n{rows}\n]"
    if isinstance(s, A.RunDecl):
        out = f"run {s.name.value} = {_text(s.text)}"
        if s.interventions:
            out += " with " + ", ".join(intervention(i) for i in s.interventions)
        return out
    if isinstance(s, A.MetricDecl):
        return f"metric {s.name.value} = {mexpr(s.expr)}{_at(s.pos)}"
    assert isinstance(s, A.VectorDecl)
    return f"vector {s.name.value} = {vexpr(s.expr)}"


def _backpatch_sites(op: A.Backpatch) -> str:
    """`SRC -> DST @ POS` when both sides share a position (the parser copies a trailing one
    onto SRC), else each side with its own."""
    if op.src.pos is not None and op.dst.pos is not None and _same(op.src.pos, op.dst.pos):
        return f"{site(op.src, with_pos=False)} -> {site(op.dst)}"
    return f"{site(op.src)} -> {site(op.dst)}"


def _operation_head(op: A.Operation) -> str:
    if isinstance(op, A.Swap):
        return f"swap {sites(op.sites)} from {op.source.value} into {op.target.value}"
    if isinstance(op, A.Ablate):
        return f"ablate {sites(op.sites)} in {op.target.value}{_ablation(op.how)}"
    if isinstance(op, A.Backpatch):
        src = f" from {op.source.value}" if op.source is not None else ""
        return f"backpatch {_backpatch_sites(op)} in {op.target.value}{src}"
    if isinstance(op, A.Steer):
        return f"steer {sites(op.sites)} in {op.target.value} by {vexpr(op.by)}"
    if isinstance(op, A.Scale):
        return f"scale {sites(op.sites)} in {op.target.value} by {scalar(op.by)}"
    if isinstance(op, A.Attribute):
        return (f"attribute {sites(op.sites)} from {op.source.value} into {op.target.value}"
                f" using {method(op.method)}")
    if isinstance(op, A.Compare):
        return (f"compare {', '.join(method(m) for m in op.methods)} against swap on "
                f"{sites(op.sites)} from {op.source.value} into {op.target.value}")
    if isinstance(op, A.Trace):
        return f"trace {sites(op.sites)} from {op.source.value} into {op.target.value}"
    assert isinstance(op, A.Dla)
    return f"dla {sites(op.sites)} in {op.target.value}"


def _clauses(c: A.Clauses) -> list[str]:
    out = []
    if c.where:
        conds = " and ".join(
            f"${w.left} {w.op} {'$' + w.right if isinstance(w.right, str) else w.right}"
            for w in c.where)
        out.append(f"where {conds}")
    if c.measures:
        out.append("measure " + ", ".join(measure(m) for m in c.measures))
    if c.name is not None:
        out.append(f"as {c.name.value}")
    return [INDENT + line for line in out]


def statement(s: A.Statement) -> str:
    if isinstance(s, A.OPERATIONS):
        return "\n".join([_operation_head(s), *_clauses(s.clauses)])
    return _declaration(s)


def format_spec(spec: A.Spec) -> str:
    """Canonical source for a spec (comments are dropped: see the module docstring)."""
    chunks: list[str] = []
    prev: A.Statement | None = None
    for s in spec.statements:
        is_op = isinstance(s, A.OPERATIONS)
        if prev is not None and (is_op or type(s) is not type(prev)):
            chunks.append("")  # a blank line before each operation and between groups
        chunks.append(statement(s))
        prev = s
    return "\n".join(chunks) + "\n" if chunks else ""


# ---------------------------------------------------------------------------------------------
# AST dump: one node per line, `Type @line:col-end_line:end_col field=leaf ...`; fields that
# hold nodes (or long tuples, like inline data rows) follow on indented lines, in field order.


def _span_text(s: Span) -> str:
    return f"@{s.line}:{s.col}-{s.end_line}:{s.end_col}"


def _fields(node: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(node, f.name)) for f in fields(node)
            if f.name != "span" and f.compare]


def _is_leaf(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(_is_leaf(x) for x in v)
    return not is_dataclass(v)


def _leaf(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_leaf(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, (dict, list)):
        return _json(v)
    return repr(v)


def _inline(v: Any) -> bool:
    return _is_leaf(v) and not (isinstance(v, tuple) and len(_leaf(v)) > 60)


def _dump(node: Any, depth: int, label: str, out: list[str]) -> None:
    pad = "  " * depth
    if not is_dataclass(node):
        out.append(f"{pad}{label}{_leaf(node)}")
        return
    span = getattr(node, "span", None)
    head = [type(node).__name__] + ([_span_text(span)] if isinstance(span, Span) else [])
    fs = _fields(node)
    head += [f"{k}={_leaf(v)}" for k, v in fs if _inline(v)]
    out.append(pad + label + " ".join(head))
    for k, v in fs:
        if _inline(v):
            continue
        if isinstance(v, tuple):
            out.append(f"{pad}  {k}:")
            for i, item in enumerate(v):
                _dump(item, depth + 2, f"[{i}] ", out)
        else:
            _dump(v, depth + 1, f"{k}: ", out)


def dump_ast(spec: A.Spec | Any) -> str:
    """An indented tree of an AST (a Spec or any node), deterministic, spans included."""
    out: list[str] = []
    _dump(spec, 0, "", out)
    return "\n".join(out) + "\n"


def _same(a: Any, b: Any) -> bool:
    """Structural equality ignoring spans."""
    return strip_spans(a) == strip_spans(b)


def strip_spans(node: Any) -> Any:
    """A copy of an AST node with every span set to (0, 0, 0, 0), for comparing shapes."""
    if isinstance(node, tuple):
        return tuple(strip_spans(x) for x in node)
    if not is_dataclass(node) or isinstance(node, Span):
        return node
    kwargs = {f.name: (_ZERO if f.name == "span" and getattr(node, f.name) is not None
                       else strip_spans(getattr(node, f.name))) for f in fields(node)}
    return type(node)(**kwargs)


_ZERO = Span(0, 0, 0, 0)
