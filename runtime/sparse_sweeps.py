"""Sparse compact latent sweeps: which members of a compact sweep over a dictionary's latents
(compiler/lower_sweep.py, gated by compiler/lower_latents.sweep_gate) need a pass, and the
values of those that do not.

A member (latents lo..hi at position variant p) is inactive when those latents are zero at
p's token slots, in every row, in each of the sweep's `sparse` Reads (the whole latent vector,
all positions, of the target's base forward and, for swap/trace/mean/resample, the source's).
Its write then replaces zero by zero (or zeroes or scales a zero), the dictionary adds
decode(f') - decode(f) = 0 to its site, and its pass would be the target's base forward
(`same_as`) bit for bit: its metric values are that forward's, on the rows that have p (NaN on
the others, as a pass would give). runtime/sparse.py packs the active members into passes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from patchc.compiler.ir import Forward, IRGraph, Metric
from patchc.compiler.ir_sweep import members, site_wholes, split

from .inputs import position_valid
from .sweep_members import slice_read


def active_members(ex, ir: IRGraph, f: Forward) -> np.ndarray:
    """Per member of sweep `f` (row order): does any latent it writes fire at its position
    in a `sparse` Read? (bool array; the caller runs the True ones.)"""
    space = f.sweep.space
    s_idx, p_idx, _ = split(space, members(space))
    wholes, site_whole = site_wholes(space)
    lo = np.array([0 if s.features is None else s.features[0] for s in space.sites])
    hi = np.array([-1 if s.features is None else s.features[1] for s in space.sites])
    out = np.zeros(len(s_idx), dtype=bool)
    for w, whole in enumerate(wholes):
        gates = [g for g in f.sparse if ir.node(g).site == whole]  # type: ignore[union-attr]
        on_site = site_whole[s_idx] == w
        for p in np.unique(p_idx[on_site]).tolist():
            fired = None  # [d_sae]: nonzero at p in some row of some gate
            for g in gates:
                value = slice_read(ex, ir, g, space.positions[p]).value
                nz = (value != 0).reshape(-1, value.shape[-1]).any(0)
                fired = nz if fired is None else fired | nz
            assert fired is not None
            # Members of a slice of latents: any of them fired (prefix sums over latents).
            cum = np.concatenate([[0], np.cumsum(fired.cpu().numpy())])
            sel = on_site & (p_idx == p)
            s = s_idx[sel]
            out[sel] = cum[hi[s]] - cum[lo[s]] > 0  # (hi -1: every latent, cum[-1])
    return out


def stand_in(ex, ir: IRGraph, fid: str, f: Forward, rows: np.ndarray) -> None:
    """Metric values of the inactive members `rows` (row indices): the base forward's, where
    a row has the member's position; stored into `ex.sweep_values` as run_chunk stores a
    pass's."""
    if rows.size == 0:
        return
    space = f.sweep.space
    batch = ex.run_inputs(f.run).batch
    out = copy.copy(ex.values[f.same_as])
    out.valid = ex.valid_rows(ir, f, batch)
    ex.values[fid] = out
    _, p_idx, _ = split(space, members(space)[rows])
    have = torch.stack([position_valid(batch, pos) for pos in space.positions])  # [P, n]
    have = have[torch.from_numpy(p_idx)]  # [k, n]
    order = torch.from_numpy(rows.copy())
    total = len(f.sweep)
    try:
        for mid in ir.g.successors(fid):
            m = ir.node(mid)
            if not isinstance(m, Metric):
                continue
            value = ex.metric(ir, m).float()  # [n]
            buf = ex.sweep_values.get(mid)
            if buf is None:
                buf = ex.sweep_values[mid] = torch.full((total, batch.n), torch.nan)
            buf[order] = torch.where(have, value[None, :], torch.nan)
    finally:
        del ex.values[fid]
