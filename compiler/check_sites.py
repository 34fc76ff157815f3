"""Sites and positions of one statement, against the model and the run they apply to.

Site patterns are expanded with resolve.py (which raises on the first problem of a pattern,
with the span of the offending index); here each site item is checked on its own so that
one bad site does not hide the next. Also: positions against the run's token counts,
captures (bound once per site, used by `where` only when bound), result columns, subspace
vectors, and the grouped-query warning for writes of a shared kv head.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from . import ast as A
from . import resolve
from .check_context import Context
from .checked import RunInfo
from .dictionaries import dict_width, is_dict_kind, kind_text, residual_refusal, split_kind
from .errors import CheckError, Span
from .ir import Positions, Site
from .modelspec import ModelSpec
from .resolve import Match
from .sites import SITE_KINDS

# Sites whose value is added to the residual stream: what direct logit attribution splits.
# Expert and shared-expert outputs are summands of mlp.out, so they reach the residual too.
DLA_KINDS = ("embed", "attn.out", "mlp.out", "out", "expert.out", "shared.out")


def site_width(model: ModelSpec, site: Site) -> int:
    """Features per token of a concrete site (a slice's width if sliced)."""
    if site.features is not None:
        return site.features[1] - site.features[0]
    if is_dict_kind(site.kind):
        return dict_width(model, site.kind)
    dim = SITE_KINDS[site.kind].dim
    return model.n_ctx if dim == "n_ctx" else model.dim_of(dim)


PATTERN_KINDS = frozenset({"pattern", "attn.pattern"})


def no_vector_on_pattern(site: Site, span: Span) -> None:
    """A pattern's features are key positions, as many as the prompt has tokens: no vector
    (steered, averaged from a run, spanning a subspace) has a fixed width there (E333)."""
    if site.kind in PATTERN_KINDS:
        raise CheckError("E333", f"{site} is an attention pattern: its width is the prompt's "
                         "length, so no vector fits it", span,
                         hint="steer, mean(...) and subspaces apply to vector sites such as "
                         "z, attn.out or resid_post; ablate, scale or swap the pattern")


def expand(ctx: Context, item: A.SiteItem) -> list[Match] | None:
    """The matches of a site item, or None (no model, or an error was reported)."""
    if ctx.model is None:
        return None
    with ctx.catch():
        return resolve.expand_item(item, ctx.model, ctx.sites)
    return None


def row_where(ctx: Context, run: RunInfo, row: int) -> str:
    table = ctx.data.get(run.data) if run.data else None
    return table.where(row) if table else f"row {row}"


def check_pos(ctx: Context, pos: A.Pos | None,
              run: RunInfo | None) -> list[tuple[Positions, int | None]] | None:
    """Check `@ POS` against the run's token counts; the concrete positions, or None when
    they cannot be known (no run, no tokenizer, or an error was reported)."""
    if pos is None:
        return [(Positions("all"), None)]
    if isinstance(pos, A.PosSet):
        _warn_repeats(ctx, pos)
    if isinstance(pos, A.ColumnRef):
        return _column_pos(ctx, pos, run)
    if isinstance(pos, A.PosSpan):
        return _span_pos(ctx, pos, run)
    lengths = run.lengths if run is not None else None
    if not lengths:
        return None  # no tokenizer (warned once) or an unresolved run (its own error)
    common = run.n_tokens if run is not None else None
    negative = (isinstance(pos, A.PosIndex) and pos.value < -1) or (
        isinstance(pos, A.PosRange) and min(pos.lo, pos.hi) < 0) or (
        isinstance(pos, A.PosSet) and min(pos.values) < 0)
    if common is None and isinstance(pos, A.PosEach):
        # Sweep the longest prompt's positions; shorter prompts sit out those they lack.
        return resolve.positions(pos, max(lengths))
    if common is None and negative:
        assert run is not None
        other = next(i for i, n in enumerate(lengths) if n != lengths[0])
        form = "a negative position"
        ctx.error("E323", f"{form} needs every example of run `{run.name}` to have the same "
                  f"token count; {row_where(ctx, run, 0)} has {lengths[0]} tokens but "
                  f"{row_where(ctx, run, other)} has {lengths[other]}", pos.span,
                  hint="use @ last, @ each, a non-negative index, or a per-example position "
                  "column")
        return None
    with ctx.catch():
        if common is not None:
            return resolve.positions(pos, common)
        return resolve.positions(pos, min(lengths), shortest=True)
    return None


def _warn_repeats(ctx: Context, pos: A.PosSet) -> None:
    """W303: a position written twice in `@ {...}` counts once; say so rather than drop it
    silently (a typo for another position is the likelier intent)."""
    counts = Counter(pos.values)
    repeats = [str(v) for v, n in counts.items() if n > 1]
    if repeats:
        def written(values) -> str:
            return "{" + ", ".join(str(v) for v in values) + "}"

        ctx.warn("W303", f"position {' and '.join(repeats)} repeated in "
                 f"{written(pos.values)}: each position counts once, so the set is "
                 f"{written(sorted(counts))}", pos.span,
                 hint="write each position once (or did you mean another position?)",
                 once=f"W303@{pos.span}")


def _column_pos(ctx: Context, pos: A.ColumnRef, run: RunInfo | None
                ) -> list[tuple[Positions, int | None]] | None:
    values = ctx.column(pos)
    if values is None:
        return None
    bad = [i for i, v in enumerate(values) if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        # (one text cell makes a CSV column text: name the cell that is not a number)
        def whole(v: object) -> bool:
            return isinstance(v, str) and v.strip().lstrip("+-").isdigit()
        i = next((i for i in bad if not whole(values[i])), bad[0])
        ctx.error("E319", f"position column `{pos.data}.{pos.column}` must hold integers; "
                  f"row {i} is {values[i]!r}", pos.span)
        return None
    if run is None:
        return None
    if len(values) != run.n_examples:
        ctx.error("E348", f"position column `{pos.data}.{pos.column}` has {len(values)} rows "
                  f"but run `{run.name}` has {run.n_examples} examples", pos.span)
        return None
    for i, (v, n) in enumerate(zip(values, run.lengths or ())):
        if not 0 <= v < n:
            ctx.error("E320", f"{row_where(ctx, run, i)}: position {pos.data}.{pos.column} = "
                      f"{v} is outside its {n} tokens (positions 0..{n - 1}) in run "
                      f"`{run.name}`", pos.span,
                      hint="positions count tokens after tokenization, BOS included")
            return None
    return [(Positions("column", column=(pos.data, pos.column)), None)]


def _span_pos(ctx: Context, pos: A.PosSpan, run: RunInfo | None
              ) -> list[tuple[Positions, int | None]] | None:
    """`@ d.a..d.b`: both ends are per-example positions of one data table, a <= b."""
    ends = [_column_pos(ctx, end, run) for end in (pos.lo, pos.hi)]
    if pos.lo.data != pos.hi.data:
        ctx.error("E368", f"a position span takes both ends from one data table; got "
                  f"`{pos.lo.data}` and `{pos.hi.data}`", pos.span)
        return None
    if any(e is None for e in ends):
        return None
    los, his = ctx.column(pos.lo) or [], ctx.column(pos.hi) or []
    for i, (lo, hi) in enumerate(zip(los, his)):
        if lo > hi:
            where = row_where(ctx, run, i) if run is not None else f"row {i}"
            ctx.error("E368", f"{where}: empty position span {pos.lo.column} = {lo} .. "
                      f"{pos.hi.column} = {hi}", pos.span,
                      hint="the span is inclusive and runs from the first column's "
                      "position to the second's")
            return None
    return [(Positions("span", column=(pos.lo.data, pos.lo.column),
                       end=(pos.hi.data, pos.hi.column)), None)]


def item_positions(item: A.SiteItem) -> list[A.Pos]:
    """Every `@ POS` written on a site item (a group's own and its members')."""
    if isinstance(item, A.SiteRef):
        return [item.pos] if item.pos is not None else []
    return [p for p in [item.pos, *(m.pos for m in item.members)] if p is not None]


def captures(ref: A.SiteRef) -> list[A.Capture]:
    """The `$name` captures of a site, in order (a name may repeat: see check_captures)."""
    return [i for i in (ref.layer, ref.head, ref.features) if isinstance(i, A.Capture)]


def check_captures(ctx: Context, ref: A.SiteRef) -> None:
    """E326 for a capture name bound twice in one site (`L$i.H$i.z`)."""
    seen: set[str] = set()
    for cap in captures(ref):
        if cap.name in seen:
            ctx.error("E326", f"capture ${cap.name} is bound twice in {ref.text}", cap.span,
                      hint="each index of a site needs its own capture name")
        seen.add(cap.name)


def sweep_columns(ctx: Context, item: A.SiteItem) -> list[str]:
    """The result columns a site item's sweep adds (captures and default names); E327 when
    one site would fill a column twice (`L$head.H*.z`: the capture and H*'s default)."""
    cols: list[tuple[str, Span]] = []
    if isinstance(item, A.SiteRef):
        second = "expert" if item.kind.startswith("expert.") else "head"
        for idx, axis in ((item.layer, "layer"), (item.head, second), (item.features, "features")):
            if isinstance(idx, A.Capture):
                cols.append((idx.name, idx.span))
            elif isinstance(idx, (A.Star, A.IdxRange, A.IdxSet)):
                cols.append((resolve.DEFAULT_COLUMN[axis], idx.span))
    if isinstance(item.pos, A.PosEach):
        cols.append(("pos", item.pos.span))
    seen: set[str] = set()
    for name, span in cols:
        if name in seen and not _same_capture(item, name):
            ctx.error("E327", f"{_text(item)} fills the result column `{name}` twice", span,
                      hint="give the capture a name that no default column has")
        seen.add(name)
    return list(dict.fromkeys(c for c, _ in cols))


def _same_capture(item: A.SiteItem, name: str) -> bool:
    """A capture bound twice is E326 (check_captures), not a column clash."""
    return isinstance(item, A.SiteRef) and sum(c.name == name for c in captures(item)) > 1


def _text(item: A.SiteItem) -> str:
    return item.text if isinstance(item, A.SiteRef) else "all(...)"


def check_items(ctx: Context, items: tuple[A.SiteItem, ...], run: RunInfo | None, *,
                writes: bool) -> list[tuple[A.SiteItem, list[Match]]]:
    """Check each site item (sites, positions, captures, subspaces, GQA writes); the items
    that resolved, with their matches."""
    out = []
    for item in items:
        for pos in item_positions(item):
            check_pos(ctx, pos, run)
        refs = [item] if isinstance(item, A.SiteRef) else list(item.members)
        for ref in refs:
            check_captures(ctx, ref)
            warn_tl_alias(ctx, ref)
            _warn_repeated_indices(ctx, ref)
        matches = expand(ctx, item)
        if matches is None:
            continue
        for ref in refs:
            _check_subspace(ctx, ref)
        if writes:
            warn_shared_kv(ctx, item, matches)
        out.append((item, matches))
    return out


def _warn_repeated_indices(ctx: Context, ref: A.SiteRef) -> None:
    """W303 for a layer, head, expert or feature named twice in a set (`L{1, -3}` on a
    4-layer model): the set counts it once (resolve.expand_index), as a position set does."""
    model = ctx.model
    if model is None:
        return
    kind = SITE_KINDS.get(ref.kind)
    second = (model.n_experts, "E") if kind is not None and kind.expert else (model.n_heads, "H")
    width = 0
    if isinstance(ref.features, A.IdxSet) and kind is not None:
        try:  # (the site's own errors are reported where it is resolved)
            whole = resolve.expand_site(dataclasses.replace(ref, features=None), model)
            width = site_width(model, whole[0].sites[0])
        except CheckError:
            pass
    for idx, size, letter in ((ref.layer, model.n_layers, "L"), (ref.head, *second),
                              (ref.features, width, "")):
        if not isinstance(idx, A.IdxSet) or not size:
            continue
        seen = Counter(v + size if v < 0 else v for v in idx.values)
        repeats = sorted(v for v, n in seen.items() if n > 1 and 0 <= v < size)
        if repeats:
            written = "{" + ", ".join(str(v) for v in idx.values) + "}"
            what = " and ".join(f"{letter}{v}" if letter else f"feature {v}" for v in repeats)
            ctx.warn("W303", f"{what} named twice in {letter}{written}: each counts once",
                     idx.span,
                     hint="name each index once (or did you mean another?)")


def warn_tl_alias(ctx: Context, ref: A.SiteRef) -> None:
    """W305: a TransformerLens hook name whose value here is not what TransformerLens' own
    hook holds: `hook_scale` (TL's σ; patchc's scale sites are 1/σ), and one index into the
    heads' z/q/k/v (TL indexes heads in a dimension of their own; here the heads lie side by
    side, so `hook_z[3]` is head 0's feature 3)."""
    if "hook_" not in ref.text:
        return
    if ref.kind.endswith(".scale"):
        ctx.warn("W305", f"{ref.text} is patchc's {ref.kind}, 1/σ per token; TransformerLens' "
                 "hook_scale holds σ, so a value read or written here is the reciprocal of "
                 "TransformerLens'", ref.span,
                 hint=f"write {_canonical(ref)} to say you mean 1/σ")
    elif ref.kind in ("attn.z", "attn.q", "attn.k", "attn.v") and \
            isinstance(ref.features, A.Idx) and ctx.model is not None:
        f, dh = ref.features.value, ctx.model.d_head
        ctx.warn("W305", f"{ref.text}[{f}] is feature {f} of every head's {ref.kind[5:]} side by "
                 f"side ({dh} per head): head {f // dh}'s feature {f % dh}, not head {f} as "
                 "TransformerLens' head dimension would have it", ref.span,
                 hint=f"one head's {ref.kind[5:]}: {_canonical(ref, head=f)}")


def _canonical(ref: A.SiteRef, head: int | None = None) -> str:
    layer = f"L{ref.layer.value}." if isinstance(ref.layer, A.Idx) else \
        "L*." if ref.layer is not None else ""
    kind = ref.kind if head is None else f"H{head}.{ref.kind[5:]}"
    return layer + kind


def _check_subspace(ctx: Context, ref: A.SiteRef) -> None:
    """`SITE [v, w]`: each vector exists and has the site's width."""
    if not ref.subspace or ctx.model is None:
        return
    sites = [s for m in resolve.expand_site(ref, ctx.model) for s in m.sites]
    with ctx.catch():
        no_vector_on_pattern(sites[0], ref.span)
        return _check_subspace_widths(ctx, ref, sites)


def _check_subspace_widths(ctx: Context, ref: A.SiteRef, sites: list[Site]) -> None:
    width = site_width(ctx.model, sites[0])
    for name in ref.subspace:
        if ctx.vector(name, ref.span) is None or name not in ctx.vector_dims:
            continue
        dim = ctx.vector_dims[name]
        if dim != width:
            ctx.error("E333", f"vector `{name}` has {dim} features but {sites[0]} has "
                      f"{width}", ref.span, hint="a subspace vector lives in its site's space")


def warn_shared_kv(ctx: Context, item: A.SiteItem, matches: list[Match]) -> None:
    """Writing `k`/`v` of a query head of a grouped-query model writes its kv head, which
    other query heads read too (docs/language.md §5): legal, but rarely what was meant."""
    model = ctx.model
    if model is None or not model.grouped_query:
        return
    for m in matches:
        for site in m.sites:
            if is_dict_kind(site.kind):  # a dictionary's latents write its host site
                info = model.dictionary(split_kind(site.kind)[0])
                site = info.host if info is not None and info.ok else site
            if site.kind in ("k", "v") and site.head is not None:
                kv = model.kv_head(site.head)
                shared = [h for h in range(model.n_heads) if model.kv_head(h) == kv]
                ctx.warn("W302", f"writing {site} writes the shared kv head {kv}, shared by "
                         f"query heads {', '.join(map(str, shared))}", item.span,
                         hint=f"the model has {model.n_heads} query heads and "
                         f"{model.n_kv_heads} kv heads", once=f"kv:{item.span}")
                return


def check_where(ctx: Context, conds: tuple[A.Cond, ...], bound: set[str]) -> None:
    """`where` may only compare captures bound by the statement's own site patterns."""
    for cond in conds:
        names = [(cond.left, cond.span)]
        if isinstance(cond.right, str):
            s = cond.span
            col = s.end_col - len(cond.right) - 1 if s.line == s.end_line else s.col
            names.append((cond.right, Span(s.end_line, col, s.end_line, s.end_col)))
        for name, span in names:
            if name not in bound:
                if name == cond.left:
                    span = Span(span.line, span.col, span.line, span.col + len(name) + 1)
                known = ", ".join(f"${b}" for b in sorted(bound)) or "none"
                ctx.error("E325", f"`where` uses ${name}, which no site of this statement "
                          f"binds (bound: {known})", span,
                          hint="bind it in a site pattern, e.g. L$l.mlp.out")


def check_dla(ctx: Context, matches: list[Match], item: A.SiteItem) -> None:
    """dla splits the logits into what each site adds to the residual stream; a dictionary's
    latents add their decoded contribution to their host, which must be in that space."""
    for m in matches:
        for site in m.sites:
            if is_dict_kind(site.kind):
                if not check_residual_latents(ctx, site, item.span, "dla"):
                    return
            elif site.kind not in DLA_KINDS:
                ctx.error("E339", f"dla needs a site that writes to the residual stream; "
                          f"{kind_text(site.kind)} does not", item.span,
                          hint="use embed, Ll.attn.out, Ll.mlp.out or Ll.Hh.out")
                return


def check_residual_latents(ctx: Context, site: Site, span: Span, what: str) -> bool:
    """`dla`/`lens` of a dictionary site: its host must be residual-shaped (E356). False
    when an error was reported."""
    name, err = split_kind(site.kind)
    info = ctx.model.dictionary(name) if ctx.model is not None else None
    if info is None or not info.ok:
        return True  # its declaration's own error
    refusal = residual_refusal(info, err, what)
    if refusal is not None:
        code, message, hint = refusal
        ctx.error(code, message, span, hint=hint)
        return False
    return True
