"""Metric expressions (docs/language.md §7): references, answer tokens, and agreement with the
run a metric is measured on.

Two levels, so that a mistake inside a `metric` declaration is reported once, not once per
operation that measures it:
- `check_expr`: what a metric means on its own (names exist, answer columns hold strings
  that tokenize, `generate(N)` has N >= 1, token ids are in the vocabulary);
- `check_measures`: what depends on the operation's target run (per-example columns and
  `kl(RUN)` runs have as many rows as the run has examples; a metric's `@ POS` fits).
"""

from __future__ import annotations

import dataclasses

from . import ast as A
from .check_context import Context
from .check_sites import check_pos
from .checked import RunInfo
from .errors import Span
from .tokens import plain_many


# Positions that are not one position per example: a metric cannot be read there.
_MULTI = (A.PosEach, A.PosRange, A.PosSet, A.PosSpan)


def metric_refs(e: A.MExpr) -> list[str]:
    return [n.name for n in A.metric_nodes(e) if isinstance(n, A.MRef)]


def check_decl(ctx: Context, decl: A.MetricDecl) -> None:
    check_expr(ctx, decl.expr)
    if isinstance(decl.pos, _MULTI):
        ctx.error("E345", "a metric is read at one position (`@ last`, `@ 3` or "
                  "`@ DATA.column`)", decl.pos.span)


def check_expr(ctx: Context, e: A.MExpr) -> None:
    for node in A.metric_nodes(e):
        if isinstance(node, A.MRef):
            ctx.metric(node.name, node.span)
        elif isinstance(node, A.MCall):
            _check_tok(ctx, node.tok)
        elif isinstance(node, A.MKL):
            ctx.has_run(node.run, _name_span(node.span, "kl(", node.run))
        elif isinstance(node, A.MGenerate):
            if node.n < 1:
                ctx.error("E340", f"generate({node.n}) must generate at least one token",
                          node.span)
            elif ctx.model is not None and node.n > ctx.model.n_ctx:  # whatever the prompts
                ctx.error("E340", f"generate({node.n}) needs more positions than the model "
                          f"has ({ctx.model.n_ctx})", node.span)
            values = ctx.column(node.answer)
            if values is not None:
                _strings(ctx, node.answer, values, "answer")
        elif isinstance(node, A.MText) and node.n < 1:
            ctx.error("E340", f"text({node.n}) must generate at least one token", node.span)
        elif isinstance(node, A.MSeqLogProb):
            _check_tok(ctx, node.tok, whole=True)
    if not isinstance(e, A.MText) and any(isinstance(n, A.MText) for n in A.metric_nodes(e)):
        ctx.error("E366", "text(N) is a string per example: it is a measure (or metric) of "
                  "its own, not part of an expression", e.span)


def _name_span(span: Span, prefix: str, name: str) -> Span:
    """The span of `name` in `prefix name)` (for `kl(RUN)`)."""
    col = span.col + len(prefix)
    return Span(span.line, col, span.line, col + len(name))


def _strings(ctx: Context, ref: A.ColumnRef, values: list, use: str) -> bool:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            ctx.error("E319", f"{use} column `{ref.data}.{ref.column}` must hold strings; "
                      f"row {i} is {v!r}", ref.span)
            return False
    return True


def _check_tok(ctx: Context, tok: A.Tok, whole: bool = False) -> None:
    if isinstance(tok, A.TokId):
        vocab = ctx.model.vocab_size if ctx.model else None
        if vocab is not None and not 0 <= tok.token_id < vocab:
            ctx.error("E342", f"token id {tok.token_id} is outside the vocabulary "
                      f"(0..{vocab - 1})", tok.span)
        return
    if isinstance(tok, A.ColumnRef):
        values = ctx.column(tok)
        if values is None or not _strings(ctx, tok, values, "token"):
            return
        label = f"`{tok.data}.{tok.column}`"
    else:
        values, label = [tok.text], ""
    if ctx.tokenizer is None:
        return
    unk = getattr(ctx.tokenizer, "unk_id", None)
    unknown: list[int] = []
    for i, (text, ids) in enumerate(zip(values, plain_many(ctx.tokenizer, values))):
        n = len(ids)
        # A literal is named once by its text; a column by its name, row and text.
        what = f"{label} in row {i} ({text!r})" if label else repr(text)
        if n == 0:
            ctx.error("E341", f"answer {what} tokenizes to no tokens", tok.span)
            return
        # the token(s) read: the first, or every one for seqlogprob (whole)
        if unk is not None and unk in (ids if whole else ids[:1]):
            unknown.append(i)
        elif n > 1 and not whole:  # seqlogprob (whole) scores every token
            ctx.warn("W301", f"answer {what} tokenizes to {n} tokens; the first one is used",
                     tok.span, once=f"tok:{tok.span}")
    if unknown:
        _unknown_answers(ctx, tok, label, values, unknown)


