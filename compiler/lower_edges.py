"""Lowering statements over edges into the IR's ordinary nodes (docs/architecture.md, "Edges").

- `swap E from A into B` / `ablate E in B with zero | mean(A)` over single edges
  (`patch_form`): one sweep Forward of B per receiver group (the receiver's layer; a layer's
  MLP input apart) and run of positions, whose SweepSpec (modes `edge`, `edge_mean`,
  `edge_zero`) has an EdgeSet (compiler/ir_edges.py) of its edges and their table rows, and
  as inputs the Reads of the senders on A and on B's base Forward; its Metrics are valued
  [members, examples] and the table lists each in a SweepRows block. share_prefix starts
  it at the receivers' layer (after the last block for `logits`: only the final norm and
  the unembedding run), the schedule cuts it into chunks under the budget, and the runtime
  patches each member's receiver in its own rows (runtime/edge_sweeps.py).
- otherwise (`all(...)` groups, noised runs, kl/loss metrics, a few edges each in a group of
  its own, `compact=False`): one Forward of B per experiment, with one Write per receiver on the
  receiver's input site (`q.in`, `mlp.in`, `logits.in`, ...): `x_r + sum (new_s - cur_s)`
  over the experiment's senders into that receiver (ir.Write, modes `edge`, `edge_mean`,
  `edge_zero`). cur_s is a Read of B's base Forward when no write of the experiment can
  change the sender (always so for a single edge), else it is read in the forward itself
  (`Write.live`). The Write's layer is the receiver's, so share_prefix starts the forward
  there and batch stacks the forwards of one receiver layer.
- `attribute E from A into B using eap | eap_ig(steps=N) | relp`: Reads of each sender on A and
  B and of each receiver's input on B, one Backward (rules `grad`, or `lrp` for relp) with
  respect to every receiver input, and per measure ONE Estimate (method `eap` or `eap_ig`) for
  each run of experiments at the same positions, whose `edges` (compiler/ir_edges.py) stand
  for every edge of them: m_B + (s_A - s_B) . dm/dx_r per edge, valued [experiments,
  examples]; the table lists it as a SweepRows block. eap_ig also reads B's `embed`: its
  gradient passes interpolate it. `lower(..., compact=False)` makes one Estimate per
  experiment instead (the tests compare the two).

For "circuit": `edge_writes(lw, run, edges, pos, how, source)` gives the Writes that patch a set
of edges jointly in one forward of `run` (every edge not in a circuit, patched from A: one
`all(...)` ablation); `lw.forward(run, writes)` then makes the edge-masked Forward.
"""

from __future__ import annotations

import itertools
from typing import Any

from . import ast as A
from .edges import EdgeMatch, EdgeRef, affects, edge_pos, expand_edge_item, iter_edge_item
from .ir import Estimate, Forward, Positions, Row, Site, Write
from .ir_edges import EdgeSet, edge_set, subset
from .ir_sweep import SweepRows, SweepSpec
from .lower_sweep import logit_metrics, sweep_positions
from .lowerer import Key, Lowerer, check_where, keep

DEFAULT_EAP_IG_STEPS = 5


def edge_exps(lw: Lowerer, op: Any, run: str) -> list[tuple[Key, tuple[EdgeRef, ...],
                                                               Positions]]:
    """Every experiment of an edge statement: (row key, edges patched jointly, positions)."""
    out = []
    items = op.sites
    for item in items:
        label = (("site", _item_text(item)),) if len(items) > 1 else ()
        matches: list[EdgeMatch] = expand_edge_item(item, lw.model)
        for pos, i in lw.positions(edge_pos(item), run):
            pkey = (("pos", i),) if i is not None else ()
            out += [(label + m.key + pkey, m.edges, pos) for m in matches]
    check_where(op.clauses.where, [k for k, _, _ in out])
    return [e for e in out if keep(op.clauses.where, e[0])]


def _item_text(item: A.SiteItem) -> str:
    from . import printer

    return printer.site_item(item)


