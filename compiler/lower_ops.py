"""Per-operation lowering (see lower.py for the overall shape of the unoptimized IR).

Each `_op_*` function adds one operation's nodes and its Table; `baked_writes` lowers the
interventions of a `run ... with ...`; `rows_of` counts an operation's rows from its sweeps
alone, and must agree with what the `_op_*` functions build (tests check it does).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from . import ast as A
from . import printer
from .dictionaries import decoded_site, kind_text
from .errors import PlanError
from .ir import ALL_POSITIONS, Estimate, Pair, Row, Site
from .lowerer import Exp, Key, Lowerer, Target, check_where, keep
from .edges import has_edges
from .lower_compare import compare_form, compare_rows, lower_compare
from .lower_edges import edge_rows, lower_edge_op
from .lower_estimates import estimate_form, estimate_rows, lower_estimates
from .lower_exprs import split_sweep
from .lower_latents import source_read, sparse_of
from .lower_observe import op_lens, op_measure, op_read
from .lower_sweep import compact_form, compact_rows, lower_compact
from .modelspec import ModelSpec

DEFAULT_IG_STEPS = 32

# ---------------------------------------------------------------------------------------------
# Interventions baked into a run


def norm_sites(model: ModelSpec) -> list[Site]:
    """Every normalizer-scale site: what `freeze ln from A` freezes."""
    # GPT-J, Phi, Cohere run attention and MLP off one shared normalizer per block: no ln2;
    # post-norm-only blocks (OLMo 2) have neither.
    kinds = tuple(k for k in ("ln1.scale", "ln2.scale") if model.missing(k) is None)
    return [Site(k, layer) for layer in range(model.n_layers) for k in kinds] + \
        [Site("ln_final.scale")]


def _ablation(lw: Lowerer, t: Target, how: A.Ablation) -> str:
    if how.kind == "zero":
        return lw.write(t, "zero")
    assert how.run is not None
    r = source_read(lw, lw.base(how.run), t)
    if how.kind == "mean":
        return lw.write(t, "mean", (r,))
    return lw.write(t, "resample", (r,), seed=lw.options.seed)


def _noise(lw: Lowerer, run: str, iv: A.INoise) -> tuple[list[str], int]:
    kw = {k.name: k.value for k in iv.kwargs}
    std = kw.get("std", 1.0)
    seed = int(kw.get("seed", lw.options.seed))  # type: ignore[arg-type]
    operands: tuple[str, ...] = ()
    if isinstance(std, A.StdOf):
        # std(SITE) is measured on the run without interventions: the clean activations.
        (site,) = _one_site(lw, std.site, run)
        pos = lw.positions(std.site.pos, run)[0][0]
        operands = (lw.read(lw.bare(run), site, pos, stat="std"),)
        scale = std.factor
    else:
        scale = float(std)  # type: ignore[arg-type]
    writes = [lw.write(t, "noise", operands, scale, seed) for t in lw.joint((iv.site,), run)]
    return writes, int(kw.get("samples", 1))  # type: ignore[arg-type]


def _one_site(lw: Lowerer, ref: A.SiteRef, run: str) -> tuple[Site]:
    targets = lw.joint((ref,), run)
    if len(targets) != 1:
        raise PlanError("E517", "std(...) needs one site, not a pattern", ref.span)
    return (targets[0].site,)


def baked_writes(lw: Lowerer, decl: A.RunDecl) -> tuple[tuple[str, ...], int]:
    """The Writes of a run's `with ...` interventions, in order, and its sample count."""
    run = decl.name.value
    writes: list[str] = []
    samples = 1
    for iv in decl.interventions:
        if isinstance(iv, A.INoise):
            ws, samples = _noise(lw, run, iv)
            writes += ws
        elif isinstance(iv, A.IAblate):
            writes += [_ablation(lw, t, iv.how) for t in lw.joint(iv.sites, run)]
        elif isinstance(iv, A.ISteer):
            variants = split_sweep(iv.by)
            if len(variants) > 1:
                raise PlanError("E515", "a run cannot sweep: steer it by one vector", iv.span)
            _, scale, vec = variants[0]
            writes += [lw.write(t, "add", (lw.vector(vec, lw.site_dim(t.site)),), scale)
                       for t in lw.joint(iv.sites, run)]
        elif isinstance(iv, A.IScale):
            writes += [lw.write(t, "mul", (), iv.by.value) for t in lw.joint(iv.sites, run)]
        elif isinstance(iv, A.ISwap):
            src = lw.base(iv.source)
            writes += [lw.write(t, "replace", (lw.read(src, t.site, t.pos),))
                       for t in lw.joint(iv.sites, run)]
        else:
            src = lw.base(iv.source)
            writes += [lw.write(Target(s, ALL_POSITIONS), "freeze_ln",
                                (lw.read(src, s, ALL_POSITIONS),))
                       for s in norm_sites(lw.model)]
    return tuple(writes), samples


