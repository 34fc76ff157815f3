"""Text and drawings of what the optimizer made, for people and golden tests:

- `dump_plan(plan)`: the Plan (`patchc compile SPEC --emit plan`): a summary beside the naive
  plan's (model passes, FLOPs, peak memory), then one line per step;
- `emit_plan(checked, ir, optimized, memory=None)`: schedules and prints in one call (what
  the CLI calls; token counts come from `check`, else 16 per prompt are assumed);
- `optimizer_fields(ir)` / `ir_text(ir)`: dump_ir plus the optimizer's Forward fields
  (twin, start layer, narrowing, batch group, trimmed logits);
- `ir_dot(ir)`: the IR graph in graphviz DOT (`--emit dot`; render with `dot -Tsvg`).
"""

from __future__ import annotations

from .dump import dump_ir
from .ir import Backward, Estimate, Forward, IRGraph, Metric, Read, Select, Vector, Write
from .ir_sweep import count, describe
from .schedule import ForwardStep, Plan, run_shapes, schedule


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _flops(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.1f} {unit}FLOP"
        n /= 1000
    raise AssertionError


def _ids(ids: list[str], most: int = 6) -> str:
    if len(ids) <= most:
        return " ".join(ids)
    return " ".join(ids[:most - 2]) + f" ... {ids[-1]} ({len(ids)})"


def _step(k: int, s) -> str:
    if not isinstance(s, ForwardStep):
        cost = f"  {_flops(s.flops)}" if s.flops else ""
        line = f"{k:>4}  {s.kind} {s.node}{cost}"
    else:
        layers = f"L{s.start_layer}.." if s.start_layer else "all layers"
        positions = f"pos {s.p0}..{s.width - 1}" if s.p0 else f"{s.width} pos"
        if s.logit_positions is None:
            logits = "logits all"
        else:
            logits = f"logits {s.logit_positions} pos" + (" tokens" if s.logit_tokens else "")
        extra = [f"from {s.start}" if s.start else "", "keep kv" if s.keep_kv else "",
                 "generate" if s.generate else ""]
        chunk = f" members {s.sweep[0]}..{s.sweep[1] - 1}" if s.sweep else ""
        line = (f"{k:>4}  forward {_ids(s.members)}{chunk}  {s.run} x{s.rows}  {layers},"
                f" {positions}, {logits}  {_flops(s.flops)}  {_bytes(s.bytes)}"
                + "".join(f"  {e}" for e in extra if e))
        if s.caches:
            line += f"  caches {_ids(s.caches, 4)}"
    if s.frees:
        line += f"  frees {_ids(s.frees, 4)}"
    return line


def dump_plan(plan: Plan) -> str:
    o, n = plan.optimized, plan.naive
    budget = "unbounded" if plan.budget_bytes is None else _bytes(plan.budget_bytes)
    lines = [f"plan: {o.forwards} model passes for {o.experiments} forwards, "
             f"{o.backwards} backwards" + (f" (naive: {n.forwards} passes)" if n else "")]
    if n:
        ratio = n.flops / o.flops if o.flops else float("inf")
        lines.append(f"flops: {_flops(o.flops)} (naive {_flops(n.flops)}: {ratio:.1f}x)")
        lines.append(f"peak memory: {_bytes(o.peak_bytes)} (naive {_bytes(n.peak_bytes)}), "
                     f"budget {budget}, weights {_bytes(plan.weights_bytes)}")
    else:
        lines.append(f"flops: {_flops(o.flops)}")
        lines.append(f"peak memory: {_bytes(o.peak_bytes)}, budget {budget}, "
                     f"weights {_bytes(plan.weights_bytes)}")
    if plan.batch_size:
        lines.append(f"batch size: at most {plan.batch_size} rows per pass")
    if plan.passes:
        lines.append("passes: " + ", ".join(plan.passes))
    if plan.over_budget:
        lines.append("over budget (one forward each, cannot split further): steps "
                     + ", ".join(str(k + 1) for k in plan.over_budget))
    lines.append("steps:")
    k = 0
    while k < len(plan.steps):
        s = plan.steps[k]
        j = k + 1
        if not isinstance(s, ForwardStep) and not s.flops:
            # A run of cheap steps of one kind (the metrics after a batched pass): one line.
            while j < len(plan.steps) and plan.steps[j].kind == s.kind and \
                    not plan.steps[j].flops:  # type: ignore[union-attr]
                j += 1
        if j - k > 1:
            run = plan.steps[k:j]
            frees = [v for x in run for v in x.frees]
            lines.append(f"{k + 1:>4}  {s.kind} {_ids([x.node for x in run])}"  # type: ignore[union-attr]
                         + (f"  frees {_ids(frees, 4)}" if frees else ""))
        else:
            lines.append(_step(k + 1, s))
        k = j
    return "\n".join(lines) + "\n"