def _unknown_answers(ctx: Context, tok: A.Tok, label: str, values: list, rows: list[int]
                     ) -> None:
    """Answers outside the tokenizer's vocabulary read the logit of its unknown-word token:
    an error when every answer is unknown, else a warning naming the rows."""
    if not isinstance(tok, A.ColumnRef):
        ctx.error("E380", f"answer {values[0]!r} is not in the tokenizer's vocabulary (it "
                  "would read the unknown-word token)", tok.span, hint="check the spelling")
        return
    table = ctx.data.get(tok.data)
    where = table.where if table is not None else (lambda i: f"row {i}")
    named = ", ".join(f"{where(i)} ({values[i]!r})" for i in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    if len(rows) == len(values):
        ctx.error("E380", f"no answer in {label} is in the tokenizer's vocabulary: {named}"
                  f"{more} would all read the unknown-word token", tok.span,
                  hint="is this the tokenizer of the model the data was written for?")
        return
    ctx.warn("W380", f"{len(rows)} answer(s) in {label} are not in the tokenizer's "
             f"vocabulary and read the unknown-word token: {named}{more}", tok.span,
             hint="fix their spelling, or drop those rows", once=f"unk:{tok.span}")


def inlined(ctx: Context, e: A.MExpr) -> list[A.MExpr]:
    """Every node of an expression, following references to declared metrics."""
    seen: set[str] = set()
    nodes = list(A.metric_nodes(e))
    for node in nodes:  # grows while it runs
        if isinstance(node, A.MRef) and node.name not in seen:
            seen.add(node.name)
            decl = ctx.metrics.get(node.name)
            if decl is not None:
                nodes.extend(A.metric_nodes(decl.expr))
    return nodes


def _is_text(ctx: Context, e: A.MExpr) -> bool:
    return any(isinstance(n, A.MText) for n in inlined(ctx, e))


def _measure_pos(ctx: Context, e: A.MExpr) -> A.Pos | None:
    """Where a measured expression is read: its metrics' declared position, else None."""
    for node in A.metric_nodes(e):
        decl = ctx.metrics.get(node.name) if isinstance(node, A.MRef) else None
        if decl is not None and decl.pos is not None:
            return decl.pos
    return None


def check_measures(ctx: Context, measures: tuple[A.Measure, ...], run: RunInfo | None) -> None:
    """Check the measures of an operation against its target run."""
    for m in measures:
        check_expr(ctx, m.expr)  # inline expressions; references report unknown names
        _one_position(ctx, m)
        _check_version1(ctx, m, run)
    if run is None:
        return
    for m in measures:
        seen: set[str] = set()
        kl_runs: dict[str, Span] = {}
        nodes = list(A.metric_nodes(m.expr))
        for node in nodes:  # grows while it runs: referenced metrics are appended
            if isinstance(node, A.MRef) and node.name not in seen:
                seen.add(node.name)
                decl = ctx.metrics.get(node.name)
                if decl is not None:
                    nodes.extend(A.metric_nodes(decl.expr))
                    _metric_pos(ctx, decl, run)
            elif isinstance(node, (A.MCall, A.MGenerate)):
                ref = node.tok if isinstance(node, A.MCall) else node.answer
                if isinstance(ref, A.ColumnRef):
                    _rows_match(ctx, ref, run, m.span)
                if isinstance(node, A.MGenerate):
                    _fits_context(ctx, node.n, f"generate({node.n})", run, node.span)
            elif isinstance(node, A.MText):
                _fits_context(ctx, node.n, f"text({node.n})", run, node.span)
            elif isinstance(node, A.MSeqLogProb):
                _answer_fits(ctx, node, run)
            elif isinstance(node, A.MKL):
                kl_runs.setdefault(node.run, node.span)
                other = ctx.runs.get(node.run)
                if other is not None and other.n_examples != run.n_examples:
                    ctx.error("E321", f"kl({node.run}) compares run `{node.run}` "
                              f"({other.n_examples} examples) with run `{run.name}` "
                              f"({run.n_examples} examples); they need the same number",
                              m.span)
        if len(kl_runs) > 1:
            ctx.error("E351", f"one measure compares with one run in kl(...); this one uses "
                      f"{', '.join(kl_runs)}", m.span)


def _fits_context(ctx: Context, n: int, what: str, run: RunInfo, span: Span) -> None:
    """`n` tokens generated (or teacher-forced) after the run's longest prompt stay within
    the model's positions (E340); past them, the position embedding has no row for the next
    token."""
    if ctx.model is None or run.max_tokens is None or n < 1:
        return
    need = run.max_tokens + n - 1  # the last token is never fed back
    if need > ctx.model.n_ctx:
        ctx.error("E340", f"{what} after the {run.max_tokens}-token prompts of run "
                  f"`{run.name}` needs {need} positions; the model has {ctx.model.n_ctx}",
                  span, hint=f"at most {ctx.model.n_ctx - run.max_tokens + 1} tokens fit")


def _answer_fits(ctx: Context, node: A.MSeqLogProb, run: RunInfo) -> None:
    """seqlogprob's answer, teacher-forced after the prompt, fits the model (E340)."""
    tok = node.tok
    if ctx.tokenizer is None or isinstance(tok, A.TokId):
        return
    values = ctx.column(tok) if isinstance(tok, A.ColumnRef) else [tok.text]
    if not values or not all(isinstance(v, str) for v in values):
        return
    longest = max(len(ids) for ids in plain_many(ctx.tokenizer, list(values)))
    _fits_context(ctx, longest, f"seqlogprob of a {longest}-token answer", run, node.span)


def _check_version1(ctx: Context, m: A.Measure, run: RunInfo | None) -> None:
    """`normalized between R1 and R2`, text(N) as a whole measure, seqlogprob at the last
    position."""
    if _is_text(ctx, m.expr) and m.normalized:
        ctx.error("E366", "text(N) cannot be normalized: it is a string per example", m.span)
    if any(isinstance(n, A.MSeqLogProb) for n in inlined(ctx, m.expr)):
        pos = _measure_pos(ctx, m.expr)
        if pos is not None and not isinstance(pos, A.PosLast) and not (
                isinstance(pos, A.PosIndex) and pos.value == -1):
            ctx.error("E367", "seqlogprob(...) scores the answer after the prompt: it is "
                      "measured at the last position", m.span)
    if m.between is None:
        return
    low, high = m.between
    if low.value == high.value:
        ctx.error("E471", f"normalized between `{low.value}` and `{high.value}`: one run "
                  "cannot be both 0 and 1 (every value would divide by zero)", high.span,
                  hint="name two runs, e.g. `normalized between corrupt and clean`")
    for name in m.between:
        other = ctx.run(name.value, name.span)
        if other is None or run is None:
            continue
        if other.n_examples != run.n_examples:
            ctx.error("E365", f"normalized between: run `{other.name}` has "
                      f"{other.n_examples} examples, the measured run `{run.name}` "
                      f"{run.n_examples}", name.span,
                      hint="the baselines are measured example by example on the same "
                      "prompts' rows")
            continue
        for node in inlined(ctx, m.expr):
            ref = getattr(node, "tok", None) or getattr(node, "answer", None)
            if isinstance(ref, A.ColumnRef):
                _rows_match(ctx, ref, other, m.span)


def _pos_key(pos: A.Pos) -> tuple:
    """A position without its span, to compare where two metrics are read."""
    return (type(pos).__name__,) + tuple(
        getattr(pos, f.name) for f in dataclasses.fields(pos) if f.name != "span")


def _one_position(ctx: Context, m: A.Measure) -> None:
    """An expression over metrics is read at one position: the metrics it names must not
    be declared at different ones (E350)."""
    if isinstance(m.expr, A.MRef):
        return
    where: dict[tuple, str] = {}
    for node in A.metric_nodes(m.expr):
        decl = ctx.metrics.get(node.name) if isinstance(node, A.MRef) else None
        if decl is not None and decl.pos is not None:
            where.setdefault(_pos_key(decl.pos), decl.name.value)
    if len(where) > 1:
        ctx.error("E350", "this expression combines metrics read at different positions ("
                  + ", ".join(where.values()) + ")", m.span,
                  hint="declare one metric with a single `@ POS` and measure it")


def _rows_match(ctx: Context, ref: A.ColumnRef, run: RunInfo, span: Span) -> None:
    table = ctx.data.get(ref.data)
    key = f"rows:{ref.data}:{run.name}:{span}"
    if table is None or len(table.rows) == run.n_examples or key in ctx.seen:
        return
    ctx.seen.add(key)
    ctx.error("E348", f"the metric reads `{ref.data}.{ref.column}` ({len(table.rows)} rows) "
              f"on run `{run.name}`, which has {run.n_examples} examples", span,
              hint="per-example columns need one row per example of the measured run")


def _metric_pos(ctx: Context, decl: A.MetricDecl, run: RunInfo) -> None:
    """A metric's `@ POS` against each run it is measured on (reported once per pair)."""
    key = f"pos:{decl.name.value}:{run.name}"
    if decl.pos is None or key in ctx.seen or isinstance(decl.pos, _MULTI):
        return
    ctx.seen.add(key)
    check_pos(ctx, decl.pos, run)


def name_column_hint(m: A.Measure, taken: set[str]) -> str:
    """The hint of E327 for a column measured twice: the same item with a column name of
    its own (`NAME = EXPR ...` names a measured column), spelled out so it can be pasted."""
    from . import printer

    base = m.expr.name if isinstance(m.expr, A.MRef) else "value"
    stem = f"{base}_norm" if m.normalized else f"{base}_2"
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}{i}", i + 1
    item = printer.measure(dataclasses.replace(m, name=None))
    return f"give this column its own name: `{name} = {item}`"