# ---------------------------------------------------------------------------------------------
# Sweeps shared by lowering and counting


def _exps(lw: Lowerer, op: Any, run: str, bake: bool = True) -> list[Exp]:
    if bake:  # the run's own writes first, so that ids read in application order
        lw.bake(run)
    return lw.where(op.clauses.where, lw.expand(op.sites, run))


def _scalars(by: A.ScalarLike) -> list[tuple[float | None, float]]:
    if isinstance(by, A.ScalarSweep):
        return [(v, v) for v in by.values]
    return [(None, by.value)]


def _with_scale(key: Key, value: float | None) -> Key:
    return key + ((("scale", value),) if value is not None else ())


def _backpatch_pairs(lw: Lowerer, op: A.Backpatch,
                     bake: bool = True) -> list[tuple[Key, Exp, Exp]]:
    """SRC x DST matches, joined on the columns both bind (a shared `$l` or `pos` must
    agree), then filtered by `where`."""
    run = op.target.value
    if bake:
        lw.bake(run)
    # Both sides at the same positions: the parser copies DST's `@` to SRC; this is the
    # other direction (`SRC @ last -> DST`).
    dst = op.dst if op.dst.pos is not None else dataclasses.replace(op.dst, pos=op.src.pos)
    joined = []
    for s in lw.expand((op.src,), run):
        for d in lw.expand((dst,), run):
            sk = dict(s.key)
            if any(sk.get(c, v) != v for c, v in d.key):
                continue
            joined.append((s.key + tuple((c, v) for c, v in d.key if c not in sk), s, d))
    check_where(op.clauses.where, [key for key, _, _ in joined])
    return [(key, s, d) for key, s, d in joined if keep(op.clauses.where, key)]


def _site_kind(e: Exp) -> str:
    return "+".join(dict.fromkeys(kind_text(t.site.kind) for t in e.targets))


def _compare_key(e: Exp, method: A.Method, col: str, multi: bool) -> Key:
    key: Key = (("site_kind", _site_kind(e)), ("method", printer.method(method)))
    return key + ((("metric", col),) if multi else ())


def rows_of(lw: Lowerer, op: A.Operation) -> int:
    """How many rows `op`'s table has, without building nodes."""
    if isinstance(op, A.MeasureRun):
        return 1
    if has_edges(getattr(op, "sites", ())):
        return edge_rows(lw, op)
    if isinstance(op, A.Backpatch):
        return len(_backpatch_pairs(lw, op, bake=False))
    if lw.compact and compact_form(lw, op):
        return compact_rows(lw, op)
    if lw.compact and estimate_form(lw, op):
        return estimate_rows(lw, op)
    if lw.compact and compare_form(lw, op):
        return compare_rows(lw, op)
    exps = _exps(lw, op, op.target.value, bake=False)
    if isinstance(op, A.Steer):
        return len(exps) * len(split_sweep(op.by))
    if isinstance(op, A.Scale):
        return len(exps) * len(_scalars(op.by))
    if isinstance(op, A.Compare):
        cols = [c for c, _ in lw.measures(op)]
        return len({_compare_key(e, m, c, len(cols) > 1)
                    for e in exps for m in op.methods for c in cols})
    return len(exps)


# ---------------------------------------------------------------------------------------------
# Operations


def _op_swap(lw: Lowerer, op: A.Swap | A.Trace) -> None:
    source, target = op.source.value, op.target.value
    src = lw.base(source)
    rows = []
    for e in _exps(lw, op, target):
        ws = [lw.write(t, "replace", (source_read(lw, src, t),)) for t in e.targets]
        sparse = sparse_of(lw, target, source, e.targets, "replace")
        rows.append(lw.row(e.key, lw.forward(target, ws, sparse), op, target, source))
    lw.table(op, rows)