def edge_rows(lw: Lowerer, op: Any) -> int:
    """Rows of an edge statement's table, from its EdgeSets (the matches are never all held
    as objects)."""
    return sum(es.count for _, es in _edge_sets(lw, op, op.target.value))


def edge_writes(lw: Lowerer, run: str, edges: tuple[EdgeRef, ...], pos: Positions, how: str,
                source: str | None) -> list[str]:
    """The Writes that patch `edges` jointly in a forward of `run`: one per receiver, in the
    order receivers first appear. `how`: `replace` (the senders' values in `source`), `mean`
    (their mean over `source`'s examples) or `zero`."""
    base = lw.base(run)
    src = lw.base(source) if source is not None else None
    by_receiver: dict[Site, list[Site]] = {}
    for e in edges:
        by_receiver.setdefault(e.receiver, []).append(e.sender)
    receivers = list(by_receiver)
    writes = []
    for receiver, senders in by_receiver.items():
        senders = list(dict.fromkeys(senders))
        live = tuple(i for i, s in enumerate(senders)
                     if any(affects(r, s, lw.model) for r in receivers))
        new = [] if how == "zero" else [lw.read(src, s, pos) for s in senders]  # type: ignore[arg-type]
        cur = [lw.read(base, s, pos) for i, s in enumerate(senders) if i not in live]
        inputs = tuple(new + cur)
        mode = {"replace": "edge", "mean": "edge_mean", "zero": "edge_zero"}[how]
        node = Write(receiver, pos, mode, inputs, senders=tuple(senders), live=live)
        writes.append(lw.ir.add(node, inputs))
    return writes


def _how(op: A.Swap | A.Ablate) -> tuple[str, str | None]:
    """(how the senders' new values are made: replace, mean or zero; the run they come from)."""
    if isinstance(op, A.Swap):
        return "replace", op.source.value
    return op.how.kind, op.how.run


def _op_patch(lw: Lowerer, op: A.Swap | A.Ablate) -> None:
    """One Forward per experiment (the per-experiment lowering)."""
    target = op.target.value
    how, source = _how(op)
    lw.bake(target)
    rows = []
    for key, edges, pos in edge_exps(lw, op, target):
        ws = edge_writes(lw, target, edges, pos, how, source)
        rows.append(lw.row(key, lw.forward(target, ws), op, target, source))
    lw.table(op, rows)


def patch_form(lw: Lowerer, op: A.Operation) -> bool:
    """Does an edge swap/ablate lower to edge sweeps (module docstring)? Single edges (no
    `all(...)`: a group's edges change each other's senders), at positions a sweep member
    can write, on a run without noise samples, measured by metrics of the logits at one
    position. (A circuit may rank its table: its Select puts the members in row order.)"""
    if not lw.compact or not isinstance(op, (A.Swap, A.Ablate)):
        return False
    if not all(isinstance(item, A.Edge) for item in op.sites):
        return False
    target = op.target.value
    lw.bake(target)
    if lw.samples[target] != 1:
        return False
    if not all(sweep_positions(lw, edge_pos(item), target) for item in op.sites):
        return False
    return logit_metrics(lw, op)


def _receiver_group(site: Site) -> tuple[int, bool]:
    """Edges whose forwards start at one layer: (receiver layer, an MLP input?). A layer's
    MLP inputs form a group of their own: a forward patched only before the last block's MLP
    computes that MLP at the measured positions alone (dead_positions)."""
    assert site.layer is not None  # (logits.in: the layer count)
    return site.layer, site.kind == "mlp.in"


def _patch_groups(lw: Lowerer, op: A.Swap | A.Ablate, target: str
                  ) -> list[tuple[Positions, EdgeSet]] | None:
    """The statement's edges as the EdgeSets of its sweeps: per run of items at the same
    positions, per receiver group (in group order), each member with its table row. None
    when that makes no fewer forwards than one per edge (a few edges, each of its own
    group: per edge, their forwards batch with the other forwards of their layer)."""
    sets = _edge_sets(lw, op, target)
    out, row = [], 0
    for pos, es in sets:
        groups: dict[tuple[int, bool], list[int]] = {}
        for j, r in enumerate(es.receiver_of):
            groups.setdefault(_receiver_group(es.receivers[r]), []).append(j)
        for key in sorted(groups):
            js = groups[key]
            out.append((pos, subset(es, js, pos, [row + j for j in js])))
        row += es.count
    if not out or row <= len(out):
        return None
    return out


