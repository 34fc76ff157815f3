"""The canonical `.patch` printer: AST nodes back to source text (docs/architecture.md).

- `format_spec(spec)` writes canonical `.patch` source. Parsing its output gives the same AST
  (spans aside), and formatting is idempotent. Lines are wrapped at 100 columns (wrap.py).
- `statement`, `site`, `mexpr`, `vexpr`, `method`, ... print one node; lower.py names inline
  expressions and table rows with them, and dump.py prints IR fields with them.

Comments are not in the AST, so `format_spec` drops them; `patchc fmt` uses
fmt.format_source, which puts them back. The debugging dumps of the AST and the IR (`patchc
compile --emit ast|ir`) are in dump.py.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from . import ast as A
from .wrap import INDENT, wrap

# ---------------------------------------------------------------------------------------------
# Leaves: numbers, strings, names


def _float(v: float) -> str:
    """A float that keeps its type when re-parsed (`1.0`, `0.001`, `1e+20`)."""
    if math.isinf(v):
        return "1e999" if v > 0 else "-1e999"
    return repr(v)


def num(v: float | int) -> str:
    """A number the AST stores as float but the user most likely wrote as an int: `4`, `0.5`."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return _float(v) if isinstance(v, float) else str(v)


def string(s: str) -> str:
    """A JSON-escaped string literal (non-ASCII kept as is)."""
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
        return f"{num(v.factor)} * std({site(v.site)})"
    if isinstance(v, str) and _BARE.match(v) and v not in ("true", "false"):
        return v
    return string(v)