def _op_ablate(lw: Lowerer, op: A.Ablate) -> None:
    target = op.target.value
    source = op.how.run if op.how.kind != "zero" else None
    rows = []
    for e in _exps(lw, op, target):
        ws = [_ablation(lw, t, op.how) for t in e.targets]
        sparse = sparse_of(lw, target, source, e.targets, op.how.kind)
        rows.append(lw.row(e.key, lw.forward(target, ws, sparse), op, target, source))
    lw.table(op, rows)


def _op_steer(lw: Lowerer, op: A.Steer) -> None:
    target = op.target.value
    rows = []
    for e in _exps(lw, op, target):
        for value, scale, vec in split_sweep(op.by):
            ws = [lw.write(t, "add", (lw.vector(vec, lw.site_dim(t.site)),), scale)
                  for t in e.targets]
            rows.append(lw.row(_with_scale(e.key, value), lw.forward(target, ws), op, target,
                               None))
    lw.table(op, rows)


def _op_scale(lw: Lowerer, op: A.Scale) -> None:
    target = op.target.value
    rows = []
    for e in _exps(lw, op, target):
        for value, scale in _scalars(op.by):
            ws = [lw.write(t, "mul", (), scale) for t in e.targets]
            sparse = sparse_of(lw, target, None, e.targets, "mul", scale)
            rows.append(lw.row(_with_scale(e.key, value), lw.forward(target, ws, sparse), op,
                               target, None))
    lw.table(op, rows)


def _op_backpatch(lw: Lowerer, op: A.Backpatch) -> None:
    target = op.target.value
    source = op.source.value if op.source else target
    src = lw.base(source)
    rows = []
    for key, s, d in _backpatch_pairs(lw, op):
        if len(s.targets) != len(d.targets):
            raise PlanError("E520", "backpatch needs as many source sites as destination "
                            "sites", op.span)
        ws = [lw.write(dt, "replace", (lw.read(src, st.site, st.pos),))
              for st, dt in zip(s.targets, d.targets)]
        # Without `from A` the source is B itself: normalized then means m / m_B.
        rows.append(lw.row(key, lw.forward(target, ws), op, target,
                           source if source != target else None))
    lw.table(op, rows)


def _method(m: A.Method) -> tuple[str, str, int]:
    """(Estimate method, Backward rules, ig steps) of an estimator."""
    kw = {k.name: k.value for k in m.kwargs}
    if m.name == "atp":
        return "atp", "grad", 0
    if m.name == "relp":
        return "relp", "lrp_ah" if kw.get("ah") is True else "lrp", 0
    if m.name == "ig":
        return "ig", "grad", int(kw.get("steps", DEFAULT_IG_STEPS))  # type: ignore[arg-type]
    raise PlanError("E521", f"unknown attribution method {m.name} (atp, relp, ig)", m.span)


def _estimates(lw: Lowerer, op: A.Attribute | A.Compare, exps: list[Exp],
               methods: tuple[A.Method, ...]) -> dict[tuple[int, int, str], str]:
    """The attribution sub-graph: Reads of every site on A's and B's base Forwards, a Metric
    on B's per measure, one Backward per (metric, rules), one Estimate per (experiment,
    method, measure). Returns the Estimate ids by (experiment index, method index, column)."""
    source, target = op.source.value, op.target.value
    fa, fb = lw.base(source), lw.base(target)
    reads = [[(lw.read(fa, t.site, t.pos), lw.read(fb, t.site, t.pos)) for t in e.targets]
             for e in exps]
    wrt = tuple(dict.fromkeys(rb for pairs in reads for _, rb in pairs))
    out: dict[tuple[int, int, str], str] = {}
    for col, m in lw.measures(op):
        metric = lw.metric(fb, target, m.expr)
        for k, method in enumerate(methods):
            name, rules, steps = _method(method)
            back = lw.backward(metric, wrt, rules)
            for i, e in enumerate(exps):
                inputs = tuple(r for pair in reads[i] for r in pair) + (back,)
                t0 = e.targets[0]
                out[i, k, col] = lw.ir.add(Estimate(name, t0.site, t0.pos, inputs, steps),
                                           inputs)
    return out