def _op_patch_compact(lw: Lowerer, op: A.Swap | A.Ablate) -> None:
    """One sweep Forward per receiver group and run of positions (ir_edges.py), and a
    SweepRows block of the table per sweep."""
    target = op.target.value
    how, source = _how(op)
    groups = _patch_groups(lw, op, target)
    if groups is None:
        _op_patch(lw, op)
        return
    baked = lw.bake(target)
    base = lw.base(target)
    src = lw.base(source) if source is not None else None
    mode = {"replace": "edge", "mean": "edge_mean", "zero": "edge_zero"}[how]
    measures = lw.measures(op)
    blocks = []
    for pos, es in groups:
        new = () if src is None or how == "zero" else \
            tuple(lw.read(src, s, pos) for s in es.senders)
        inputs = new + tuple(lw.read(base, s, pos) for s in es.senders)
        fid = lw.ir.add(Forward(target, baked, lw.n_experiments, 1,
                                sweep=SweepSpec(es, mode), inputs=inputs), baked + inputs)
        lw.n_experiments += es.count
        values = tuple((col, lw.metric(fid, target, m.expr)) for col, m in measures)
        norm = tuple((col, lw.norm_refs(m, target, source)) for col, m in measures
                     if m.normalized)
        blocks.append(SweepRows(fid, values, norm, es.count, es))
    keys = dict.fromkeys(c for _, es in groups for c in es.bound_columns())
    columns = tuple(keys) + tuple(dict.fromkeys(c for c, _ in measures))
    lw.table(op, [], columns, sweeps=tuple(blocks))


def _attribute_parts(op: A.Attribute) -> tuple[str, str, int]:
    """(Estimate method, Backward rules, eap_ig steps (0 otherwise)) of `using ...`."""
    kw = {k.name: k.value for k in op.method.kwargs}
    method = "eap_ig" if op.method.name == "eap_ig" else "eap"
    rules = ("lrp_ah" if kw.get("ah") is True else "lrp") if op.method.name == "relp" \
        else "grad"
    steps = int(kw.get("steps", DEFAULT_EAP_IG_STEPS)) if method == "eap_ig" else 0  # type: ignore[arg-type]
    return method, rules, steps


def _embeds(lw: Lowerer, method: str, fa: str, fb: str) -> tuple[str, ...]:
    """eap_ig's interpolated inputs: the embeddings of A and B, whole."""
    if method != "eap_ig":
        return ()
    return tuple(lw.read(f, Site("embed"), Positions("all")) for f in (fa, fb))


def _op_attribute(lw: Lowerer, op: A.Attribute) -> None:
    """One Estimate per edge experiment (the per-experiment lowering, `compact=False`)."""
    source, target = op.source.value, op.target.value
    fa, fb = lw.base(source), lw.base(target)
    method, rules, steps = _attribute_parts(op)
    exps = edge_exps(lw, op, target)
    triples = [[(lw.read(fa, e.sender, pos), lw.read(fb, e.sender, pos),
                 lw.read(fb, e.receiver, pos)) for e in edges] for _, edges, pos in exps]
    wrt = list(dict.fromkeys(g for ts in triples for _, _, g in ts))
    embeds = _embeds(lw, method, fa, fb)
    wrt += embeds[1:]
    rows = []
    measures = lw.measures(op)
    estimates: dict[tuple[int, str], str] = {}
    for col, m in measures:
        metric = lw.metric(fb, target, m.expr)
        back = lw.backward(metric, tuple(wrt), rules)
        for i, (_, edges, pos) in enumerate(exps):
            inputs = tuple(r for t in triples[i] for r in t) + embeds + (back,)
            node = Estimate(method, edges[0].receiver, pos, inputs, steps)
            estimates[i, col] = lw.ir.add(node, inputs)
    for i, (key, _, _) in enumerate(exps):
        values = tuple((col, estimates[i, col]) for col, _ in measures)
        norm = tuple((col, lw.norm_refs(m, target, source)) for col, m in measures
                     if m.normalized)
        rows.append(Row(key, values, norm))
    lw.table(op, rows)


