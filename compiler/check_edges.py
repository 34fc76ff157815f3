"""Checking statements over edges (`swap S -> R ...`, `ablate`, `attribute`): which operations
take edges, their methods, each edge item against the model (compiler/edges.py), positions,
captures and the result columns an edge sweep adds (`sender`, `receiver`, captures, `pos`).
"""

from __future__ import annotations

from . import ast as A
from .check_context import Context, did_you_mean
from .check_sites import check_pos
from .checked import RunInfo
from .edges import check_edge_item, end_captures
from .errors import Span
from .limits import MAX_IG_STEPS

# Estimators of edges: method -> {argument: the value it takes}.
EDGE_METHODS: dict[str, dict[str, str]] = {"eap": {}, "eap_ig": {"steps": "int>=1"},
                                           "relp": {"ah": "bool"}}


def check_edge_sites(ctx: Context, op: A.Operation, target: RunInfo | None
                     ) -> tuple[list, set[str], list[tuple[str, Span]]]:
    """(resolved items, captures bound, sweep columns) of an operation over edges."""
    kw = A.op_keyword(op)
    items = op.sites  # type: ignore[attr-defined]
    if not isinstance(op, (A.Swap, A.Ablate, A.Attribute)):
        ctx.error("E394", f"`{kw}` does not take edges", op.span,
                  hint="edges are patched by swap and ablate and estimated by attribute")
        return [], set(), []
    if isinstance(op, A.Ablate) and op.how.kind == "resample":
        ctx.error("E394", "an edge is ablated with zero or mean(RUN), not resample", op.how.span)
    plain = [i for i in items if not isinstance(i, (A.Edge, A.EdgeGroup))]
    if plain:
        ctx.error("E395", "a statement takes sites or edges, not both", plain[0].span,
                  hint="write the sites in a statement of their own")
    resolved, bound, columns = [], set(), []
    for item in items:
        if not isinstance(item, (A.Edge, A.EdgeGroup)):
            continue
        pos = item.pos
        if pos is not None:
            check_pos(ctx, pos, target)
        caps = end_captures(item)
        bound |= {c.name for c in caps}
        if ctx.model is not None:
            with ctx.catch():  # (lowering expands the item: only its errors are wanted here)
                check_edge_item(item, ctx.model)
                resolved.append((item, None))
        if isinstance(item, A.Edge):
            names = ["sender", "receiver"] + [c.name for c in caps]
            for c in caps:
                if c.name in ("sender", "receiver"):
                    ctx.error("E327", f"the capture ${c.name} names a column an edge table "
                              "already has", c.span, hint="rename the capture")
            columns += [(n, item.span) for n in dict.fromkeys(names)]
        if isinstance(pos, A.PosEach):
            columns.append(("pos", pos.span))
    if len(items) > 1:
        columns.append(("site", op.span))
    return resolved, bound, columns


# Families whose blocks RelP's rules would cover wrongly, and why.
_RELP_MISFITS = {
    "bitnet": "a norm sits between its MLP's gated product and the down projection, where "
              "RelP's half-rule replaces the product",
}


def relp_fits(ctx: Context, method: A.Method) -> None:
    """RelP's rules replace the MLP activation's backward: a mixture of experts has none to
    replace, and a few blocks put something where a rule goes (E357); the AH-rule detaches
    attention patterns, which some families do not expose."""
    model = ctx.model
    if method.name != "relp" or model is None:
        return
    hint = "use atp or ig (eap or eap_ig for edges), which take plain gradients"
    if model.n_experts:
        ctx.error("E357", f"relp on {model.family}: its MLP is a mixture of experts, "
                  "whose activations RelP's rules do not cover", method.span, hint=hint)
    elif model.family in _RELP_MISFITS:
        ctx.error("E357", f"relp on {model.family}: {_RELP_MISFITS[model.family]}",
                  method.span, hint=hint)
    if _ah(method) and (model.missing("attn.pattern") or not model.exposes_pattern):
        why = model.missing("attn.pattern") or "the config forces a fused attention kernel"
        ctx.error("E357", f"relp(ah=true) detaches attention patterns, and {model.family} has "
                  f"none to detach: {why}", method.span,
                  hint="use relp (the gradient through the softmax)")


def _ah(method: A.Method) -> bool:
    """`relp(ah=true)`: the AH-rule, which detaches the attention patterns."""
    return method.name == "relp" and any(k.name == "ah" and k.value is True
                                         for k in method.kwargs)


_QK = ("q", "k", "attn.q", "attn.k")


def warn_detached_qk(ctx: Context, op: A.Operation, method: A.Method) -> None:
    """W306: under relp(ah=true) the pattern is detached, so q and k get no relevance: their
    rows (and edges into them, a `* -> *` receiver's among them) estimate exactly the target's
    unpatched metric, and a circuit ranks them as ties at zero effect."""
    if not _ah(method):
        return
    for item in op.sites:  # type: ignore[attr-defined]
        edges = item.members if isinstance(item, A.EdgeGroup) else [item]
        for e in edges:
            end = e.receiver if isinstance(e, A.Edge) else e
            if isinstance(end, A.Every) or (isinstance(end, A.SiteRef) and end.kind in _QK):
                what = "its edges into q and k" if isinstance(e, A.Edge) else \
                    f"the rows of {end.text}"
                ctx.warn("W306", f"relp(ah=true) detaches attention patterns, so no relevance "
                         f"reaches q or k: {what} estimate exactly the unpatched metric "
                         "(zero effect)", item.span,
                         hint="use relp (without ah) or eap/atp for q and k")
                return


def check_edge_method(ctx: Context, method: A.Method) -> None:
    """An edge estimator: eap, eap_ig(steps=INT), relp, relp(ah=BOOL)."""
    relp_fits(ctx, method)
    spec = EDGE_METHODS.get(method.name)
    if spec is None:
        hint = did_you_mean(method.name, EDGE_METHODS) or \
            f"edge methods are {', '.join(EDGE_METHODS)}"
        ctx.error("E396", f"unknown edge method `{method.name}`", method.span, hint=hint)
        return
    for kw in method.kwargs:
        if kw.name not in spec:
            takes = ", ".join(spec) or "no arguments"
            ctx.error("E335", f"method `{method.name}` has no argument `{kw.name}`", kw.span,
                      hint=f"{method.name} takes {takes}")
            continue
        v = kw.value
        if spec[kw.name] == "bool":
            if not isinstance(v, bool):
                ctx.error("E335", f"{method.name}({kw.name}=...) must be true or false; got "
                          f"{str(v)[:40]}", kw.span)
        elif isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_IG_STEPS:
            ctx.error("E335", f"{method.name}({kw.name}=...) must be an integer from 1 to "
                      f"{MAX_IG_STEPS}; got {str(v)[:40]}", kw.span)
