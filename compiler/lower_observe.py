"""Lowering of the statements that look at a run without changing it (`read`, `lens`,
`measure ... in RUN`): Reads and Metrics on the run's base Forward, the same Forward that
every operation reading from or normalizing against the run uses, so after dedupe a
`read` of a run that a sweep already runs costs no model pass.

Tables: a `read` row per concrete site (its value is the Read's id; the runtime turns it
into a tensor and results.py summarizes it in READ_SUMMARY columns); a `lens` row per
site (and position, for `@ each`); a `measure ... in RUN` table has one row.
"""

from __future__ import annotations

from . import ast as A
from .dictionaries import decoded_site
from .ir import Positions, Row
from .lowerer import LAST, Lowerer
from .lower_exprs import metric_parts

# The columns of a `read` table: one row per site, a summary of its values.
READ_SUMMARY = ("shape", "mean", "std", "norm", "min", "max")


def _site_text(t, counts: dict[str, int], swept: bool) -> str:
    """The key of a site in results.activations: its text, with `@ POS` when an `@ each`
    sweep or another item of the statement reads the same site at other positions (a read
    of every position keeps the bare text, so the bare text always means the whole site)."""
    text = str(t.site)
    whole = t.pos.kind == "all" and not swept
    return text if whole or (counts[text] == 1 and not swept) else f"{text} @ {t.pos}"


def op_read(lw: Lowerer, op: A.ReadSites, exps) -> None:
    run = op.target.value
    fwd = lw.base(run)
    counts: dict[str, int] = {}
    for e in exps:
        text = str(e.targets[0].site)
        counts[text] = counts.get(text, 0) + 1
    rows = []
    for e in exps:
        (t,) = e.targets
        swept = any(c == "pos" for c, _ in e.key)
        key = (("site", _site_text(t, counts, swept)),) + tuple(kv for kv in e.key
                                                                if kv[0] != "site")
        rows.append(Row(key, (("value", lw.read(fwd, t.site, t.pos)),)))
    sweep = tuple(dict.fromkeys(c for r in rows for c, _ in r.key))
    lw.table(op, rows, sweep + READ_SUMMARY)


def lens_position(lw: Lowerer, t_pos: Positions, m: A.Measure, run: str) -> Positions:
    """Where a lens decodes: the site's own `@ POS`, else the metric's, else `last`."""
    if t_pos.kind != "all":
        return t_pos
    pos = metric_parts(m.expr, lw.checked.metrics)[2]
    return LAST if pos is None else lw.positions(pos, run)[0][0]


def op_lens(lw: Lowerer, op: A.Lens, exps) -> None:
    run = op.target.value
    fwd = lw.base(run)
    rows = []
    for e in exps:
        (t,) = e.targets
        values, norm = [], []
        for col, m in lw.measures(op):
            at = lens_position(lw, t.pos, m, run)
            values.append((col, lw.metric(fwd, run, m.expr, at=at, lens=decoded_site(t.site))))
            if m.normalized:
                norm.append((col, lw.norm_refs(m, run, None)))
        rows.append(Row(e.key, tuple(values), tuple(norm)))
    lw.table(op, rows)


def op_measure(lw: Lowerer, op: A.MeasureRun) -> None:
    run = op.target.value
    lw.table(op, [lw.row((), lw.base(run), op, run, None)])
