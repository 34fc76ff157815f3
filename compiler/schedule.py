"""IR -> Plan: the ordered steps that run an (optimized) IR graph under a memory budget.

A Plan is a list of steps in dependency order:
  - `forward`: one model pass over a chunk of a batch group (compiler/passes/batch.py), or a
    single forward: its members stacked along the batch dimension in the listed order, the
    layers it computes (from `start_layer`), the first position it computes (`p0`, from
    narrow_positions), the logits it produces, and whether it keeps its key/value cache for
    forwards that narrow from it;
  - `vector`, `metric`, `backward`, `estimate`: one node each.
Each step lists the values it caches (Reads it captures) and frees (values whose last use it
is; `kv:F` is forward F's key/value cache). A group is split into chunks so that weights +
cached values + the chunk's activations stay under the budget, and, for narrowed forwards,
so that the positions computed pay for the extra passes (a small dynamic program over the
members' first positions). FLOPs and peak memory come from compiler/costs.py; the naive plan
(one full forward per Forward of the unoptimized graph) is summarized beside it.

The Plan is a pydantic model: `--emit plan` prints it (compiler/dump_plan.py), its JSON is
what a worker process would receive, and runtime/execute.py runs it.
"""

from __future__ import annotations

import math

from . import costs as C
from .ir import Backward, Estimate, Forward, IRGraph, Metric, Read, Select, Vector
from .ir_sweep import count
from .modelspec import ModelSpec
from .passes._graph import ordered
from .plan import ForwardStep, NodeStep, Plan, PlanSummary, Step
from .schedule_sweep import OVERHEAD_FLOPS_PER_LAYER, cheapest_spans, sweep_steps

__all__ = ["ForwardStep", "NodeStep", "Plan", "PlanSummary", "Step", "schedule", "run_shapes",
           "step_uses", "step_produces", "result_nodes", "frees"]


# ---------------------------------------------------------------------------------------------

IG_METHODS = ("ig", "eap_ig")  # estimates that differentiate `steps` interpolated passes

def _write_inputs(ir: IRGraph, fid: str) -> list[str]:
    f: Forward = ir.node(fid)  # type: ignore[assignment]
    out = []
    for w in f.writes:
        write = ir.node(w)
        out += list(write.inputs) + ([write.gate] if write.gate else [])  # type: ignore
    return out


def _uses(ir: IRGraph, nid: str) -> list[str]:
    """The values a node's step needs (Writes are looked through to their inputs)."""
    node = ir.node(nid)
    if isinstance(node, Forward):
        out = _write_inputs(ir, nid) + list(node.inputs) + ([node.start] if node.start else [])
        out += list(node.sparse) + ([node.same_as] if node.same_as else [])  # sparse sweeps
        return out + ([f"kv:{node.twin}"] if node.narrow and node.twin else [])
    if isinstance(node, Metric):
        return [node.forward] + [r for r in (node.reference, node.lens) if r]
    if isinstance(node, Vector):
        return list(node.inputs)
    if isinstance(node, Select):
        return list(node.rows) + [node.reference] + list(node.normalize)
    if isinstance(node, Backward):
        metric: Metric = ir.node(node.metric)  # type: ignore[assignment]
        return list(node.wrt) + _write_inputs(ir, metric.forward)
    if isinstance(node, Estimate):
        out = [i for i in node.inputs if not isinstance(ir.node(i), Metric)]
        back = ir.node(node.inputs[-1])
        if isinstance(back, Backward):
            out += _write_inputs(ir, ir.node(back.metric).forward)  # type: ignore[union-attr]
        return out
    return []


def _units(ir: IRGraph, naive: bool) -> list[tuple[str, list[str]]]:
    """Evaluation units in dependency order: ("forward", members) or (kind, [node])."""
    unit: dict[str, tuple] = {}
    for nid, node in ir.of_type(Forward):
        unit[nid] = ("g", node.group) if node.group is not None and not naive else ("f", nid)
    for nid, data in ir.g.nodes(data=True):
        node = data["node"]
        if isinstance(node, Read):
            unit[nid] = unit[node.forward]
        elif not isinstance(node, Forward):
            unit[nid] = ("n", nid)
    preds: dict[tuple, set[tuple]] = {}  # unit -> the units it waits for
    members: dict[tuple, list[str]] = {}
    for nid in sorted(ir.g.nodes, key=lambda x: (int(x[1:]), x[0])):
        preds.setdefault(unit[nid], set())
        if isinstance(ir.node(nid), Forward):
            members.setdefault(unit[nid], []).append(nid)
    for v, inputs in ir.g._pred.items():  # each edge u -> v (networkx's dict: no views)
        uv = unit[v]
        for u in inputs:
            if unit[u] != uv:
                preds[uv].add(unit[u])

    def first(u: tuple) -> tuple[int, int]:
        ids = members.get(u) or [u[1]]
        # Naive: evaluation order by id; optimized: cheap consumers first (frees values early).
        cheap = 0 if u[0] == "n" and not naive else 1
        return (cheap, min(int(i[1:]) for i in ids))

    keys = {u: first(u) for u in preds}
    out = []
    for u in ordered(preds, key=keys.__getitem__):
        if u in members:
            out.append(("forward", members[u]))
        else:
            node = ir.node(u[1])
            kind = type(node).__name__.lower()
            if kind in ("vector", "metric", "backward", "estimate", "select"):
                out.append((kind, [u[1]]))
    return out


