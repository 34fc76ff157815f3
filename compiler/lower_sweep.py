"""Lowering a statement to compact sweeps (compiler/ir_sweep.py) instead of one Forward per
experiment.

`compact_form` is the one place that decides which statements lower compactly: a swap,
ablation (zero, mean, resample), scale or steer over ONE site pattern whose activation is
[batch, positions, features] (residual stream, block outputs, MLP neurons, q/k/v/z, a head's
output, a dictionary's latents), at any positions but per-example spans, with scalar sweeps
and `where` filters, on a run without noise samples, measured by metrics of logits at one
position (no kl, loss or generation). Everything else (backpatch pairs, `all(...)` groups,
subspaces, noise samples, attribute/compare/dla) keeps one Forward per experiment
(lower_ops.py).

A compact statement becomes one sweep Forward per run of consecutive sites in the same layer
(so share_prefix starts each at its layer), each with the Reads its members gather from, one
Metric per measure (valued [members, examples]) and a SweepRows block of its table. A
latent sweep (every latent of a dictionary shares its host's layer) is one Forward per
statement and dictionary, gated as lower_latents.sweep_gate says: the runtime skips the
members whose latents are inactive in both runs (runtime/sparse.py).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

from . import ast as A
from .ir import ALL_POSITIONS, Forward
from .ir_sweep import READ_MODES, Space, SweepRows, SweepSpec, bound_columns, count, members, \
    site_wholes, split
from .lower_exprs import metric_parts, split_sweep
from .lower_latents import sweep_gate
from .lowerer import Lowerer, check_where

# Sites whose activation is [batch, positions, features]: a member edits one slice of it.
COMPACT_KINDS = frozenset({
    "embed", "resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "mlp.pre",
    "mlp.post", "attn.z", "attn.q", "attn.k", "attn.v", "z", "q", "k", "v", "out"})
_POSITION_KINDS = frozenset({"all", "last", "index", "range", "set", "column"})
_NOT_COMPACT_METRICS = (A.MKL, A.MLoss) + A.GENERATING


def compact_form(lw: Lowerer, op: A.Operation) -> bool:
    """Does `op` lower to compact sweeps? (See the module docstring for which forms do.)"""
    if not isinstance(op, (A.Swap, A.Trace, A.Ablate, A.Scale, A.Steer)):
        return False
    if A.table_name(op) in lw.row_tables:  # a circuit ranks its rows (lower_circuits.py)
        return False
    if len(op.sites) != 1 or not isinstance(op.sites[0], A.SiteRef):
        return False
    item = op.sites[0]
    if item.subspace or (item.kind not in COMPACT_KINDS and not _latents(lw, item)):
        return False
    target = op.target.value
    lw.bake(target)
    if lw.samples[target] != 1:
        return False
    kinds = {p.kind for p, _ in lw.positions(item.pos, target)}
    if not kinds <= _POSITION_KINDS:
        return False
    if isinstance(op, A.Ablate) and op.how.kind == "mean" and "all" in kinds:
        return False  # the token-aligned mean over prompts of every length: per experiment
    if not logit_metrics(lw, op):
        return False
    return _latents(lw, item) or not _one_per_layer(lw, op)


def logit_metrics(lw: Lowerer, op: Any) -> bool:
    """Is `op` measured by metrics of the logits at one position only (no kl, loss or
    generation)? A sweep chunk measures its members right after their pass."""
    for _, m in lw.measures(op):
        _, body, _ = metric_parts(m.expr, lw.checked.metrics)
        if any(isinstance(e, _NOT_COMPACT_METRICS) for e in A.metric_nodes(body)):
            return False
    return True


def sweep_positions(lw: Lowerer, pos: Any, run: str) -> bool:
    """Are the positions `pos` of `run` ones a sweep member can write (not per-example spans)?"""
    return {p.kind for p, _ in lw.positions(pos, run)} <= _POSITION_KINDS


def _one_per_layer(lw: Lowerer, op: Any) -> bool:
    """Has the statement at most one member per layer (`L*.mlp.out`, `L*.resid_pre`)?

    Such a sweep's chunks are single Forwards anyway, but as sweeps the batch pass cannot
    merge them with the plain Forwards that start at the same layer; lowered per experiment
    they can, and there are no more nodes than layers."""
    space = _space(lw, op)
    layers = {s.layer for s in space.sites}
    return count(space) <= len(layers)


def _latents(lw: Lowerer, item: A.SiteRef) -> bool:
    """Does `item` name a dictionary's latents (`s1[*]`, `s1[3]`, `s1[0:8]`, not `s1.err`)?"""
    # (`s1.err` names no dictionary: the error term is no latent)
    return item.layer is None and item.head is None and \
        lw.model.dictionary(item.kind) is not None


def _variants(op: A.Operation) -> list[tuple[float | None, float, A.VExpr | None]]:
    """(scale column value, the write's scale, steering vector) per scalar variant."""
    if isinstance(op, A.Steer):
        return [(v, s, vec) for v, s, vec in split_sweep(op.by)]
    if isinstance(op, A.Scale):
        if isinstance(op.by, A.ScalarSweep):
            return [(v, v, None) for v in op.by.values]
        return [(None, op.by.value, None)]
    return [(None, 1.0, None)]


