"""Operations (docs/language.md §8): the runs they read and write, their sites, methods,
`where` conditions, result columns, and what they measure.
"""

from __future__ import annotations

from . import ast as A
from . import printer
from .check_context import Context, did_you_mean
from .check_edges import check_edge_method, check_edge_sites, relp_fits, warn_detached_qk
from .check_fill import check_fill_source
from .check_metrics import check_measures, name_column_hint
from .linear import NonLinear, linear_terms, nonlinear_message
from .check_runs import check_vector_fits, no_subspace, require_aligned
from .check_sites import (
    captures,
    check_dla,
    check_items,
    check_where,
    site_width,
    sweep_columns,
    warn_shared_kv,
)
from .check_vectors import VectorChecker, sweeps
from .checked import RunInfo
from .edges import has_edges
from .errors import Span
from .limits import MAX_IG_STEPS

# Estimators of `attribute`/`compare`: method -> {argument: the value it takes}.
# (`ig` interpolates in 32 steps unless `steps` says otherwise; lower.py applies defaults.)
METHODS: dict[str, dict[str, str]] = {
    "atp": {},
    "relp": {"ah": "bool"},  # ah: detach the softmax (the AH rule)
    "ig": {"steps": "int>=1"},  # interpolation steps along a_B -> a_A
}

# Operations that write activations (the GQA shared-kv warning applies to them).
_WRITES = (A.Swap, A.Ablate, A.Backpatch, A.Steer, A.Scale, A.Trace, A.Compare)

Resolved = list  # [(site item, [Match])] from check_sites.check_items


def check_operation(ctx: Context, op: A.Operation, vectors: VectorChecker) -> None:
    edges = has_edges(getattr(op, "sites", ()))
    if edges and isinstance(op, A.OBSERVATIONS):
        ctx.error("E394", f"`{A.op_keyword(op)}` does not take edges", op.span,
                  hint="edges are patched by swap and ablate and estimated by attribute")
        return
    if isinstance(op, A.OBSERVATIONS):
        from .check_observe import check_observation

        check_observation(ctx, op)
        return
    kw = A.op_keyword(op)
    target = ctx.run(op.target.value, op.target.span)
    source_name: A.Name | None = getattr(op, "source", None)
    source = ctx.run(source_name.value, source_name.span) if source_name else None
    if source is not None and target is not None and source_name is not None:
        require_aligned(ctx, source, target, source_name.span, f"`{kw}` copies activations "
                        f"from `{source.name}` into `{target.name}`")
    if edges:
        resolved, bound, columns = check_edge_sites(ctx, op, target)
    else:
        resolved, bound, columns = _sites(ctx, op, target)
        columns += _by(ctx, op, resolved, vectors)
    if isinstance(op, A.Ablate) and op.how.run is not None:
        check_fill_source(ctx, op.how, ctx.runs.get(op.how.run), target, op.sites)
    if isinstance(op, A.Attribute):
        (check_edge_method if edges else check_method)(ctx, op.method)
        warn_detached_qk(ctx, op, op.method)
    elif isinstance(op, A.Compare):
        _check_methods(ctx, op)
        for m in op.methods:
            warn_detached_qk(ctx, op, m)
    check_where(ctx, op.clauses.where, bound)
    check_columns(ctx, columns, op.clauses.measures)
    if not op.clauses.measures:
        ctx.error("E337", f"`{kw}` measures nothing", Span(op.span.line, op.span.col,
                  op.span.line, op.span.col + len(kw)), hint="add `measure METRIC`, e.g. "
                  "`measure ld normalized`")
    check_measures(ctx, op.clauses.measures, target)
    if isinstance(op, (A.Attribute, A.Compare, A.Dla)):
        _scalar_measures(ctx, op)
    if isinstance(op, A.Dla):
        _linear_measures(ctx, op.clauses.measures)


def _scalar_measures(ctx: Context, op: A.Attribute | A.Compare | A.Dla) -> None:
    """Estimators differentiate (or split) the metric on the run's own logits: no
    continuation past the prompt (text, seqlogprob, generate)."""
    from .check_metrics import inlined

    for m in op.clauses.measures:
        if any(isinstance(n, (A.MText, A.MSeqLogProb)) for n in inlined(ctx, m.expr)):
            ctx.error("E366", f"`{A.op_keyword(op)}` estimates a metric of the prompt's "
                      "logits; text(N) and seqlogprob(...) run past the prompt", m.span)


def _linear_measures(ctx: Context, measures: tuple[A.Measure, ...]) -> None:
    """`dla` splits only metrics linear in the logits (compiler/linear.py)."""
    for m in measures:
        try:
            linear_terms(m.expr, ctx.metrics)
        except NonLinear as e:
            ctx.error("E465", nonlinear_message(str(e)), m.span,
                      "measure logit(...) terms, e.g. logit(d.answer) - logit(d.distractor)")