def _chunks(sz: C.GraphSizes, members: list[str], cap_bytes: int | None,
            batch_size: int | None) -> list[tuple[list[str], int]]:
    """Split a group into (members, p0) chunks: by first position, then under the caps."""
    model = sz.model
    first = {m: sz.p0(m) for m in members}
    ordered = sorted(members, key=lambda m: (first[m], int(m[1:])))
    buckets: list[tuple[int, list[str]]] = []
    for m in ordered:
        p = first[m]
        if buckets and buckets[-1][0] == p:
            buckets[-1][1].append(m)
        else:
            buckets.append((p, [m]))
    per_member_rows = sz.rows(members[0])

    memo: dict[int, tuple[int, float]] = {}

    def per_pass(p0: int) -> tuple[int, float]:
        """(most members in one pass from position p0, FLOPs of one member's rows)."""
        if p0 not in memo:
            most = len(members)
            if batch_size is not None:
                most = min(most, max(1, batch_size // per_member_rows))
            one = sz.shape(members[:1], p0)
            if cap_bytes is not None:
                bytes_one = C.forward_bytes(model, one, sz.b)
                most = min(most, max(1, cap_bytes // max(bytes_one, 1)))
            memo[p0] = (most, C.forward_flops(model, one))
        return memo[p0]

    def cap(p0: int) -> int:
        return per_pass(p0)[0]

    layers = model.n_layers - sz.fwd(members[0]).start_layer
    overhead = OVERHEAD_FLOPS_PER_LAYER * (layers + 2)

    def cost(a: int, b: int) -> tuple[float, int]:
        p0 = buckets[a][0]
        n = counts[b] - counts[a]
        most, per = per_pass(p0)
        passes = math.ceil(n / most)
        return passes * overhead + n * per, passes

    counts = [0]
    for _, ms in buckets:
        counts.append(counts[-1] + len(ms))
    out = []
    for a, b in cheapest_spans(len(buckets), lambda a, b: cost(a, b)[0]):
        p0 = buckets[a][0]
        ms = [m for i in range(a, b) for m in buckets[i][1]]
        k = cap(p0)
        out += [(ms[i:i + k], p0) for i in range(0, len(ms), k)]
    return out


def _produces(ir: IRGraph, members: list[str], keep_kv: bool) -> list[str]:
    out = []
    for m in members:
        out.append(m)
        out += [r for r in ir.g.successors(m) if isinstance(ir.node(r), Read)]
        if keep_kv:
            out.append(f"kv:{m}")
    return out


def _generates(ir: IRGraph, fid: str) -> bool:
    from .passes._graph import generates

    nodes = {n: ir.node(n) for n in [fid, *ir.g.successors(fid)]}
    return generates(nodes, {fid: list(ir.g.successors(fid))}, fid)


def _ig_member_flops(sz: C.GraphSizes, fid: str, node: Estimate) -> float:
    """One interpolation step of every member of a compact ig estimate, forward and
    backward counted once: each member's pass starts at its site's layer and unembeds only
    B's metric positions (runtime/ig_sweeps.py)."""
    from .ir_sweep import members, split

    f = sz.fwd(fid)
    positions = None if f.logit_positions is None else len(f.logit_positions)
    sites, _, _ = split(node.space, members(node.space))
    per_site: dict[int, int] = {}
    for s in sites.tolist():
        per_site[s] = per_site.get(s, 0) + 1
    out = 0.0
    for s, k in per_site.items():
        layer = node.space.sites[s].layer
        shape = C.ForwardShape(sz.rows(fid), sz.runs[f.run].width,
                               start_layer=layer if layer is not None else 0,
                               logit_positions=positions, vocab=sz.vocab(fid))
        out += k * C.forward_flops(sz.model, shape)
    return out


def _plan(ir: IRGraph, model: ModelSpec, runs: dict[str, C.RunShape], budget: int | None,
          batch_size: int | None, dtype_bytes: int, weights: int, naive: bool
          ) -> tuple[list[ForwardStep | NodeStep], PlanSummary, list[int]]:
    sz = C.GraphSizes(ir, model, runs, dtype_bytes, naive)
    narrowed_from = set() if naive else {f.twin for _, f in ir.of_type(Forward)
                                         if f.narrow and f.twin}
    units = _units(ir, naive)

    # Values alive before each unit, with groups unsplit: what a chunk must leave room for.
    def unit_uses(kind: str, ids: list[str]) -> set[str]:
        return {u for i in ids for u in _uses(ir, i)}

    last: dict[str, int] = {}
    for k, (kind, ids) in enumerate(units):
        for u in unit_uses(kind, ids):
            last[u] = k
    # (Running totals and a due list per unit: sweeps have thousands of units.)
    live_bytes, due = 0, {}  # due: unit -> [(value, bytes)] it releases
    live_before: list[int] = []
    results = result_nodes(ir)  # kept to the end (a sweep's are [members, examples])
    for k, (kind, ids) in enumerate(units):
        live_before.append(live_bytes)
        made = _produces(ir, ids, any(i in narrowed_from for i in ids)) \
            if kind == "forward" else ids
        for v in made:
            live_bytes += sz.value(v)
            if v not in results:
                due.setdefault(max(k, last.get(v, k)), []).append(sz.value(v))
        live_bytes -= sum(due.pop(k, ()))

    steps: list[ForwardStep | NodeStep] = []
    for k, (kind, ids) in enumerate(units):
        if kind != "forward":
            node = ir.node(ids[0])
            flops = 0.0
            if isinstance(node, Backward):
                flops = 3 * sz.full_flops(ir.node(node.metric).forward)  # type: ignore[union-attr]
            elif isinstance(node, Estimate) and node.method in IG_METHODS:
                back = ir.node(node.inputs[-1])
                fid = ir.node(back.metric).forward  # type: ignore[union-attr]
                if node.method == "eap_ig":
                    # `steps` forwards and backwards of B at interpolated inputs (batched at
                    # run time, runtime/edge_estimates.py), beside the Backward's own
                    flops = 3 * node.steps * sz.full_flops(fid)
                else:
                    flops = 3 * (node.steps + 1) * (
                        sz.full_flops(fid) if node.space is None else
                        sz.full_flops(fid) * count(node.space) if naive else  # full passes each
                        # (forward and a backward of input gradients only: about 2 forwards)
                        2 / 3 * _ig_member_flops(sz, fid, node))
            steps.append(NodeStep(kind=kind, node=ids[0], flops=flops))  # type: ignore[arg-type]
            continue
        cap = None
        if budget is not None:
            made = sum(sz.value(v) for v in _produces(ir, ids, False))
            cap = budget - weights - C.RESERVE_BYTES - live_before[k] - made
        f = sz.fwd(ids[0])
        if f.sweep is not None:
            steps += sweep_steps(ir, sz, ids[0], cap, batch_size, naive)
            continue
        if len(ids) > 1:
            chunks = _chunks(sz, ids, cap, batch_size)
        else:
            chunks = [(ids, sz.p0(ids[0]))]
        for members, p0 in chunks:
            f = sz.fwd(members[0])
            shape = sz.shape(members, p0)
            keep = any(m in narrowed_from for m in members)
            steps.append(ForwardStep(
                members=members, run=f.run, samples=f.samples, rows=shape.rows,
                width=shape.width, p0=p0, start_layer=shape.start_layer,
                start=None if naive else f.start, twin=None if naive else f.twin,
                keep_kv=keep, logit_positions=shape.logit_positions,
                logit_tokens=shape.vocab is not None, generate=_generates(ir, members[0]),
                flops=C.forward_flops(model, shape),
                bytes=C.forward_bytes(model, C.ForwardShape(**{**shape.__dict__,
                                                               "cache": p0 > 0 or keep}),
                                      dtype_bytes),
                caches=[r for m in members for r in ir.g.successors(m)
                        if isinstance(ir.node(r), Read)]))

    peak, over = weights + C.RESERVE_BYTES, []
    live_bytes = 0
    produced = [step_produces(ir, s) for s in steps]
    for k, (s, gone) in enumerate(zip(steps, frees(ir, steps, results, produced))):
        live_bytes += sum(sz.value(v) for v in produced[k])
        now = weights + C.RESERVE_BYTES + live_bytes + (s.bytes if isinstance(s, ForwardStep)
                                                          else 0)
        peak = max(peak, now)
        if budget is not None and now > budget and isinstance(s, ForwardStep):
            over.append(k)
        s.frees = gone
        live_bytes -= sum(sz.value(v) for v in gone)
    fsteps = [s for s in steps if isinstance(s, ForwardStep)]
    summary = PlanSummary(
        forwards=sum(s.passes for s in fsteps), experiments=sum(s.experiments() for s in fsteps),
        # (an integrated-gradients estimate differentiates each of its interpolation steps)
        backwards=sum(1 for s in steps if s.kind == "backward") + sum(
            n.steps for n in (ir.node(s.node) for s in steps if s.kind == "estimate")
            if isinstance(n, Estimate) and n.method in IG_METHODS),
        flops=sum(s.flops for s in steps), peak_bytes=peak)
    return steps, summary, over


def schedule(ir: IRGraph, model: ModelSpec, runs: dict[str, C.RunShape],
             budget_bytes: int | None = None, batch_size: int | None = None,
             dtype_bytes: int = 4, weights_bytes: int | None = None,
             naive_ir: IRGraph | None = None, passes: tuple[str, ...] = ()) -> Plan:
    """The Plan of an optimized graph (and, given `naive_ir`, the naive plan's summary).
    `runs` gives every run's token counts; `budget_bytes` None plans without a memory cap."""
    weights = C.weights_bytes(model, dtype_bytes) if weights_bytes is None else weights_bytes
    steps, summary, over = _plan(ir, model, runs, budget_bytes, batch_size, dtype_bytes,
                                 weights, naive=False)
    naive = None
    if naive_ir is not None:
        naive = _plan(naive_ir, model, runs, None, None, dtype_bytes, weights, naive=True)[1]
    return Plan(steps=steps, budget_bytes=budget_bytes, batch_size=batch_size,
                weights_bytes=weights, dtype_bytes=dtype_bytes, passes=list(passes),
                optimized=summary, naive=naive, over_budget=over)


def run_shapes(checked, default_tokens: int = 16) -> dict[str, C.RunShape]:
    """RunShapes from what `check` learned (token counts when a tokenizer was at hand, else
    `default_tokens` per prompt) and the spec's data tables."""
    out = {}
    for name, info in checked.runs.items():
        lengths = tuple(info.lengths) if info.lengths else (default_tokens,) * info.n_examples
        columns = {}
        if info.data:
            table = checked.data[info.data]
            for col in table.columns:
                vals = [r.get(col) for r in table.rows]
                if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                    columns[(table.name, col)] = tuple(vals)
        out[name] = C.RunShape(lengths, columns)
    return out


def step_uses(ir: IRGraph, step: ForwardStep | NodeStep) -> set[str]:
    """The values a step reads (its members' write inputs, start states, key/value caches)."""
    ids = step.members if isinstance(step, ForwardStep) else [step.node]
    return {u for i in ids for u in _uses(ir, i)}


def step_produces(ir: IRGraph, step: ForwardStep | NodeStep) -> list[str]:
    """The values a step makes: forwards, their Reads and kept caches; or its node."""
    if isinstance(step, ForwardStep):
        return _produces(ir, step.members, step.keep_kv)
    return [step.node]


def result_nodes(ir: IRGraph) -> set[str]:
    """The nodes whose values are results (Metric, Estimate, and the Reads that `read`
    tables report): never freed."""
    reads = {nid for t in ir.tables for row in t.rows for _, nid in row.values
             if nid in ir.g and isinstance(ir.node(nid), Read)}
    return {n for n, _ in ir.of_type(Metric)} | {n for n, _ in ir.of_type(Estimate)} | \
        {n for n, _ in ir.of_type(Select)} | reads


def frees(ir: IRGraph, steps: list, keep: set[str],
          produced: list[list[str]] | None = None) -> list[list[str]]:
    """For each step, the values to release after it: each value after its last use among
    `steps` (right after it is made, when none of them uses it); `keep` never. Due lists
    keep this linear: sweeps have thousands of steps. `produced`: each step's
    `step_produces`, when the caller has them."""
    last: dict[str, int] = {}
    for k, s in enumerate(steps):
        for u in step_uses(ir, s):
            last[u] = k
    due: dict[int, list[str]] = {}
    out = []
    for k, s in enumerate(steps):
        for v in step_produces(ir, s) if produced is None else produced[k]:
            if v not in keep:
                due.setdefault(max(k, last.get(v, k)), []).append(v)
        out.append(sorted(due.pop(k, ()), key=lambda v: (v[:3] == "kv:", v)))
    return out