def _space(lw: Lowerer, op: Any) -> Space:
    """The whole statement's index set (every layer), expanded once per statement (a neuron
    sweep has tens of thousands of sites; compact_form, compact_rows and lower_compact ask)."""
    hit = lw.spaces.get(id(op))
    if hit is None or hit[0] is not op:  # (the statement is kept, so its id stays its own)
        hit = lw.spaces[id(op)] = (op, _expand_space(lw, op))
    return hit[1]


def _expand_space(lw: Lowerer, op: Any) -> Space:
    item = op.sites[0]
    matches = lw.sites.expand(item, lw.model)
    poss = lw.positions(item.pos, op.target.value)
    variants = _variants(op)
    return Space(tuple(m.sites[0] for m in matches), tuple(m.key for m in matches),
                 tuple(p for p, _ in poss), tuple(i for _, i in poss),
                 tuple(v for v, _, _ in variants), (), tuple(op.clauses.where))


def compact_rows(lw: Lowerer, op: Any) -> int:
    """Rows of a compact statement's table, from its index set alone."""
    space = _space(lw, op)
    check_where(op.clauses.where, [tuple((c, None) for c in bound_columns(space))])
    return count(space)


def _mode(op: Any) -> tuple[str, str | None]:
    """(template mode, the run its Reads come from)."""
    if isinstance(op, (A.Swap, A.Trace)):
        return "replace", op.source.value
    if isinstance(op, A.Ablate):
        mode = {"zero": "zero", "mean": "mean", "resample": "resample"}[op.how.kind]
        return mode, op.how.run
    if isinstance(op, A.Scale):
        return "mul", None
    return "add", None


def lower_compact(lw: Lowerer, op: Any) -> None:
    """`op` as sweep Forwards, one per run of consecutive sites of one layer, and its Table."""
    space = _space(lw, op)
    check_where(op.clauses.where, [tuple((c, None) for c in bound_columns(space))])
    mode, read_run = _mode(op)
    # The normalization source: the swap's source run; an ablation's baseline has none.
    source = op.source.value if isinstance(op, (A.Swap, A.Trace)) else None
    if isinstance(op, A.Ablate) and op.how.kind != "zero":
        source = op.how.run
    if isinstance(op, (A.Scale, A.Steer)):
        source = None
    blocks = []
    for fid, part, n in sweep_forwards(lw, op, space, mode, read_run):
        values, norm = [], []
        for col, m in lw.measures(op):
            values.append((col, lw.metric(fid, op.target.value, m.expr)))
            if m.normalized:
                norm.append((col, lw.norm_refs(m, op.target.value, source)))
        blocks.append(SweepRows(fid, tuple(values), tuple(norm), n, part))
    columns = bound_columns(space) + tuple(dict.fromkeys(c for c, _ in lw.measures(op)))
    lw.table(op, [], columns, sweeps=tuple(blocks))


def sweep_forwards(lw: Lowerer, op: Any, space: Space, mode: str, read_run: str | None
                   ) -> Iterator[tuple[str, Space, int]]:
    """`space` (of `op`'s target run) as sweep Forwards writing `mode` (from `read_run`'s
    base Forward), one per run of consecutive sites of one layer that keeps a member:
    yields (Forward id, its part of the space, its member count) each, before making the
    next (the caller adds the Forward's Metrics in between: node ids stay in that order).
    The parts' members are consecutive runs of the space's, in order."""
    target = op.target.value
    baked = lw.bake(target)
    variants = _variants(op)
    seed = lw.options.seed if mode == "resample" else None
    order = range(len(space.sites))
    for _, group in itertools.groupby(order, key=lambda i: space.sites[i].layer):
        ids = list(group)
        part = Space(tuple(space.sites[i] for i in ids), tuple(space.site_keys[i] for i in ids),
                     space.positions, space.pos_keys, space.variants, space.prefix,
                     space.where)
        n = count(part)
        if n == 0:
            continue
        if part.where:  # only the sites `where` keeps a member of (and read only those)
            used = sorted(set(split(part, members(part))[0].tolist()))
            if len(used) < len(part.sites):
                part = Space(tuple(part.sites[i] for i in used),
                             tuple(part.site_keys[i] for i in used), part.positions,
                             part.pos_keys, part.variants, part.prefix, part.where)
        wholes = site_wholes(part)[0]
        whole: tuple = ()
        inputs: tuple[str, ...] = ()
        if mode in READ_MODES:
            assert read_run is not None
            src = lw.base(read_run)
            whole = wholes
            inputs = tuple(lw.read(src, w, ALL_POSITIONS) for w in whole)
        elif mode == "add":
            inputs = tuple(lw.vector(vec, lw.site_dim(part.sites[0]))
                           for _, _, vec in variants)  # type: ignore[arg-type]
        spec = SweepSpec(part, mode, tuple(s for _, s, _ in variants), seed, whole)
        # Latents: members whose latents are zero in both runs are skipped at run time.
        gates, same_as = sweep_gate(lw, target, read_run, wholes, mode, spec.scales)
        fid = lw.ir.add(Forward(target, baked, lw.n_experiments, 1, sweep=spec,
                                inputs=inputs, sparse=gates, same_as=same_as),
                        baked + inputs + gates + ((same_as,) if same_as else ()))
        lw.n_experiments += n
        yield fid, part, n
