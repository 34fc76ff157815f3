"""Runs: their prompts and token counts, the interventions baked into them (§6.1), and the
rule that runs swapped between are aligned token for token.

Token counts come from the light tokenizer (tokens.py). Positions index tokens after
tokenization, BOS included, so a swap between runs whose prompts tokenize to different
lengths would write activations to the wrong tokens: it is an error that names the first
row that differs.
"""

from __future__ import annotations

from . import ast as A
from .check_context import Context
from .check_fill import check_fill_source
from .check_sites import PATTERN_KINDS, check_items, check_pos, expand, no_vector_on_pattern, \
    row_where, site_width
from .check_vectors import VectorChecker, one_site_width, vector_deps
from .checked import RunInfo
from .errors import Span
from .limits import MAX_SAMPLES, SEED_RANGE
from .tokens import encode_many

NOISE_KWARGS = ("std", "samples", "seed")


def resolve_run(ctx: Context, decl: A.RunDecl) -> RunInfo | None:
    """The prompts and token counts of a run; None if its prompts cannot be resolved."""
    name = decl.name.value
    if isinstance(decl.text, A.ColumnRef):
        values = ctx.column(decl.text)
        if values is None:
            return None
        for i, v in enumerate(values):
            if not isinstance(v, str):
                ctx.error("E319", f"prompt column `{decl.text.data}.{decl.text.column}` must "
                          f"hold strings; row {i} is {v!r}", decl.text.span)
                return None
        texts, data = tuple(values), decl.text.data
    else:
        texts, data = decl.text.texts, None
    lengths = None
    if ctx.tokenizer is not None:
        lengths = tuple(len(ids) for ids in encode_many(ctx.tokenizer, list(texts)))
        info = RunInfo(name, texts, lengths, data)
        for i, n in enumerate(lengths):
            if n == 0:
                ctx.error("E341", f"{row_where(ctx, info, i)} of run `{name}` tokenizes to "
                          "no tokens", decl.text.span)
                break
            if ctx.model is not None and n > ctx.model.n_ctx:
                ctx.error("E346", f"{row_where(ctx, info, i)} of run `{name}` has {n} tokens;"
                          f" the model takes at most {ctx.model.n_ctx}", decl.text.span)
                break
    return RunInfo(name, texts, lengths, data, _samples(decl))


def _samples(decl: A.RunDecl) -> int:
    """How many noised copies of each example the run makes (`noise(..., samples=N)`)."""
    n = 1
    for iv in decl.interventions:
        if isinstance(iv, A.INoise):
            for kw in iv.kwargs:
                if kw.name == "samples" and isinstance(kw.value, int) and kw.value >= 1:
                    n = max(n, kw.value)
    return n


def require_aligned(ctx: Context, src: RunInfo, dst: RunInfo, span: Span, why: str) -> None:
    """Runs whose activations are copied one into the other: same example count (E321) and
    the same token count per example (E322)."""
    if src.n_examples != dst.n_examples:
        ctx.error("E321", f"{why}: run `{src.name}` has {src.n_examples} examples but "
                  f"`{dst.name}` has {dst.n_examples}", span,
                  hint="runs swapped between need the same examples, one for one")
        return
    if src.samples > 1 and src.samples != dst.samples:
        # A noised run has `samples` copies of each example; only a run with the same copies
        # can take its values one for one.
        ctx.error("E352", f"{why}: run `{src.name}` is noised with {src.samples} samples per "
                  f"example, `{dst.name}` with {dst.samples}", span,
                  hint="copy values from the clean run into the noised one (trace/swap from "
                  "clean into noisy)")
        return
    if src.lengths is None or dst.lengths is None or src.name == dst.name:
        return
    for i, (a, b) in enumerate(zip(src.lengths, dst.lengths)):
        if a != b:
            ctx.error("E322", f"{why}: runs need equal token lengths per example; "
                      f"{row_where(ctx, src, i)} has {a} tokens in `{src.name}` "
                      f"({_short(src.texts[i])}) and {b} in `{dst.name}` "
                      f"({_short(dst.texts[i])})", span,
                      hint="reword the prompts so that they tokenize to the same length")
            return