def dump_shards(shards: list) -> str:
    """How a plan divides over workers (compiler/shard.py): per worker its share of the
    FLOPs, the results it reports, then its steps as dump_plan prints them."""
    total = sum(sh.flops for sh in shards) or 1.0
    lines = [f"workers: {len(shards)}, together {_flops(total)} "
             f"(the busiest {max(sh.flops for sh in shards) / total:.0%} of it)"]
    for w, sh in enumerate(shards):
        part = f" ({_ids(list(sh.parts))} in part)" if sh.parts else ""
        lines.append(f"worker {w}: {len(sh.plan.steps)} steps, {_flops(sh.flops)} "
                     f"({sh.flops / total:.0%}), reports {_ids(list(sh.owns))}{part}")
        lines += ["  " + line for line in dump_plan(sh.plan).splitlines()
                  if line[:1] == " " or line[:1].isdigit()]
    return "\n".join(lines) + "\n"


def emit_plan(checked, ir: IRGraph, optimized: IRGraph, memory: str | None = None,
              workers: int = 1) -> str:
    """`patchc compile SPEC --emit plan [--workers N]`: the optimized graph's Plan beside the
    naive one, and with N > 1 how it divides over N workers. The budget is `memory`, else
    the spec's `set memory`, else unbounded (the runtime reads free memory instead)."""
    from .costs import ASSUMED_FLOPS_PER_SECOND, overhead_seconds, overhead_share, parse_bytes
    from .pipeline import PASSES

    memory = memory or checked.options.memory
    budget = parse_bytes(memory) if memory else None
    dtype_bytes = 2 if checked.options.dtype in ("bfloat16", "float16") else 4
    plan = schedule(optimized, checked.model, run_shapes(checked), budget,
                    checked.options.batch_size, dtype_bytes, naive_ir=ir,
                    passes=tuple(p.__name__ for p in PASSES))
    nodes = ir.g.number_of_nodes()
    seconds = overhead_seconds(nodes, plan.optimized.forwards)
    share = overhead_share(seconds, plan.optimized.flops)
    overhead = sparse_line(optimized, plan)
    said = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    overhead += (f"overhead: ~{said} estimated for {nodes} graph nodes and "
                f"{plan.optimized.forwards} model passes (planning, hooks, bookkeeping, "
                f"results; not model passes): ~{share:.1%} of the run at "
                f"{ASSUMED_FLOPS_PER_SECOND:.0e} FLOP/s\n")
    if workers > 1:
        from .shard import shard

        return dump_plan(plan) + overhead + dump_shards(shard(optimized, plan, workers))
    return dump_plan(plan) + overhead


def sparse_line(ir: IRGraph, plan: Plan) -> str:
    """How many experiments are latent-sweep forwards (or members of compact latent sweeps)
    that run only if a latent they write is active (compiler/lower_latents.py): only the run
    knows which are, so the plan lists their passes as if all were; the run's manifest counts
    those it skipped."""
    gated = {nid: len(f.sweep) if f.sweep is not None else 1
             for nid, f in ir.of_type(Forward) if f.sparse}
    if not gated:
        return ""
    steps = sum(1 for s in plan.forward_steps() if gated.keys() & set(s.members))
    return (f"sparse latent sweeps: {sum(gated.values())} experiments run only where a latent "
            f"they write is active (at most {steps} passes above; decided at run time, the "
            "manifest's plan.sparse_skipped counts those skipped)\n")


