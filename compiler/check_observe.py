"""The statements that look at a run without changing it (the language's §11): `read`,
`lens` and `measure ... in RUN`. Their sites, positions and measures are checked with the
same helpers as the operations' (check_sites.py, check_metrics.py); what is particular to
them is here.
"""

from __future__ import annotations

from . import ast as A
from .check_context import Context
from .check_metrics import check_measures, inlined, name_column_hint
from .check_sites import (
    captures,
    check_items,
    check_residual_latents,
    check_where,
    sweep_columns,
)
from .dictionaries import is_dict_kind, split_kind
from .errors import Span

# Sites whose value lives in the residual stream's space: what a logit lens can decode.
LENS_KINDS = ("embed", "resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "out",
              "expert.out", "shared.out")  # (an expert's contribution, as an MLP's)
# Positions a lens decodes: one per example and row (`@ each` sweeps them).
_ONE = (A.PosLast, A.PosIndex, A.PosEach, A.ColumnRef)


def _keyword_span(op: A.Operation, kw: str) -> Span:
    return Span(op.span.line, op.span.col, op.span.line, op.span.col + len(kw))


def check_observation(ctx: Context, op: A.ReadSites | A.Lens | A.MeasureRun) -> None:
    kw = A.op_keyword(op)
    run = ctx.run(op.target.value, op.target.span)
    if isinstance(op, A.MeasureRun):
        if op.clauses.where:
            ctx.error("E369", "`measure ... in RUN` has no sites: nothing for `where` to "
                      "filter", op.clauses.where[0].span)
    else:
        resolved = check_items(ctx, op.sites, run, writes=False)
        bound: set[str] = set()
        for item in op.sites:
            if isinstance(item, A.Group):
                ctx.error("E363", f"`{kw}` takes sites, not a group: each site is read on "
                          "its own", item.span, hint="list the sites: `read L0.mlp.out, "
                          "L1.mlp.out in clean`")
                continue
            bound |= {c.name for c in captures(item)}
            sweep_columns(ctx, item)
            if item.subspace:
                ctx.error("E363", f"`{kw}` reads whole sites, not a subspace", item.span)
        check_where(ctx, op.clauses.where, bound)
        for item, matches in resolved:
            _check_sites(ctx, op, item, matches)
    if isinstance(op, A.ReadSites):
        if op.clauses.measures:
            ctx.error("E360", "`read` caches values and measures nothing",
                      op.clauses.measures[0].span,
                      hint="use `lens` or `measure ... in RUN` to evaluate metrics")
        return
    if not op.clauses.measures:
        ctx.error("E337", f"`{kw}` measures nothing", _keyword_span(op, kw),
                  hint="add `measure METRIC`")
    for m in op.clauses.measures:
        if m.normalized and m.between is None:
            ctx.error("E364", f"`{kw}` runs no intervention: bare `normalized` has nothing to "
                      "map to 0 and 1", m.span,
                      hint="say which runs: `normalized between corrupt and clean`")
        if isinstance(op, A.Lens):
            bad = [n for n in inlined(ctx, m.expr)
                   if isinstance(n, (A.MLoss, A.MText, A.MGenerate, A.MSeqLogProb))]
            if bad:
                ctx.error("E362", "a lens decodes one position's logits: it cannot measure "
                          "loss, text, generate or seqlogprob", m.span)
    _columns(ctx, op)
    check_measures(ctx, op.clauses.measures, run)


def _check_sites(ctx: Context, op: A.Operation, item: A.SiteItem, matches) -> None:
    if not isinstance(item, A.SiteRef):
        return  # a group: reported (E363) above
    if item.kind == "attn.pattern":
        layer = str(item.layer.value) if isinstance(item.layer, A.Idx) else "*"
        ctx.error("E363", f"read each head's pattern (`L{layer}.H*.pattern`), not "
                  f"`{item.text}`", item.span,
                  hint=f"read L{layer}.H*.pattern in RUN (one [query, key] pattern per head)")
    if not isinstance(op, A.Lens):
        return
    latents = [s for m in matches for s in m.sites if is_dict_kind(s.kind)]
    if latents:  # a latent's (or slice's) decoded contribution; the error term as a site
        for site in latents[:1]:
            check_residual_latents(ctx, site, item.span, "a lens")
        if split_kind(latents[0].kind)[1] and item.features is not None:
            ctx.error("E361", f"a lens decodes a whole error term, not a slice of it; "
                      f"{item.text}[...] is one", item.span)
    elif item.kind not in LENS_KINDS or item.features is not None:
        ctx.error("E361", f"a lens decodes residual-stream-shaped sites; {item.text}"
                  f"{'[...]' if item.features is not None else ''} is not one", item.span,
                  hint="use embed, resid_pre, resid_mid, resid_post, attn.out, mlp.out or "
                  "Ll.Hh.out")
    if item.pos is not None and not isinstance(item.pos, _ONE):
        ctx.error("E362", "a lens decodes one position per row: `@ last`, `@ 3`, "
                  "`@ DATA.column` or `@ each`", item.pos.span)


def _columns(ctx: Context, op: A.Lens | A.MeasureRun) -> None:
    """Measured columns have distinct names (E327)."""
    from . import printer

    seen: set[str] = set()
    for m in op.clauses.measures:
        name = m.name.value if m.name is not None else (
            m.expr.name if isinstance(m.expr, A.MRef) else printer.mexpr(m.expr))
        if name in seen:
            ctx.error("E327", f"the result column `{name}` is measured twice", m.span,
                      hint=name_column_hint(m, seen))
        seen.add(name)
