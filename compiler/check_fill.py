"""Static checks of an ablation's source run: `mean(A)` and `resample(A)` must have a value
for every position of the target run they write.

`mean(A)` is taken per position, counted from each prompt's first token, over the examples
of A that have that position; `resample(A)` takes a random *other* example of A with the
same token count (for a write at every position) or one that has the written position.
With the token counts known at check time, a target position no example of A can fill is
an error with the span of `mean(A)`/`resample(A)` (E455/E456), not a failure halfway
through the run. Per-example positions (`@ DATA.col`, `@ DATA.a..DATA.b`) depend on the
data's values per row and are left to the runtime, which reports the same codes.
"""

from __future__ import annotations

from . import ast as A
from .check_context import Context
from .check_sites import row_where
from .checked import RunInfo

_HINT = {
    "mean": "mean(RUN) is taken per position from each prompt's first token: use a source "
            "run whose prompts are at least as long as the target's",
    "resample": "resample(RUN) draws another example of RUN with the same token count (or "
                "one that has the written position): use prompts of equal lengths, or more "
                "examples",
}


def check_fill_source(ctx: Context, how: A.Ablation, source: RunInfo | None,
                      target: RunInfo | None, items: tuple) -> None:
    """E455 (mean) / E456 (resample): some position the target needs has no value in the
    source run. `items`: the sites or edges written (their `pos` is read)."""
    if how.kind not in _HINT or source is None or target is None or \
            not source.lengths or not target.lengths:
        return
    for item in items:
        pos = getattr(item, "pos", None)
        if isinstance(pos, (A.ColumnRef, A.PosSpan)):
            continue
        message = (_mean if how.kind == "mean" else _resample)(ctx, pos, source, target)
        if message:
            ctx.error("E455" if how.kind == "mean" else "E456", message, how.span,
                      hint=_HINT[how.kind])
            return


def _highest(pos: A.Pos | None, target: RunInfo) -> int | None:
    """The highest position (from a prompt's start) the write needs in the longest target
    prompt; None for `@ last` (every prompt has a last token) or a form resolved per row."""
    longest = max(target.lengths or (0,))
    if pos is None or isinstance(pos, A.PosEach):
        return longest - 1
    if isinstance(pos, A.PosIndex):
        if pos.value == -1:
            return None
        return pos.value if pos.value >= 0 else \
            (None if target.n_tokens is None else target.n_tokens + pos.value)
    values = (pos.lo, pos.hi) if isinstance(pos, A.PosRange) else \
        pos.values if isinstance(pos, A.PosSet) else ()
    if not values or min(values) < 0:
        return None
    return max(values)


def _mean(ctx: Context, pos: A.Pos | None, source: RunInfo, target: RunInfo) -> str | None:
    top = _highest(pos, target)
    have = max(source.lengths or (0,))
    if top is None or top < have:
        return None
    return (f"mean(`{source.name}`) has no example with position {top}: the longest prompt "
            f"of `{source.name}` has {have} tokens and `{target.name}` is written up to "
            f"position {top}")


def _resample(ctx: Context, pos: A.Pos | None, source: RunInfo, target: RunInfo
              ) -> str | None:
    src, dst = source.lengths or (), target.lengths or ()
    every = pos is None
    top = None if every else _highest(pos, target)
    for i, n in enumerate(dst):
        if every:
            pool = [j for j, m in enumerate(src) if j != i and m == n]
            what = f"{n} tokens"
        else:
            # `@ each` needs each of the row's positions; a fixed index only that one.
            need = n - 1 if isinstance(pos, A.PosEach) else top
            if need is not None and need >= n:
                continue  # the row does not have the position: it keeps its own value
            pool = [j for j, m in enumerate(src) if j != i and (need is None or m > need)]
            what = "any token" if need is None else f"position {need}"
        if not pool:
            return (f"resample(`{source.name}`) has no other example with {what} to give "
                    f"{row_where(ctx, target, i)} of `{target.name}`")
    return None