def optimizer_fields(ir: IRGraph) -> list[str]:
    """One line per Forward the passes changed: `f5: twin f2, start L3 <- r12, narrow, ...`."""
    out = []
    for nid, f in sorted(ir.of_type(Forward), key=lambda x: int(x[0][1:])):
        parts = []
        if f.twin:
            parts.append(f"twin {f.twin}")
        if f.start:
            parts.append(f"start L{f.start_layer} <- {f.start}")
        if f.narrow:
            parts.append("narrow")
        if f.group is not None:
            parts.append(f"group {f.group}")
        if f.logit_positions is not None:
            pos = ", ".join(str(p) for p in f.logit_positions) or "none"
            parts.append(f"logits @ {pos}" + (" tokens" if f.logit_tokens else ""))
        if f.live_from is not None:
            parts.append(f"live from L{f.live_from}")
        if parts:
            out.append(f"{nid}: " + ", ".join(parts))
    return out


def ir_text(ir: IRGraph) -> str:
    """dump_ir, then the optimizer's Forward fields (deterministic: golden tests use it)."""
    fields = optimizer_fields(ir)
    return dump_ir(ir) + ("\noptimizer:\n" + "\n".join(f"  {x}" for x in fields) + "\n"
                          if fields else "")


_SHAPES = {Forward: "box", Read: "ellipse", Write: "invhouse", Vector: "diamond",
           Metric: "doubleoctagon", Backward: "box3d", Estimate: "hexagon", Select: "octagon"}


def _label(nid: str, node) -> str:
    if isinstance(node, Forward):
        text = f"{nid} forward {node.run}"
        if node.sweep is not None:
            text += f"\\n{describe(node.sweep)}"
        if node.start:
            text += f"\\nfrom L{node.start_layer}"
        if node.narrow:
            text += "\\nnarrow"
        if node.group is not None:
            text += f"\\ngroup {node.group}"
        return text
    if isinstance(node, (Read, Write)):
        mode = "read" if isinstance(node, Read) else node.mode
        return f"{nid} {mode}\\n{node.site} @ {node.pos}"
    if isinstance(node, Metric):
        return f"{nid} {node.name}"
    if isinstance(node, Estimate):
        if node.edges is not None:
            return f"{nid} {node.method}\\n{node.edges.n_edges} edges"
        members = f"\\n{count(node.space)} members" if node.space is not None else ""
        return f"{nid} {node.method}\\n{node.site}{members}"
    if isinstance(node, Backward):
        return f"{nid} backward {node.rules}"
    if isinstance(node, Select):
        return f"{nid} select {node.table}"
    return f"{nid} {node.name}"


def ir_dot(ir: IRGraph) -> str:
    """The graph in DOT: one node per IR node (shape by kind), edges = data dependencies;
    forwards of one batch group are drawn in one cluster."""
    lines = ["digraph patchc {", "  rankdir=LR;", '  node [fontname="monospace"];']
    groups: dict[int, list[str]] = {}
    for nid in sorted(ir.g.nodes, key=lambda x: (x[0], int(x[1:]))):
        node = ir.node(nid)
        label = _label(nid, node).replace('"', '\\"')
        lines.append(f'  {nid} [shape={_SHAPES[type(node)]}, label="{label}"];')
        if isinstance(node, Forward) and node.group is not None:
            groups.setdefault(node.group, []).append(nid)
    for g, members in sorted(groups.items()):
        lines.append(f'  subgraph cluster_{g} {{ label="batch {g}"; {"; ".join(members)}; }}')
    for u, v in sorted(ir.g.edges, key=lambda e: (e[0][0], int(e[0][1:]), e[1][0],
                                                  int(e[1][1:]))):
        lines.append(f"  {u} -> {v};")
    lines.append("}")
    return "\n".join(lines) + "\n"
