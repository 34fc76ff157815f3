"""What one model pass of a forward step has to compute, decided from the optimized graph:

- `logit_plan`: trim_logits. Which positions are unembedded, and for which token ids.
- `live_mlp`: dead_positions. Which MLP computes at those positions only (the top block's,
  when the step's own reads and writes all lie below its MLP).
- `unaligned_sources`: dead_positions' gradient-only reads of a source run assume its
  token lengths are the differentiated run's; where they are not, that run stays whole.
- `top_block`: a pass that computes no logits at all (a run that only vectors or reads
  use) stops after the last block one of its reads or writes touches.
  The blocks above it are stubbed (runtime/prefix.skip_above): nothing reads them, so
  every value the pass gives is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from patchc.compiler import ast as A
from patchc.compiler.ir import Backward, Estimate, Forward, IRGraph, Metric, Read, Write
from patchc.compiler.passes._graph import site_layer
from patchc.compiler.schedule import ForwardStep

from .edges import is_edge
from .inputs import Batch, position_index
from .sparse import borrowed_metrics


def logit_plan(ex: Any, ir: IRGraph, step: ForwardStep, members: list[Forward],
               batch: Batch, columns) -> tuple:
    """Which logits to compute: (slot per position or None for all, the [B, K] gather
    index or None, token ids or None, token id -> column map or None). `ex`: the plan
    interpreter (runtime/execute.py), for its token ids, adapter and memo: the positions'
    index and the token ids are made once per run for each set of them (every pass of a
    sweep asks for the same); callers only read them."""
    if any(f.logit_positions is None for f in members):
        return None, None, None, None
    positions = list(dict.fromkeys(p for f in members for p in f.logit_positions or ()))
    slots = {p: j for j, p in enumerate(positions)}
    run = members[0].run
    key = ("logit index", run, batch.n, batch.width, step.p0, tuple(positions))
    if key not in ex.memo:
        if positions:
            cols = [position_index(batch, p, columns)[:, :1] for p in positions]
            ex.memo[key] = torch.cat(cols, 1) - step.p0
        else:
            ex.memo[key] = torch.zeros(batch.n, 0, dtype=torch.long)
    index = ex.memo[key].repeat(len(members), 1)
    if not all(f.logit_tokens for f in members):
        return slots, index, None, None
    toks = []
    for fid in step.members:
        for m in ir.g.successors(fid):
            node = ir.node(m)
            if isinstance(node, Metric) and node.forward == fid:
                toks += [e.tok for e in A.metric_nodes(node.expr) if isinstance(e, A.MCall)]
    key = ("logit tokens", run, batch.n, tuple(dict.fromkeys(toks)))
    if key not in ex.memo:
        ex.memo[key] = _token_columns(ex, run, batch.n, key[3])
    return (slots, index, *ex.memo[key])


def _token_columns(ex: Any, run: str, n: int, toks: tuple) -> tuple:
    """The token ids the metrics name (sorted) and the map from token id to column."""
    lookup = ex.token_lookup(run, n)
    ids: set[int] = set()
    for tok in toks:
        ids |= set(lookup(tok).tolist())
    tokens = torch.tensor(sorted(ids), dtype=torch.long)
    remap = torch.full((ex.adapter.vocab_size,), -1, dtype=torch.long)
    remap[tokens] = torch.arange(len(tokens))
    return tokens, remap


def live_mlp(adapter: Any, members: list[Forward], index: torch.Tensor | None,
             top: int | None = None) -> tuple:
    """dead_positions: (the top block's MLP, the [B, K] positions it computes), when every
    member reads and writes nothing from there on (reads only gradient estimates use aside:
    their gradient is zero at the other positions) and only K logit positions are measured;
    else (None, None). `top`: the last block the pass computes (None: the model's last).
    Not for MLPs that add the residual themselves (Bloom, MPT), MLP parts sitting on the
    block (OPT), or mixtures of experts."""
    last = adapter.n_layers - 1 if top is None else top
    fam, parts = adapter.fam, adapter.s
    if index is None or fam.moe or parts.mlp is None or "mlp" in fam.residual_inside or \
            not all(f.live_from is not None and f.live_from <= last for f in members):
        return None, None
    return adapter.mlp(last), index


def unaligned_sources(ir: IRGraph, lengths: dict[str, tuple[int, ...]]) -> IRGraph:
    """`ir` with `live_from` cleared on each forward that a gradient estimate reads from a
    run whose token lengths differ from the differentiated run's (`lengths`: per run and
    example). dead_positions keeps a source run's last MLP at its metric positions only
    because runs swapped between have equal lengths (`check`'s E322): that check needs the
    tokenizer, so the runtime, which has the tokens, makes sure."""
    bad: set[str] = set()
    for _, est in ir.of_type(Estimate):
        back = ir.node(est.inputs[-1])
        if not isinstance(back, Backward):
            continue
        run = ir.node(ir.node(back.metric).forward).run  # type: ignore[union-attr]
        for rid in est.inputs[:-1]:
            read = ir.node(rid)
            if not isinstance(read, Read):
                continue
            f: Forward = ir.node(read.forward)  # type: ignore[assignment]
            if f.live_from is not None and lengths[f.run] != lengths[run]:
                bad.add(read.forward)
    return replaced(ir, {fid: dataclasses.replace(ir.node(fid), live_from=None)
                         for fid in bad})


def replaced(ir: IRGraph, nodes: dict[str, Any]) -> IRGraph:
    """`ir` with some nodes replaced by others of the same references (a copy; `ir` itself
    when there are none): the runtime's late changes to what the passes decided."""
    if not nodes:
        return ir
    out = ir.copy()
    for nid, node in nodes.items():
        out.g.nodes[nid]["node"] = node
    out.g.graph["tables"] = list(ir.tables)
    return out


def top_block(ir: IRGraph, step: ForwardStep, members: list[Forward], n_layers: int
              ) -> int | None:
    """The last block the step's pass has to compute, when it computes no logits (every
    member's `logit_positions` is empty, and no metric, kept cache or generation needs its
    output): the highest block of any of its reads' and writes' sites. None: every block
    (the last is needed, logits are, or a site lies after the blocks or outside them)."""
    if step.keep_kv or step.generate or step.sweep is not None:
        return None
    top = -1
    for fid, f in zip(step.members, members):
        if f.logit_positions != () or f.sweep is not None or borrowed_metrics(ir, fid):
            return None
        sites = []
        for nid in f.writes:
            w = ir.node(nid)
            if not isinstance(w, Write) or is_edge(w):
                return None
            sites.append(w.site)
        for nid in ir.g.successors(fid):
            node = ir.node(nid)
            if isinstance(node, Metric):
                return None
            if isinstance(node, Read) and node.forward == fid:
                sites.append(node.site)
        for site in sites:
            layer = site_layer(site)  # embed: block 0 (its hook is on block 0's input)
            if layer is None:
                return None
            top = max(top, layer)
    top = max(top, step.start_layer)
    return top if top < n_layers - 1 else None
