"""The reference interpreter: every Forward of the (unoptimized) IR is one plain forward
pass of the model with hooks installed and removed in a context manager. No caching across
forwards beyond what the graph's edges carry, no batching of experiments, no skipping.

It is the oracle every optimization is tested against, so it favours the obvious over the
fast. Nodes are evaluated in topological order; a value is dropped once its last consumer
has used it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from patchc.compiler import ast as A
from patchc.compiler.checked import CheckedSpec
from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.ir import Backward, Estimate, Forward, IRGraph, Metric, Read, \
    Select, Vector, Write
from patchc.compiler.tokens import shared

from . import metrics as M
from . import vectors as V
from .circuits import gated, rank
from .estimate_sweeps import run_compact
from .estimates import run_backward, run_estimate
from .generate import contains_answer, greedy, sequence_logprob
from .inputs import Batch, make_batch, position_index, position_valid, token_id
from .reading import collect_reads, table_reads
from .sweep_members import run_members
from .loading import input_device
from .edge_estimates import EDGE_METHODS, run_edge_estimate
from .edge_sets import run_edge_set
from .edge_stack import Senders
from .edges import edge_hooks, is_edge
from .forward_values import ForwardOutput, metric_values
from .writes import make_readers, make_writer


@dataclass
class RunInputs:
    """A run's tokenized prompts and the data columns its metrics and positions use."""

    batch: Batch
    rows: list[dict[str, Any]]
    data: str | None


