"""The plan interpreter: runs an optimized IR graph step by step as compiler/schedule.py
ordered it, with the same results as runtime/naive.py (its oracle).

A forward step stacks its member forwards along the batch dimension (member-major: rows
[i*N, (i+1)*N) are member i, N = examples x noise samples). Every member's writes and reads
are built exactly as the naive interpreter builds them, for the member's own batch, and see
only the member's rows, so batching changes nothing a member computes. Hooks of one site
are merged into one hook. Then, around the model's own forward (runtime/prefix.py):
  - start_layer > 0: blocks below it are stubbed and the twin's cached resid_pre is fed in;
  - p0 > 0: only positions p0.. are fed, after a copy of the twin's key/value cache;
  - logits are computed only where (and for the token ids that) metrics read.
Values are released as the plan's `frees` say. Forwards whose metrics generate text run as
in the naive interpreter; Vector, Metric, Backward and Estimate nodes are evaluated by the
naive interpreter's code (runtime/estimates.py receives this interpreter as its `interp`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import torch

from patchc.compiler import ast as A
from patchc.compiler.budget import budget_error, memory_span, smallest_budget
from patchc.compiler.costs import RunShape
from patchc.compiler.ir import Backward, Forward, IRGraph, Metric, Positions, Read, Write
from patchc.compiler.schedule import ForwardStep, Plan, schedule

from . import metrics as M
from .circuits import gated
from .estimates import Trim, chained, gradients
from .inputs import Batch, position_index
from .forward_values import ForwardOutput
from .naive import Interpreter
from .compat import blocks_return_tuples, output_cache, with_cache
from .reading import collect_reads
from .pass_plan import live_mlp, logit_plan, replaced, top_block, unaligned_sources
from .prefix import (live_positions, narrowable, prefix_cache, skip_above, skip_layers,
                     trimmed_logits, widen)
from .edge_stack import Senders
from .edges import edge_hooks, is_edge
from .generate import run_generating
from .sweeps import run_chunk
from .adapters.dictionary import repeated_blocks
from .sparse import Sparse, borrowed_metrics
from .writes import make_readers, make_writer
from .memory import memory_budget


class Executor(Interpreter):
    """Evaluates an optimized IR graph through its Plan."""

    batched_edges = True  # a compact edge Estimate in one batched product

    def __init__(self, checked, model: torch.nn.Module, tokenizer, adapter,
                 progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__(checked, model, tokenizer, adapter, progress)
        self.kv: dict[str, Any] = {}
        self.plan: Plan | None = None
        self._remap: torch.Tensor | None = None
        self.batched_estimates = True  # compact estimates as tensor operations
        self._tokens: dict[tuple[str, int], Callable[[A.Tok], torch.Tensor]] = {}
        self._remapped: dict[tuple, dict] = {}  # token_ids through a remap, per remap

    # ---- planning -----------------------------------------------------------------------
    @functools.cached_property
    def weights(self) -> int:
        """The bytes of the model's parameters (read once per run)."""
        return sum(p.nbytes for p in self.model.parameters())

    def budget(self, share: int = 1) -> int:
        """The memory budget of this run's plan (runtime/memory.py); `share`: how many worker
        processes compute on this device (they split its memory)."""
        return memory_budget(self.checked.options.memory, self.device, self.weights, share)

    def plan_inputs(self) -> tuple:
        """What `prepare` reads of the model besides the graph and the tokens (a kept plan
        is reused only for the same): device, dtype, weights' bytes, whether its key/value
        cache can be cut (narrowable)."""
        return (str(self.device), next(self.model.parameters()).dtype, self.weights,
                narrowable(self.model.config))

    def prepare(self, ir: IRGraph, naive_ir: IRGraph | None = None, share: int = 1,
                budget: int | None = None) -> tuple[IRGraph, Plan]:
        """The graph as this model can run it, and its Plan for the real token counts
        under `budget` (None: self.budget(share))."""
        if any(f.narrow for _, f in ir.of_type(Forward)) and \
                not narrowable(self.model.config):  # sliding-window caches cannot be cut
            ir = _without_narrowing(ir)
        runs = {}
        for name in {f.run for _, f in ir.of_type(Forward)}:
            batch = self.run_inputs(name).batch
            cols = {k: tuple(v) for k, v in self.columns_for(name).items()}
            runs[name] = RunShape(tuple(batch.lengths), cols)
        ir = unaligned_sources(ir, {name: r.lengths for name, r in runs.items()})
        param = next(self.model.parameters())
        weights = self.weights
        options = self.checked.options
        budget = self.budget(share) if budget is None else budget
        plan = schedule(ir, self.checked.model, runs, budget, options.batch_size,
                        param.element_size(), weights, naive_ir)
        if plan.over_budget and options.memory is not None:
            # the user's `set memory` cannot be held even one experiment per pass: refuse
            # before any pass, as `check` does, naming the smallest budget that fits
            need = smallest_budget(ir, self.checked.model, runs, options.batch_size,
                                   param.element_size(), weights)
            raise budget_error(plan, need * share, memory_span(self.checked.spec)
                               ).with_source(self.checked.spec.source)
        return ir, plan

    # ---- evaluation ---------------------------------------------------------------------
    def run(self, ir: IRGraph, plan: Plan | None = None) -> dict[str, Any]:
        if plan is None:
            ir, plan = self.prepare(ir)
        self.plan = plan
        results: dict[str, Any] = {}
        total = sum(s.experiments() for s in plan.forward_steps())
        done = 0
        if self.progress:  # the total is known now: a progress bar can show it and an eta
            self.progress(0, total)
        fused = _fused_backwards(ir, plan)
        self.sparse = Sparse(self, ir, plan)
        for step in plan.steps:
            started = time.perf_counter()
            if isinstance(step, ForwardStep) and step.members[0] in fused:
                self.forward_backward(ir, step, fused[step.members[0]])
                self.node_seconds[step.members[0]] = time.perf_counter() - started
                done += 1
                if self.progress:
                    self.progress(done, total)
            elif isinstance(step, ForwardStep):
                for part in self.sparse.parts(step):  # the step, or a sparse sweep's passes
                    self.forward_step(ir, part)
                spent = (time.perf_counter() - started) / len(step.members)
                for m in step.members:
                    self.node_seconds[m] = self.node_seconds.get(m, 0.0) + spent
                done += step.experiments()
                if self.progress:
                    self.progress(done, total)
            elif step.node not in self.values:  # else a Backward taken in its forward's pass
                self.evaluate(ir, step.node, ir.node(step.node), results)
                self.node_seconds[step.node] = time.perf_counter() - started
            for v in step.frees:
                if v.startswith("kv:"):
                    self.kv.pop(v[3:], None)
                elif v not in results:
                    self.values.pop(v, None)
        collect_reads(ir, self.values, results)
        return results

    def token_ids(self, run: str, n: int):
        ids = self.token_lookup(run, n)
        remap = self._remap
        if remap is None:
            return ids
        # Each token's columns made once per remap (kept with the remap itself: an id alone
        # could be a freed tensor's).
        key = (id(remap), run, n)
        if key not in self._remapped or self._remapped[key][0] is not remap:
            self._remapped[key] = (remap, {})
        made = self._remapped[key][1]

        def columns(tok: A.Tok) -> torch.Tensor:
            if tok not in made:
                made[tok] = remap[ids(tok)]
            return made[tok]

        return columns

    def token_lookup(self, run: str, n: int) -> Callable[[A.Tok], torch.Tensor]:
        """The naive interpreter's token ids, each token's tensor made once per run: every
        step's logit plan and every metric ask for the same few (callers only read them)."""
        key = (run, n)
        if key not in self._tokens:
            lookup, made = super().token_ids(run, n), {}

            def ids(tok: A.Tok) -> torch.Tensor:
                if tok not in made:
                    made[tok] = lookup(tok)
                return made[tok]

            self._tokens[key] = ids
        return self._tokens[key]

    def metric(self, ir: IRGraph, node: Metric) -> torch.Tensor:
        """As the naive interpreter; logits trimmed to token ids are indexed through the map
        from token id to column."""
        out = self.values[node.forward]
        # A lens metric decodes a Read over the whole vocabulary: no trimmed columns.
        self._remap = getattr(out, "token_map", None) if node.lens is None else None
        try:
            return super().metric(ir, node)
        finally:
            self._remap = None

    # ---- forwards -----------------------------------------------------------------------
    def forward_backward(self, ir: IRGraph, step: ForwardStep, bid: str) -> None:
        """The step's one Forward and the Backward `bid` of its metric in one pass with
        gradients: the pass stores the Forward's Reads and output as its own step would,
        and the Backward's value; its step later finds it done (2 forwards + 1 backward
        for an attribution, not 3 + 1). Logits are trimmed as in a plain step."""
        fid = step.members[0]
        f: Forward = ir.node(fid)  # type: ignore[assignment]
        node: Backward = ir.node(bid)  # type: ignore[assignment]
        batch = self.run_inputs(f.run).batch.repeat(f.samples)
        columns = self.columns_for(f.run)
        slots, index, tokens, remap = logit_plan(self, ir, step, [f], batch, columns)
        mlp, _ = live_mlp(self.adapter, [f], index)  # dead_positions, as in a plain step
        trim = Trim(slots, index, tokens, remap, mlp) if slots is not None else None
        got: dict[str, torch.Tensor] = {}
        self.values[bid] = gradients(self, ir, node.metric, list(node.wrt), node.rules,
                                     forward_reads=True, trim=trim,
                                     logits_out=lambda t: got.__setitem__("logits", t))
        self.values[fid] = self.forward_output(ir, fid, f, batch, columns, got["logits"],
                                               slots, 0, remap)

    @torch.no_grad()
    def forward_step(self, ir: IRGraph, step: ForwardStep) -> None:
        if step.sweep is not None:  # a chunk of a compact sweep: batched index edits
            return run_chunk(self, ir, step, self.sparse.chunk_rows(step))
        if step.generate:  # the prompt batched, then every row decoded together
            return run_generating(self, ir, step)
        members: list[Forward] = [ir.node(m) for m in step.members]  # type: ignore[misc]
        first = members[0]
        batch = self.run_inputs(first.run).batch.repeat(first.samples)
        columns = self.columns_for(first.run)
        p0 = step.p0
        blocks = [slice(i * batch.n, (i + 1) * batch.n) for i in range(len(members))]
        hooks = self.member_hooks(ir, step, batch, columns)
        out, slots, remap = self.model_pass_of(ir, step, members, batch, columns, hooks)
        if step.keep_kv:
            self.kv[step.members[0]] = output_cache(out)
        logits = out.logits
        del out
        for rows, fid, f in zip(blocks, step.members, members):
            self.values[fid] = self.forward_output(ir, fid, f, batch, columns, logits[rows],
                                                   slots, p0, remap)

    def member_hooks(self, ir: IRGraph, step: ForwardStep, batch: Batch, columns) -> list:
        """The hooks of a (batched) step: each member's writes and reads on its own block of
        `batch.n` rows (member-major), over positions p0.. of the batch's width."""
        members: list[Forward] = [ir.node(m) for m in step.members]  # type: ignore[misc]
        n, p0, width = batch.n, step.p0, batch.width
        blocks = [slice(i * n, (i + 1) * n) for i in range(len(members))]
        whole = len(members) == 1
        writes: dict[tuple, list] = {}
        reads: list = []
        for rows, fid, f in zip(blocks, step.members, members):
            shared = len(ir.node(f.twin).writes) if f.start else 0  # type: ignore[union-attr]
            senders = Senders()  # this member's edge senders, captured and summed once
            for wid in f.writes[shared:]:  # shared writes are in the start state already
                w: Write = ir.node(wid)  # type: ignore[assignment]
                got = gated(w, [self.values[i] for i in w.inputs], self.values)
                if got is None:  # a circuit's own: left as it is
                    continue
                w, values = got
                if is_edge(w):  # an edge also reads its live senders (runtime/edges.py)
                    fn, captures = edge_hooks(w, batch, columns, values, self.seed, senders)
                    reads += [(*c[:3], _on_rows(rows, widen(c[3], p0, width), whole))
                              for c in captures]
                else:
                    fn = make_writer(w, batch, columns, values, self.seed)
                key = (w.site.kind, w.site.layer, w.site.head)
                writes.setdefault(key, []).append((rows, widen(fn, p0, width)))
            mine = [(rid, r) for rid in ir.g.successors(fid)
                    if isinstance(r := ir.node(rid), Read)]
            for kind, layer, head, fn in make_readers(mine, batch, columns,
                                                      self.values.__setitem__):
                reads.append((kind, layer, head, _on_rows(rows, widen(fn, p0, width), whole)))
        return [(*key, _merged(entries, whole)) for key, entries in writes.items()] + \
            chained(reads)

    def model_pass_of(self, ir: IRGraph, step: ForwardStep, members: list[Forward],
                      batch: Batch, columns, hooks: list) -> tuple:
        """One model pass of `step`: the run's batch once per member (rows member-major),
        from position p0 (the earlier keys from the twin's cache) and from the start layer
        (the twin's start state), with `hooks`, unembedding only what the metrics need.
        Returns (the model's output, logit slot per position or None, token id remap)."""
        p0, k = step.p0, len(members)
        kwargs = self.pass_inputs(step, batch, k, bool(p0) or step.keep_kv)
        state = None
        if step.start is not None:
            # Left where the twin read it: the start layer's own device (with a device map,
            # accelerate's hook on that layer moves it if needed).
            state = self.values[step.start].value[:, p0:].repeat(k, 1, 1)
        slots, index, tokens, remap = logit_plan(self, ir, step, members, batch, columns)
        head = self.model.get_output_embeddings()
        top = top_block(ir, step, members, self.adapter.n_layers)  # no logits: last block
        as_tuple = bool(step.start_layer or top is not None) and (
            self.adapter.fam.tuple_blocks or
            blocks_return_tuples(self.model, self.adapter.layer(0)))
        # Entered after the adapter's hooks: their hooks on the MLP see its full input first.
        # (repeated_blocks: a dictionary encodes one member's block where all are equal)
        with repeated_blocks(self.adapter, batch.n), self.adapter.hooks(hooks), \
                skip_layers(self.adapter.layers(), step.start_layer, state, as_tuple), \
                skip_above(self.adapter.layers(), top, as_tuple), \
                live_positions(*live_mlp(self.adapter, members, index, top)), \
                trimmed_logits(head, index, tokens), self.model_pass():
            return self.model(**kwargs), slots, remap

    def pass_inputs(self, step: ForwardStep, batch: Batch, k: int, use_cache: bool
                    ) -> dict[str, Any]:
        """The model kwargs of a pass of `step`: the run's batch once per member (k, rows
        member-major) from position p0, the earlier positions' keys and values copied from
        the twin's cache when p0 > 0 (the mask and position ids stay the whole prompt's)."""
        p0 = step.p0
        feed = batch.to(self.device)
        if k == 1 and not p0:  # the run's own tensors (the model only reads them)
            kwargs: dict[str, Any] = {**feed.model_kwargs(), "use_cache": use_cache}
        else:
            kwargs = {"input_ids": feed.input_ids[:, p0:].repeat(k, 1),
                      "attention_mask": feed.attention_mask.repeat(k, 1),
                      "position_ids": feed.position_ids[:, p0:].repeat(k, 1),
                      "use_cache": use_cache}
        if p0:
            kwargs = with_cache(self.model, kwargs, prefix_cache(self.kv[step.twin], p0, k,
                                                                 step.start_layer))
        return kwargs

    def forward_output(self, ir: IRGraph, fid: str, f: Forward, batch: Batch, columns,
                       logits: torch.Tensor, slots: dict[Positions, int] | None, p0: int,
                       remap: torch.Tensor | None) -> ForwardOutput:
        """Forward `fid`'s value: the logits its metrics (and kl metrics comparing with it)
        read, taken from a pass's `logits` (its rows; slot per position, or padded
        positions from p0), and the loss when a metric needs it."""
        out = ForwardOutput(batch, f.samples)
        out.valid = self.valid_rows(ir, f, batch)
        out.token_map = remap  # type: ignore[attr-defined]
        metrics = [m for m in (ir.node(x) for x in ir.g.successors(fid))
                   if isinstance(m, Metric) and (m.lens is None or m.reference == fid)]
        metrics += borrowed_metrics(ir, fid)  # of sparse-sweep forwards it may stand in for
        for m in metrics:
            if m.pos in out.logits:
                pass  # another metric at this position has them (loss is checked below)
            elif slots is not None:
                out.logits[m.pos] = logits[:, slots[m.pos]].float()
            else:
                idx = (position_index(batch, m.pos, columns) - p0).to(logits.device)
                out.logits[m.pos] = logits.gather(
                    1, idx[..., None].expand(-1, -1, logits.shape[-1]))[:, 0].float()
            if out.loss is None and m.forward == fid and \
                    any(isinstance(e, A.MLoss) for e in A.metric_nodes(m.expr)):
                ctx = M.MetricContext(out.logits[m.pos], logits.float(), batch,
                                      self.token_ids(f.run, batch.n))
                out.loss = M.next_token_loss(ctx)
        return out