def _op_attribute(lw: Lowerer, op: A.Attribute) -> None:
    source, target = op.source.value, op.target.value
    exps = _exps(lw, op, target)
    est = _estimates(lw, op, exps, (op.method,))
    rows = []
    for i, e in enumerate(exps):
        values = tuple((col, est[i, 0, col]) for col, _ in lw.measures(op))
        norm = tuple((col, lw.norm_refs(m, target, source))
                     for col, m in lw.measures(op) if m.normalized)
        rows.append(Row(e.key, values, norm))
    lw.table(op, rows)


def _op_compare(lw: Lowerer, op: A.Compare) -> None:
    source, target = op.source.value, op.target.value
    exps = _exps(lw, op, target)
    est = _estimates(lw, op, exps, op.methods)
    src = lw.base(source)
    measures = lw.measures(op)
    pairs, rows = [], {}
    for i, e in enumerate(exps):
        ws = [lw.write(t, "replace", (source_read(lw, src, t),)) for t in e.targets]
        f = lw.forward(target, ws, sparse_of(lw, target, source, e.targets, "replace"))
        for col, m in measures:
            exact = lw.metric(f, target, m.expr)
            norm = lw.norm_refs(m, target, source) if m.normalized else None
            for k, method in enumerate(op.methods):
                key = _compare_key(e, method, col, len(measures) > 1)
                rows.setdefault(key, Row(key, ()))
                pairs.append(Pair(key, est[i, k, col], exact, norm))
    multi = ("metric",) if len(measures) > 1 else ()
    columns = ("site_kind", "method") + multi + ("pearson", "spearman")
    lw.table(op, list(rows.values()), columns, pairs=tuple(pairs))


def _op_dla(lw: Lowerer, op: A.Dla) -> None:
    target = op.target.value
    fb = lw.base(target)
    rows = []
    for e in _exps(lw, op, target):
        # A latent's contribution is linear in its scaled latents (dictionaries.decoded_site).
        site_reads = tuple(lw.read(fb, decoded_site(t.site), t.pos) for t in e.targets)
        scale = lw.read(fb, Site("ln_final.scale"), ALL_POSITIONS)
        values, norm = [], []
        for col, m in lw.measures(op):
            metric = lw.metric(fb, target, m.expr)
            inputs = site_reads + (scale, metric)
            t0 = e.targets[0]
            values.append((col, lw.ir.add(Estimate("dla", t0.site, t0.pos, inputs), inputs)))
            if m.normalized:
                # bare: m / m_B (B's own metric); `between R1 and R2`: those runs' values
                norm.append((col, lw.norm_refs(m, target, None) if m.between else
                             (metric, None)))
        rows.append(Row(e.key, tuple(values), tuple(norm)))
    lw.table(op, rows)


def _op_read(lw: Lowerer, op: A.ReadSites) -> None:
    op_read(lw, op, _exps(lw, op, op.target.value))


def _op_lens(lw: Lowerer, op: A.Lens) -> None:
    op_lens(lw, op, _exps(lw, op, op.target.value))


def _op_measure(lw: Lowerer, op: A.MeasureRun) -> None:
    lw.bake(op.target.value)
    op_measure(lw, op)


_LOWER: dict[type, Callable[[Lowerer, Any], None]] = {
    A.Swap: _op_swap, A.Trace: _op_swap, A.Ablate: _op_ablate, A.Steer: _op_steer,
    A.Scale: _op_scale, A.Backpatch: _op_backpatch, A.Attribute: _op_attribute,
    A.Compare: _op_compare, A.Dla: _op_dla, A.ReadSites: _op_read, A.Lens: _op_lens,
    A.MeasureRun: _op_measure,
}


def lower_op(lw: Lowerer, op: A.Operation) -> None:
    if has_edges(getattr(op, "sites", ())):
        lower_edge_op(lw, op)  # compiler/lower_edges.py
        return
    if lw.compact and compact_form(lw, op):
        lower_compact(lw, op)
    elif lw.compact and estimate_form(lw, op):
        lower_estimates(lw, op, _method(op.method))  # compiler/lower_estimates.py
    elif lw.compact and compare_form(lw, op):
        lower_compare(lw, op, [_method(m) for m in op.methods])  # compiler/lower_compare.py
    else:
        _LOWER[type(op)](lw, op)