class Interpreter:
    """Evaluates an IR graph on a loaded model through an adapter."""

    batched_edges = False  # a compact edge Estimate member by member (runtime/edge_sets.py)

    def __init__(self, checked: CheckedSpec, model: torch.nn.Module, tokenizer, adapter,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.checked = checked
        self.model = model
        self.tokenizer = tokenizer
        # The ids check made with this tokenizer, reused (else made here, once per text).
        self.tokens = shared(checked.tokenizer, tokenizer)
        self.adapter = adapter
        self.device = input_device(model)  # with a device map: where the embedding runs
        self.seed = checked.options.seed
        self.base_dir = checked.spec.source.base_dir
        self.progress = progress
        self.runs: dict[str, RunInputs] = {}
        self._columns: dict[str, dict[tuple[str, str], list[int]]] = {}
        self.values: dict[str, Any] = {}
        self.node_seconds: dict[str, float] = {}  # wall time of each evaluated node
        self.model_seconds = 0.0  # wall time inside model passes (forward, backward)
        self._token_cache: dict[str, int] = {}
        # Metric values of compact sweeps ([members, n]), made while their Forward runs.
        self.sweep_values: dict[str, torch.Tensor] = {}
        self._reported: set[str] = set()
        self.memo: dict[Any, Any] = {}  # computed once for many nodes (edge scores)
        # Compact estimates (runtime/estimate_sweeps.py): member by member, as the reference.
        self.batched_estimates = False

    # ---- inputs -------------------------------------------------------------------------
    def run_inputs(self, name: str) -> RunInputs:
        if name not in self.runs:
            info = self.checked.runs[name]
            ids = self.tokens.encode_many(list(info.texts))
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            rows = list(self.checked.data[info.data].rows) if info.data else []
            self.runs[name] = RunInputs(make_batch(ids, pad), rows, info.data)
        return self.runs[name]

    def columns_for(self, run: str) -> dict[tuple[str, str], list[int]]:
        """Integer data columns of a run's rows, for per-example positions (made once per
        run: every step and estimate asks; callers only read them)."""
        got = self._columns.get(run)
        if got is None:
            got = self._columns[run] = self._int_columns(run)
        return got

    def _int_columns(self, run: str) -> dict[tuple[str, str], list[int]]:
        inputs = self.run_inputs(run)
        out: dict[tuple[str, str], list[int]] = {}
        for table in self.checked.data.values():
            if table.name != inputs.data:
                continue
            for col in table.columns:
                vals = [r.get(col) for r in inputs.rows]
                if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                    out[(table.name, col)] = vals
        return out

    def token_ids(self, run: str, n: int) -> Callable[[A.Tok], torch.Tensor]:
        rows = self.run_inputs(run).rows

        def ids(tok: A.Tok) -> torch.Tensor:
            if isinstance(tok, A.TokId):
                out = [tok.token_id] * len(rows or [0])
            elif isinstance(tok, A.TokString):
                out = [self._token(tok.text)] * max(1, len(rows))
            else:
                # the column's own table: a run of another table's (or inline) prompts pairs
                # row i with its example i (check made sure the counts match, E348)
                table = self.checked.data.get(tok.data)
                texts = [str(r[tok.column]) for r in (table.rows if table else rows)]
                self._fill_tokens(texts)
                out = [self._token(t) for t in texts]
            t = torch.tensor(out, dtype=torch.long)
            if len(out) == 1 and n > 1:
                t = t.expand(n)
            return t.repeat_interleave(n // len(t)) if len(t) != n else t

        return ids

    def _fill_tokens(self, texts: list[str]) -> None:
        """Cache the token ids of a column's texts with one tokenizer call (one per row cost
        more than a small model's pass; check made them already when it used this
        tokenizer); what yields no token is left to `_token` to report."""
        new = [t for t in texts if t not in self._token_cache]
        if len(new) < 2:
            return
        self._token_cache.update((t, ids[0]) for t, ids in
                                 zip(new, self.tokens.plain_many(new)) if ids)

    def _token(self, text: str) -> int:
        if text not in self._token_cache:
            self._token_cache[text] = token_id(self.tokens, text)
        return self._token_cache[text]

    @contextlib.contextmanager
    def model_pass(self) -> Iterator[None]:
        """Count the time inside as model compute (what is not is the run's overhead)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.model_seconds += time.perf_counter() - started

    # ---- evaluation ---------------------------------------------------------------------
    def run(self, ir: IRGraph) -> dict[str, Any]:
        """Evaluate every node; returns per-example values of Metric and Estimate nodes."""
        import networkx as nx

        g = ir.g
        remaining = {nid: g.out_degree(nid) for nid in g.nodes}
        reruns = _reruns(ir)
        for writes in reruns.values():  # a rerun applies its Forward's Writes once more
            for w in writes:
                remaining[w] += 1
        results: dict[str, Any] = {}
        self._reported = set(table_reads(ir))  # `read` values: kept for the results
        order = list(nx.lexicographical_topological_sort(g, key=_node_order))
        n_forwards = sum(1 for nid in order if isinstance(ir.node(nid), Forward))
        done = 0
        if self.progress:  # the total first: a progress bar shows it and an eta
            self.progress(0, n_forwards)
        for nid in order:
            node = ir.node(nid)
            started = time.perf_counter()
            if isinstance(node, Forward):
                self.values[nid] = self.forward(ir, nid, node)
                done += 1
                if self.progress:
                    self.progress(done, n_forwards)
            else:
                self.evaluate(ir, nid, node, results)
            # Read and Write nodes get their values while their Forward runs.
            self.node_seconds[nid] = time.perf_counter() - started
            if not isinstance(node, Write):  # a Write is used when its Forwards run
                self._release(g, nid, remaining, results)
            for w in reruns.get(nid, ()):
                remaining[w] -= 1
                if remaining[w] == 0:
                    self._release(g, w, remaining, results)
        collect_reads(ir, self.values, results)
        return results

    def evaluate(self, ir: IRGraph, nid: str, node: Any, results: dict[str, Any]) -> None:
        """A Vector, Metric, Backward, Estimate or Select node (both interpreters evaluate
        these here); Metric, Estimate and Select values also go to `results`."""
        if isinstance(node, Vector):
            means = [self.values[r].value.float().mean(0).squeeze(0) for r in node.inputs]
            self.values[nid] = self.vector(node, means)
        elif isinstance(node, Metric):
            value = self.sweep_values.pop(nid, None)
            results[nid] = self.values[nid] = value if value is not None else \
                self.metric(ir, node)
        elif isinstance(node, Backward):
            self.values[nid] = run_backward(self, ir, nid, node)
        elif isinstance(node, Estimate) and node.edges is not None:  # member by member here
            results[nid] = self.values[nid] = run_edge_set(self, ir, node, self.batched_edges)
        elif isinstance(node, Estimate):
            run = run_edge_estimate if node.method in EDGE_METHODS else \
                run_compact if node.space is not None else run_estimate  # [members, n]
            results[nid] = self.values[nid] = run(self, ir, node)
        elif isinstance(node, Select):
            results[nid] = self.values[nid] = rank(node, self.values)

    def _release(self, g, nid: str, remaining: dict[str, int], keep: dict) -> None:
        """`nid` has used its inputs: drop each input value whose last consumer this was."""
        for pred in g.predecessors(nid):
            remaining[pred] -= 1
            if remaining[pred] == 0 and pred not in keep and pred not in self._reported:
                self.values.pop(pred, None)
                if isinstance(g.nodes[pred]["node"], Write):
                    self._release(g, pred, remaining, keep)

    def vector(self, node: Vector, means: list[torch.Tensor]) -> torch.Tensor:
        named = {}
        v = V.evaluate(node.expr, means, named, self.base_dir)
        if v.shape[-1] != node.dim:
            raise RuntimeInterventionError("E443", f"vector {node.name} has {v.shape[-1]} "
                                           f"features; its site has {node.dim}")
        return v

    def hooks_for(self, ir: IRGraph, nid: str, node: Forward, batch: Batch,
                  reads: bool = True) -> list:
        """(kind, layer, head, fn) hooks: the Forward's writes in order, then its reads."""
        columns = self.columns_for(node.run)
        hooks, captures = [], []
        shared = Senders()  # edge senders: captured and summed once per forward
        for wid in node.writes:
            write: Write = ir.node(wid)  # type: ignore[assignment]
            inputs = [self.values[i] for i in write.inputs]
            got = gated(write, inputs, self.values)  # a circuit's own: left as it is
            if got is None:
                continue
            write, inputs = got
            if is_edge(write):  # an edge also reads its live senders (runtime/edges.py)
                fn, more = edge_hooks(write, batch, columns, inputs, self.seed, shared)
                captures += more
            else:
                fn = make_writer(write, batch, columns, inputs, self.seed)
            hooks.append((write.site.kind, write.site.layer, write.site.head, fn))
        hooks += captures
        if reads:
            mine = [(rid, r) for rid in ir.g.successors(nid)
                    if isinstance(r := ir.node(rid), Read)]
            hooks += make_readers(mine, batch, columns, self.values.__setitem__)
        return hooks

    @torch.no_grad()
    def forward(self, ir: IRGraph, nid: str, node: Forward) -> ForwardOutput:
        if node.sweep is not None:
            return self._sweep(ir, nid, node)
        batch = self.run_inputs(node.run).batch.repeat(node.samples)
        metrics = [ir.node(m) for m in ir.g.successors(nid) if isinstance(ir.node(m), Metric)]
        out = ForwardOutput(batch, node.samples)
        out.valid = self.valid_rows(ir, node, batch)
        hooks = self.hooks_for(ir, nid, node, batch)
        columns = self.columns_for(node.run)
        generations: set[tuple[int, str, str]] = set()
        with self.adapter.hooks(hooks), self.model_pass():
            logits = self.model(**batch.to(self.device).model_kwargs()).logits
        for m in metrics:
            if m.pos not in out.logits:
                idx = position_index(batch, m.pos, columns).to(logits.device)
                out.logits[m.pos] = logits.gather(
                    1, idx[..., None].expand(-1, -1, logits.shape[-1]))[:, 0].float()
            if out.loss is None and any(isinstance(e, A.MLoss) for e in A.metric_nodes(m.expr)):
                ctx = M.MetricContext(out.logits[m.pos], logits.float(), batch,
                                      self.token_ids(node.run, batch.n))
                out.loss = M.next_token_loss(ctx)
            generations |= {(e.n, e.answer.data, e.answer.column) for e in A.metric_nodes(m.expr)
                            if isinstance(e, A.MGenerate)}
        rows = self.run_inputs(node.run).rows
        for n_new, data, column in sorted(generations):
            answers = [str(r[column]) for r in rows]
            out.contains[(n_new, data, column)] = contains_answer(
                self, batch, hooks, n_new, answers, node.samples)
        self._continuations(nid, node, metrics, batch, hooks, out)
        # Metrics on other forwards may refer to this one's logits (kl): keep them all.
        return out

    def _sweep(self, ir: IRGraph, nid: str, node: Forward) -> ForwardOutput:
        """A compact sweep (compiler/ir_sweep.py): one plain forward per member, with the
        run's writes and then the member's own; its metrics' values [members, n] go to
        `sweep_values` (runtime/sweep_members.py)."""
        return run_members(self, ir, nid, node, ForwardOutput)

    def _continuations(self, nid: str, node: Forward, metrics: list, batch: Batch,
                       hooks: list, out: ForwardOutput) -> None:
        """text(N) and seqlogprob(TOK) of the metrics on this forward (generate.py)."""
        from patchc.compiler import printer

        for m in metrics:
            if m.forward != nid or m.lens is not None:
                continue
            for e in A.metric_nodes(m.expr):
                if isinstance(e, A.MText) and e.n not in out.texts:
                    out.texts[e.n] = greedy(self, batch, hooks, e.n)
                elif isinstance(e, A.MSeqLogProb) and printer.tok(e.tok) not in out.seqlogprob:
                    out.seqlogprob[printer.tok(e.tok)] = sequence_logprob(
                        self, batch, hooks, self.seqlogprob_answers(e, node.run, batch.n))

    def seqlogprob_answers(self, e: A.MSeqLogProb, run: str, n: int) -> list[list[int]]:
        """The answer token ids of each of the run's n rows (noise samples repeat a row)."""
        rows = self.run_inputs(run).rows
        if isinstance(e.tok, A.TokId):
            return [[e.tok.token_id]] * n
        if isinstance(e.tok, A.TokString):
            texts = [e.tok.text] * max(1, len(rows))
        else:
            texts = [str(r[e.tok.column]) for r in rows]
        return [self._answer_ids(t) for t in texts for _ in range(n // len(texts))]

    def _answer_ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise RuntimeInterventionError("E420", f"{text!r} tokenizes to no tokens")
        return ids

    def valid_rows(self, ir: IRGraph, node: Forward, batch: Batch) -> torch.Tensor:
        valid = torch.ones(batch.n, dtype=torch.bool)
        for wid in node.writes:
            valid &= position_valid(batch, ir.node(wid).pos)  # type: ignore[union-attr]
        return valid

    def metric(self, ir: IRGraph, node: Metric) -> Any:
        """Per-example values [n] (noise samples averaged); for text(N), a list of n
        strings (each example's first noise sample; None where the row is invalid):
        runtime/forward_values.py."""
        return metric_values(self, ir, node)


def _reruns(ir: IRGraph) -> dict[str, tuple[str, ...]]:
    """Nodes that run their metric's Forward again with grad (a Backward; an ig Estimate at
    each step), with that Forward's Writes: their inputs must live until these are done."""
    out = {}
    for nid, node in ir.g.nodes(data="node"):
        back = node if isinstance(node, Backward) else None
        if isinstance(node, Estimate) and node.method in ("ig", "eap_ig"):
            back = ir.node(node.inputs[-1])  # type: ignore[assignment]
        if back is not None:
            fwd: Forward = ir.node(ir.node(back.metric).forward)  # type: ignore[union-attr]
            out[nid] = fwd.writes
    return out


def _node_order(nid: str) -> tuple[int, int]:
    """Deterministic evaluation order: base forwards first, by id number."""
    return (int(nid[1:]), ord(nid[0]))