def _on_rows(rows: slice, fn: Callable, whole: bool) -> Callable:
    if whole:
        return fn
    return lambda act: fn(act[rows])


def _merged(entries: list, whole: bool) -> Callable:
    """One hook for every write at a site: each edits its own block of rows, in order."""
    if whole and len(entries) == 1:
        return entries[0][1]

    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        for rows, write in entries:
            new = write(out[rows])
            if new is not None:
                out[rows] = new
        return out

    return fn


def _fused_backwards(ir: IRGraph, plan: Plan) -> dict[str, str]:
    """Forward id -> Backward id, for each Backward whose metric's Forward can be run with
    gradients in its own step: a plain full pass of that Forward alone (not batched, no
    start layer or narrowing, no cache kept for others, no generation), with a metric that
    compares with no other forward. One Backward per Forward (others run on their own);
    both in this plan (a worker's share may hold only one of them)."""
    steps = {s.members[0]: s for s in plan.forward_steps() if len(s.members) == 1}
    mine = {s.node for s in plan.steps if not isinstance(s, ForwardStep)}
    out: dict[str, str] = {}
    for bid, node in ir.of_type(Backward):
        metric: Metric = ir.node(node.metric)  # type: ignore[assignment]
        step = steps.get(metric.forward)
        if step is None or bid not in mine or metric.forward in out or \
                metric.reference is not None:
            continue
        if step.p0 or step.start_layer or step.start or step.keep_kv or step.generate:
            continue
        out[metric.forward] = bid
    return out


def _without_narrowing(ir: IRGraph) -> IRGraph:
    return replaced(ir, {nid: dataclasses.replace(f, narrow=False)
                         for nid, f in ir.of_type(Forward) if f.narrow})
