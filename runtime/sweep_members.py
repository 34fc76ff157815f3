"""A compact sweep's members one at a time, for the reference interpreter (runtime/naive.py):
member j's Write (compiler/ir_sweep.member_write) and the values it takes as inputs, cut from
the sweep's whole-site Reads exactly as a Read of the member's own site and position would
hold them."""

from __future__ import annotations

from patchc.compiler.ir import Forward, IRGraph, Read
from patchc.compiler.ir_sweep import READ_MODES, SweepSpec, whole_index

from .inputs import position_index, slot_mask
from .writes import ReadValue, gather


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