def _edge_sets(lw: Lowerer, op: Any, run: str) -> list[tuple[Positions, EdgeSet]]:
    """The statement's experiments as EdgeSets, one per run of items and positions with the
    same positions, in row order (edge_exps' order). The matches stream into the sets: the
    tens of thousands of `* -> *` are never all held at once as objects."""
    items, where = op.sites, op.clauses.where
    bound: dict[str, None] = {}  # the columns some experiment binds (for `where`'s check)

    def members(item: Any, label: Key, pkey: Key):
        first = True
        for m in iter_edge_item(item, lw.model):
            key = label + m.key + pkey
            if first:  # one item's matches bind the same columns
                bound.update(dict.fromkeys(c for c, _ in key))
                first = False
            if not where or keep(where, key):
                yield key, m.edges

    def runs():
        for item in items:
            label = (("site", _item_text(item)),) if len(items) > 1 else ()
            for pos, i in lw.positions(edge_pos(item), run):
                yield pos, members(item, label, (("pos", i),) if i is not None else ())

    out = []
    for pos, group in itertools.groupby(runs(), key=lambda r: r[0]):
        es = edge_set(itertools.chain.from_iterable(ms for _, ms in group))
        if es.count:
            out.append((pos, es))
    check_where(where, [tuple((c, None) for c in bound)])
    return out


def _op_attribute_compact(lw: Lowerer, op: A.Attribute) -> None:
    """One Estimate per measure and run of experiments at the same positions, standing for
    all of them (an ir_edges.EdgeSet), and a SweepRows block of the table per such run."""
    source, target = op.source.value, op.target.value
    fa, fb = lw.base(source), lw.base(target)
    method, rules, steps = _attribute_parts(op)
    sets = _edge_sets(lw, op, target)
    if not sets:  # `where` kept nothing: the per-experiment lowering's empty table
        _op_attribute(lw, op)
        return
    reads = [(tuple(lw.read(fa, s, pos) for s in es.senders),
              tuple(lw.read(fb, s, pos) for s in es.senders),
              tuple(lw.read(fb, r, pos) for r in es.receivers)) for pos, es in sets]
    embeds = _embeds(lw, method, fa, fb)
    wrt = tuple(dict.fromkeys(g for _, _, gs in reads for g in gs)) + embeds[1:]
    measures = lw.measures(op)
    values: list[list[tuple[str, str]]] = [[] for _ in sets]
    for col, m in measures:
        back = lw.backward(lw.metric(fb, target, m.expr), wrt, rules)
        for i, ((pos, es), (a, b, g)) in enumerate(zip(sets, reads)):
            inputs = a + b + g + embeds + (back,)
            node = Estimate(method, es.receivers[0], pos, inputs, steps, edges=es)
            values[i].append((col, lw.ir.add(node, inputs)))
    norm = tuple((col, lw.norm_refs(m, target, source)) for col, m in measures
                 if m.normalized)
    blocks = tuple(SweepRows(vals[0][1], tuple(vals), norm, es.count, es)
                   for (_, es), vals in zip(sets, values))
    keys = dict.fromkeys(c for _, es in sets for c in es.bound_columns())
    columns = tuple(keys) + tuple(dict.fromkeys(c for c, _ in measures))
    lw.table(op, [], columns, sweeps=blocks)


def lower_edge_op(lw: Lowerer, op: A.Operation) -> None:
    if isinstance(op, A.Attribute):
        if lw.compact:
            _op_attribute_compact(lw, op)
        else:
            _op_attribute(lw, op)
    elif patch_form(lw, op):
        _op_patch_compact(lw, op)  # type: ignore[arg-type]
    else:
        _op_patch(lw, op)  # type: ignore[arg-type]