def _sites(ctx: Context, op: A.Operation, target: RunInfo | None
           ) -> tuple[Resolved, set[str], list[tuple[str, Span]]]:
    """Check the op's sites; (resolved items, captures bound, sweep columns)."""
    if isinstance(op, A.Backpatch):
        resolved = check_items(ctx, (op.src, op.dst), target, writes=False)
        if len(resolved) == 2:
            _check_backpatch_sizes(ctx, op, resolved)
            warn_shared_kv(ctx, op.dst, resolved[1][1])  # only DST is written
        bound = {c.name for ref in (op.src, op.dst) for c in captures(ref)}
        # SRC x DST pairs are joined on the columns both sides bind (a shared $l or `pos`).
        cols = dict.fromkeys(sweep_columns(ctx, op.src) + sweep_columns(ctx, op.dst))
        return resolved, bound, [(c, op.span) for c in cols]
    resolved = check_items(ctx, op.sites, target, writes=isinstance(op, _WRITES))
    bound, columns = set(), []
    for item in op.sites:
        refs = [item] if isinstance(item, A.SiteRef) else list(item.members)
        bound |= {c.name for ref in refs for c in captures(ref)}
        columns += [(c, item.span) for c in sweep_columns(ctx, item)]
    if isinstance(op, A.Dla):
        for item, matches in resolved:
            check_dla(ctx, matches, item)
    if isinstance(op, (A.Steer, A.Scale)) or (isinstance(op, A.Ablate) and
                                              op.how.kind != "zero"):
        what = f"ablate with {op.how.kind}" if isinstance(op, A.Ablate) else A.op_keyword(op)
        no_subspace(ctx, op.sites, what)
    return resolved, bound, columns


def _by(ctx: Context, op: A.Operation, resolved: Resolved, vectors: VectorChecker
        ) -> list[tuple[str, Span]]:
    """What ablate/steer/scale write; the `scale` column of a scalar sweep."""
    if isinstance(op, A.Ablate) and op.how.run is not None:
        ctx.has_run(op.how.run, op.how.span)
    elif isinstance(op, A.Steer):
        dim = vectors.dim(op.by, sweeps_allowed=1)
        check_vector_fits(ctx, dim, resolved, op.by.span)
        if any(True for _ in sweeps(op.by)):
            return [("scale", op.by.span)]
    elif isinstance(op, A.Scale) and isinstance(op.by, A.ScalarSweep):
        return [("scale", op.by.span)]
    return []


def _check_methods(ctx: Context, op: A.Compare) -> None:
    if not op.methods:
        ctx.error("E338", "compare needs at least one method", op.span)
    names: set[str] = set()
    for m in op.methods:
        check_method(ctx, m)
        if m.name in names:
            ctx.error("E338", f"method `{m.name}` is listed twice", m.span)
        names.add(m.name)


def _check_backpatch_sizes(ctx: Context, op: A.Backpatch, resolved: Resolved) -> None:
    """SRC's value is written into DST: their widths must agree."""
    if ctx.model is None:
        return
    src = resolved[0][1][0].sites[0]
    dst = resolved[1][1][0].sites[0]
    a, b = site_width(ctx.model, src), site_width(ctx.model, dst)
    if a != b:
        ctx.error("E347", f"backpatch writes {src} ({a} features) into {dst} ({b} features); "
                  "their sizes differ", op.span)


def check_columns(ctx: Context, columns: list[tuple[str, Span]],
                   measures: tuple[A.Measure, ...]) -> None:
    """A result table's columns must have distinct names: sweep columns vs measured ones."""
    sweep = {c for c, _ in columns}
    measured: set[str] = set()
    for m in measures:
        if isinstance(m.expr, A.MRef) and m.expr.name in sweep:
            ctx.error("E327", f"the result column `{m.expr.name}` is both a sweep column and "
                      "a measured metric", m.span, hint="rename the capture or the metric")
        # A column is named after its metric (or the expression's text), whether or not it
        # is `normalized`: measuring one twice would give two columns of one name.
        name = m.expr.name if isinstance(m.expr, A.MRef) else printer.mexpr(m.expr)
        if m.name is not None:
            name = m.name.value
            if name in sweep:
                ctx.error("E327", f"the result column `{name}` is both a sweep column and "
                          "a measured one", m.name.span)
        if name in measured:
            ctx.error("E327", f"the result column `{name}` is measured twice", m.span,
                      hint=name_column_hint(m, measured | sweep))
        measured.add(name)


def check_method(ctx: Context, method: A.Method) -> None:
    """An estimator of `attribute`/`compare`: atp, relp(ah=BOOL), ig(steps=INT)."""
    relp_fits(ctx, method)
    spec = METHODS.get(method.name)
    if spec is None:
        hint = did_you_mean(method.name, METHODS) or f"methods are {', '.join(METHODS)}"
        ctx.error("E334", f"unknown method `{method.name}`", method.span, hint=hint)
        return
    given: set[str] = set()
    for kw in method.kwargs:
        want = spec.get(kw.name)
        if want is None:
            takes = ", ".join(spec) or "no arguments"
            ctx.error("E335", f"method `{method.name}` has no argument `{kw.name}`", kw.span,
                      hint=f"{method.name} takes {takes}")
            continue
        if kw.name in given:
            ctx.error("E335", f"argument `{kw.name}` is given twice", kw.span)
        given.add(kw.name)
        v = kw.value
        if want == "bool" and not isinstance(v, bool):
            ctx.error("E335", f"{method.name}({kw.name}=...) must be true or false; got {v!r}",
                      kw.span)
        elif want == "int>=1" and (isinstance(v, bool) or not isinstance(v, int) or
                                   not 1 <= v <= MAX_IG_STEPS):
            ctx.error("E335", f"{method.name}({kw.name}=...) must be an integer from 1 to "
                      f"{MAX_IG_STEPS}; got {str(v)[:40]}", kw.span)