def json_value(v: Any) -> str:
    """One JSON value on one line (floats via `_float`, so they re-parse to the same value)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{string(k)}: {json_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(json_value(x) for x in v) + "]"
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
    if isinstance(i, A.PosSet):
        return "{" + ", ".join(map(str, i.values)) + "}"
    if isinstance(i, A.PosSpan):
        return f"{column(i.lo)}..{column(i.hi)}"
    return {A.Star: "*", A.PosLast: "last", A.PosEach: "each"}[type(i)]


def pos(p: A.Pos) -> str:
    """A position: `last`, `3`, `2..5`, `each`, `data.column`."""
    return index(p)


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


def edge_end(end: A.EdgeEnd) -> str:
    return "*" + _at(end.pos) if isinstance(end, A.Every) else site(end)


def site_item(item: A.SiteItem) -> str:
    if isinstance(item, A.Edge):
        return f"{edge_end(item.sender)} -> {edge_end(item.receiver)}"
    if isinstance(item, A.EdgeGroup):
        return "all(" + ", ".join(site_item(m) for m in item.members) + ")" + _at(item.pos)
    if isinstance(item, A.Group):
        return "all(" + ", ".join(site(m) for m in item.members) + ")" + _at(item.pos)
    return site(item)


def sites(items: tuple[A.SiteItem, ...]) -> str:
    return ", ".join(site_item(i) for i in items)


# ---------------------------------------------------------------------------------------------
# Expressions. Parentheses only where precedence or left-associativity needs them.

_MPREC = {"+": 1, "-": 1, "*": 2, "/": 2, **{c: 0 for c in A.COMPARISONS}}


def _mprec(e: A.MExpr) -> int:
    return _MPREC[e.op] if isinstance(e, A.MBin) else 3


def mexpr(e: A.MExpr) -> str:
    if isinstance(e, A.MBin):
        p = _MPREC[e.op]
        left, right = mexpr(e.left), mexpr(e.right)
        if _mprec(e.left) < p:
            left = f"({left})"
        if p == 0 and _mprec(e.left) == 0:  # comparisons do not chain
            left = f"({left})"
        if _mprec(e.right) <= p:  # same level on the right: `a - (b - c)`
            right = f"({right})"
        return f"{left} {e.op} {right}"
    if isinstance(e, A.MNeg):
        inner = mexpr(e.operand)
        return f"-({inner})" if isinstance(e.operand, A.MBin) else f"-{inner}"
    if isinstance(e, A.MNum):
        return num(e.value)
    if isinstance(e, A.MRef):
        return e.name
    if isinstance(e, A.MCall):
        return f"{e.fn}({tok(e.tok)})"
    if isinstance(e, A.MKL):
        return f"kl({e.run})"
    if isinstance(e, A.MLoss):
        return "loss"
    if isinstance(e, A.MText):
        return f"text({e.n})"
    if isinstance(e, A.MSeqLogProb):
        return f"seqlogprob({tok(e.tok)})"
    assert isinstance(e, A.MGenerate)
    return f"generate({e.n}) contains {column(e.answer)}"


def tok(t: A.Tok) -> str:
    if isinstance(t, A.TokString):
        return string(t.text)
    if isinstance(t, A.TokId):
        return f"id({t.token_id})"
    return column(t)


def scalar(s: A.ScalarLike) -> str:
    if isinstance(s, A.ScalarSweep):
        return "{" + ", ".join(num(v) for v in s.values) + "}"
    return num(s.value)


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
        return f"load({string(e.path)}, key={string(e.key)})"
    if isinstance(e, A.VMean):
        return f"mean({site(e.of.site, prefix=e.of.run + '.')})"
    if isinstance(e, A.VSae):
        return f"sae({string(e.path)}, feature={e.feature})"
    assert isinstance(e, A.VNormalize)
    return f"normalize({vexpr(e.arg)})"


def _vfactor(e: A.VExpr) -> str:
    return f"({vexpr(e)})" if isinstance(e, (A.VBin, A.VScale)) else vexpr(e)


def measure(m: A.Measure) -> str:
    out = (f"{m.name.value} = " if m.name is not None else "") + mexpr(m.expr)
    if m.normalized:
        out += " normalized"
        if m.between is not None:
            out += f" between {m.between[0].value} and {m.between[1].value}"
    return out


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
        return "[" + ", ".join(string(s) for s in t.texts) + "]"
    return string(t.texts[0])


def _declaration(s: A.Statement) -> str:
    if isinstance(s, A.ModelDecl):
        rev = f" revision {string(s.revision)}" if s.revision is not None else ""
        return f"model {string(s.model_id)}{rev}"
    if isinstance(s, A.SetDecl):
        return f"set {s.name.value} = {_value(s.value)}"
    if isinstance(s, A.DataDecl):
        if s.rows is None:
            return f"data {s.name.value} = {string(s.path or '')}"
        if not s.rows:
            return f"data {s.name.value} = []"
        rows = ",\n".join(INDENT + json_value(r) for r in s.rows)
        return f"data {s.name.value} = [\n{rows}\n]"
    if isinstance(s, A.RunDecl):
        out = f"run {s.name.value} = {_text(s.text)}"
        if s.interventions:
            out += " with " + ", ".join(intervention(i) for i in s.interventions)
        return out
    if isinstance(s, A.MetricDecl):
        return f"metric {s.name.value} = {mexpr(s.expr)}{_at(s.pos)}"
    if isinstance(s, A.DictDecl):
        at = f" at {site(s.site)}" if s.site is not None else ""
        return f"{s.kind} {s.name.value} = {string(s.path)}{at}"
    if isinstance(s, A.CircuitDecl):
        sizes = ", ".join(circuit_size(k) for k in s.sizes)
        sizes = "{" + sizes + "}" if s.is_list else sizes
        return f"circuit {s.name.value} = top {sizes} of {s.table.value}"
    assert isinstance(s, A.VectorDecl)
    return f"vector {s.name.value} = {vexpr(s.expr)}"


def circuit_size(k: A.CircuitSize) -> str:
    """`20` or `5%`."""
    return f"{num(k.value)}%" if k.percent else str(int(k.value))


def _backpatch_sites(op: A.Backpatch) -> str:
    """`SRC -> DST @ POS` when both sides share a position (the parser copies a trailing one
    onto SRC), else each side with its own."""
    # Positions print one way each, so equal text is equal positions (spans aside).
    if op.src.pos is not None and op.dst.pos is not None and pos(op.src.pos) == pos(op.dst.pos):
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
    if isinstance(op, A.ReadSites):
        return f"read {sites(op.sites)} in {op.target.value}"
    if isinstance(op, A.Lens):
        return f"lens {sites(op.sites)} in {op.target.value}"
    if isinstance(op, A.MeasureRun):
        return ("measure " + ", ".join(measure(m) for m in op.clauses.measures)
                + f" in {op.target.value}")
    if isinstance(op, A.Evaluate):
        return (f"evaluate {op.circuit.value} in {op.target.value} with "
                f"{op.how.kind}({op.how.run})")
    assert isinstance(op, A.Dla)
    return f"dla {sites(op.sites)} in {op.target.value}"


def _clauses(c: A.Clauses, measures: bool = True) -> list[str]:
    out = []
    if c.where:
        conds = " and ".join(
            f"${w.left} {w.op} {'$' + w.right if isinstance(w.right, str) else w.right}"
            for w in c.where)
        out.append(f"where {conds}")
    if c.measures and measures:
        out.append("measure " + ", ".join(measure(m) for m in c.measures))
    if c.name is not None:
        out.append(f"as {c.name.value}")
    return [INDENT + line for line in out]


def statement(s: A.Statement) -> str:
    """One statement; an operation's clauses follow on indented lines, and a line longer
    than wrap.WIDTH columns continues on more indented lines (wrap.py)."""
    if isinstance(s, A.OPERATIONS):
        own = not isinstance(s, A.MeasureRun)  # its measures are in its head
        return wrap("\n".join([_operation_head(s), *_clauses(s.clauses, own)]))
    return wrap(_declaration(s))


def blank_before(prev: A.Statement | None, s: A.Statement) -> bool:
    """The layout rule: a blank line before each operation and between groups of
    declarations of one kind (fmt.py follows it too, so both agree)."""
    return prev is not None and (isinstance(s, A.OPERATIONS) or type(s) is not type(prev))


def format_spec(spec: A.Spec) -> str:
    """Canonical source for a spec, without its comments (fmt.format_source keeps them)."""
    chunks: list[str] = []
    prev: A.Statement | None = None
    for s in spec.statements:
        if blank_before(prev, s):
            chunks.append("")
        chunks.append(statement(s))
        prev = s
    return "\n".join(chunks) + "\n" if chunks else ""
