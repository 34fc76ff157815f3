"""A compact sweep's members one at a time, for the reference interpreter (runtime/naive.py):
`run_members` runs one plain forward per member with member j's Write
(compiler/ir_sweep.member_write), whose inputs `member_value` cuts from the sweep's whole-site
Reads exactly as a Read of the member's own site and position would hold them. An edge
sweep's member is its edge's own Write (runtime/edge_sweeps.member_hooks)."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from patchc.compiler.ir import Forward, IRGraph, Metric, Read, Write
from patchc.compiler.ir_sweep import READ_MODES, SweepSpec, member_write, members, split, \
    whole_index

from .edge_sweeps import is_edge_sweep, member_hooks
from .inputs import position_index, position_valid, slot_mask
from .writes import ReadValue, gather, make_writer


def member_value(interp, ir: IRGraph, f: Forward, s: int, p: int, v: int) -> list:
    """The values member (s, p, v)'s write takes as inputs: its slice of the whole-site Read
    (what a Read of the member's site at its position would hold), or its variant's vector."""
    spec: SweepSpec = f.sweep
    if spec.mode in READ_MODES:
        rid = f.inputs[whole_index(spec)[s]]
        return [slice_read(interp, ir, rid, spec.space.positions[p], spec.space.sites[s])]
    if spec.mode == "add":
        return [interp.values[f.inputs[v]]]
    return []


def slice_read(interp, ir: IRGraph, rid: str, pos, site=None) -> ReadValue:
    """A whole-site Read (all positions, every feature) cut to `pos` (and site's features)."""
    rv: ReadValue = interp.values[rid]
    read: Read = ir.node(rid)  # type: ignore[assignment]
    columns = interp.columns_for(ir.node(read.forward).run)  # type: ignore[union-attr]
    value = gather(rv.value, position_index(rv.batch, pos, columns))
    if site is not None and site.features is not None:
        value = value[..., site.features[0]:site.features[1]]
    return ReadValue(value, rv.batch, pos, slot_mask(rv.batch, pos, columns))


def _member_hooks(interp, ir: IRGraph, node: Forward, batch, columns
                  ) -> Iterator[tuple[tuple, Write]]:
    """Per member, in row order: (the hook of its own write, that Write)."""
    if is_edge_sweep(node):  # path patching: the member's per-edge Write
        yield from member_hooks(interp, node, batch, columns)
        return
    spec: SweepSpec = node.sweep
    s_idx, p_idx, v_idx = split(spec.space, members(spec.space))
    for s, p, v in zip(s_idx.tolist(), p_idx.tolist(), v_idx.tolist()):
        write = member_write(spec, s, p, v)
        fn = make_writer(write, batch, columns, member_value(interp, ir, node, s, p, v),
                         interp.seed)
        yield (write.site.kind, write.site.layer, write.site.head, fn), write


def run_members(interp, ir: IRGraph, nid: str, node: Forward, output_cls) -> Any:
    """Sweep `nid` one plain forward per member on the reference interpreter: the run's
    writes, then the member's own write (made by writes.make_writer as for any Write); each
    metric of the sweep evaluated per member into `interp.sweep_values` ([members, n])."""
    spec = node.sweep
    batch = interp.run_inputs(node.run).batch
    columns = interp.columns_for(node.run)
    base_hooks = interp.hooks_for(ir, nid, node, batch, reads=False)
    base_valid = interp.valid_rows(ir, node, batch)
    metrics = [(m, ir.node(m)) for m in ir.g.successors(nid) if isinstance(ir.node(m), Metric)]
    bufs = {mid: torch.full((len(spec), batch.n), torch.nan) for mid, _ in metrics}
    for j, (hook, write) in enumerate(_member_hooks(interp, ir, node, batch, columns)):
        hooks = base_hooks + [hook]
        with interp.adapter.hooks(hooks), interp.model_pass(), torch.no_grad():
            logits = interp.model(**batch.to(interp.device).model_kwargs()).logits
        out = output_cls(batch, 1)
        out.valid = base_valid & position_valid(batch, write.pos)
        for _, m in metrics:
            if m.pos not in out.logits:
                idx = position_index(batch, m.pos, columns).to(logits.device)
                out.logits[m.pos] = logits.gather(
                    1, idx[..., None].expand(-1, -1, logits.shape[-1]))[:, 0].float()
        interp.values[nid] = out
        for mid, m in metrics:
            bufs[mid][j] = interp.metric(ir, m)
    interp.sweep_values.update(bufs)
    return output_cls(batch, 1)