def _short(text: str, width: int = 50) -> str:
    """A prompt quoted for a message, shortened in the middle if long."""
    if len(text) > width:
        text = text[: width // 2 - 2] + " … " + text[-(width // 2 - 2):]
    return repr(text)


def check_interventions(ctx: Context, decl: A.RunDecl, vectors: VectorChecker) -> None:
    """The `with ...` interventions of a run, against the run itself."""
    run = ctx.runs.get(decl.name.value)
    for iv in decl.interventions:
        if isinstance(iv, A.IFreezeLn):
            _source(ctx, iv.source, iv.span, run, "`freeze ln` reads its scales")
            continue
        if isinstance(iv, A.INoise):
            _check_noise(ctx, iv, run)
            continue
        if any(isinstance(i, (A.Edge, A.EdgeGroup)) for i in iv.sites):
            ctx.error("E394", "a run's interventions take sites, not edges", iv.span,
                      hint="patch edges with a swap or ablate statement")
            continue
        # A pattern in a run is one joint write of every match (a run cannot sweep).
        resolved = check_items(ctx, iv.sites, run, writes=True)
        if isinstance(iv, (A.ISteer, A.IScale)) or (
                isinstance(iv, A.IAblate) and iv.how.kind != "zero"):
            no_subspace(ctx, iv.sites, "steer" if isinstance(iv, A.ISteer) else
                        "scale" if isinstance(iv, A.IScale) else f"ablate with {iv.how.kind}")
        if isinstance(iv, A.ISwap):
            _source(ctx, iv.source, iv.span, run, "a baked swap copies activations")
        elif isinstance(iv, A.IAblate) and iv.how.run is not None:
            if ctx.has_run(iv.how.run, iv.how.span):
                check_fill_source(ctx, iv.how, ctx.runs.get(iv.how.run), run, iv.sites)
        elif isinstance(iv, A.ISteer):
            dim = vectors.dim(iv.by, sweeps_allowed=0)
            check_vector_fits(ctx, dim, resolved, iv.by.span)
        elif isinstance(iv, A.IScale) and isinstance(iv.by, A.ScalarSweep):
            ctx.error("E349", "a scalar sweep {...} is not allowed here", iv.by.span,
                      hint="sweep scalars in the `by` of a steer or scale operation")


def no_subspace(ctx: Context, items: tuple[A.SiteItem, ...], what: str) -> None:
    """A subspace `[v]` restricts a replacement (swap) or a zero-ablation (docs/language.md §11);
    other writes have no projected form (E343)."""
    for item in items:
        for ref in [item] if isinstance(item, A.SiteRef) else item.members:
            if ref.subspace:
                ctx.error("E343", f"{what} cannot be restricted to a subspace "
                          f"[{', '.join(ref.subspace)}]", ref.span,
                          hint="subspaces restrict swap, trace, backpatch and ablate with zero")
                return


def _source(ctx: Context, name: str, span: Span, run: RunInfo | None, why: str) -> None:
    # The AST keeps the source run as a plain string: its span is the end of the statement.
    name_span = Span(span.end_line, span.end_col - len(name), span.end_line, span.end_col)
    src = ctx.run(name, name_span)
    if src is not None and run is not None:
        require_aligned(ctx, src, run, name_span, f"{why} from `{name}` into `{run.name}`")


def check_vector_fits(ctx: Context, dim: int | None, resolved: list, span: Span) -> None:
    """A vector added to sites must have each site's width (E333)."""
    if dim is None or ctx.model is None:
        return
    for _item, matches in resolved:
        for m in matches:
            for site in m.sites:
                if site.kind in PATTERN_KINDS:
                    with ctx.catch():
                        no_vector_on_pattern(site, span)
                    return
                width = site_width(ctx.model, site)
                if width != dim:
                    ctx.error("E333", f"the vector has {dim} features but {site} has {width}",
                              span, hint="a vector must live in the space of the site it is "
                              "added to")
                    return


def _check_noise(ctx: Context, iv: A.INoise, run: RunInfo | None) -> None:
    expand(ctx, iv.site)
    if iv.site.pos is not None:
        check_pos(ctx, iv.site.pos, run)
    no_subspace(ctx, (iv.site,), "noise")
    given = set()
    for kw in iv.kwargs:
        v = kw.value
        if kw.name not in NOISE_KWARGS:
            ctx.error("E336", f"noise has no argument `{kw.name}`", kw.span,
                      hint=f"noise takes {', '.join(NOISE_KWARGS)}")
            continue
        if kw.name in given:
            ctx.error("E336", f"noise argument `{kw.name}` is given twice", kw.span)
        given.add(kw.name)
        if kw.name == "std":
            if isinstance(v, A.StdOf):
                one_site_width(ctx, v.site, "std(...)")
                if v.site.pos is not None:
                    check_pos(ctx, v.site.pos, run)
                if v.factor <= 0:
                    ctx.error("E336", "noise std must be positive", kw.span)
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                ctx.error("E336", f"noise std must be a positive number or a multiple of "
                          f"std(SITE); got {v!r}", kw.span)
        elif isinstance(v, bool) or not isinstance(v, int) or (
                kw.name == "samples" and not 1 <= v <= MAX_SAMPLES) or (
                kw.name == "seed" and not SEED_RANGE[0] <= v <= SEED_RANGE[1]):
            need = f"an integer from 1 to {MAX_SAMPLES}" if kw.name == "samples" else \
                "a 64-bit integer"
            ctx.error("E336", f"noise {kw.name} must be {need}; got {str(v)[:40]}",
                      kw.span)
    if "std" not in given:
        ctx.error("E336", "noise needs std=X or std=K*std(SITE)", iv.span)


def run_deps(decl: A.RunDecl):
    """(kind, name) of the runs and vectors a run's baked interventions read."""
    for iv in decl.interventions:
        if isinstance(iv, (A.ISwap, A.IFreezeLn)):
            yield ("run", iv.source)
        elif isinstance(iv, A.IAblate) and iv.how.run is not None:
            yield ("run", iv.how.run)
        elif isinstance(iv, A.ISteer):
            yield from vector_deps(iv.by)
