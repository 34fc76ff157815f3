"""Compact estimates (compiler/lower_estimates.py): one Estimate node's value for every member
of its ir_sweep.Space, [members, examples].

Member j (site s, position p) is estimated on its own, as the per-experiment Estimate of that
site and position would be: m_B + sum over p's positions and s's features of
(a_A - a_B) * g, NaN for an example that lacks position p. The node's Reads hold each whole
site (every feature) at the space's one position or at all positions, and the Backward holds
their gradients; a member's slice is cut from them.

Two evaluations, equal to float rounding:
  - `batched` (the plan interpreter): per whole site, one product (a_A - a_B) * g, summed over
    each position's tokens and each member's features as tensor operations;
  - `one_by_one` (the reference interpreter): member by member, with the per-experiment
    code's formula; its integrated gradients interpolate each member's own site and
    positions in passes of their own (each batches its steps, estimates.py). The plan
    interpreter stacks several members' interpolations in one pass (ig_sweeps.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from patchc.compiler.ir import Estimate, IRGraph, Positions, Read, Site
from patchc.compiler.ir_sweep import Space, members, split, whole_site

from .estimates import integrated_gradients
from .ig_sweeps import ig_batchable, ig_batched
from .inputs import position_index, position_valid, positions_index, positions_valid
from .writes import ReadValue, features_of, gather

if TYPE_CHECKING:
    from .context import RunContext


def run_compact(interp: "RunContext", ir: IRGraph, node: Estimate) -> torch.Tensor:
    """The estimate of every member of `node.space`, [members, n] float32 on the CPU."""
    *flat, bid = node.inputs
    pairs = {ir.node(rb).site: (ra, rb)  # type: ignore[union-attr]
             for ra, rb in zip(flat[0::2], flat[1::2])}
    if not getattr(interp, "batched_estimates", False):
        return one_by_one(interp, ir, node, pairs, bid)
    if node.method == "ig":  # members' interpolations stacked in each pass (ig_sweeps.py)
        return ig_batched(interp, ir, node, pairs, bid) if ig_batchable(ir, bid) \
            else one_by_one(interp, ir, node, pairs, bid)
    return batched(interp, ir, node.space, pairs, bid)


def _at(value: torch.Tensor, read: Read, batch, pos: Positions, site: Site, columns
        ) -> torch.Tensor:
    """A whole site's Read value (or gradient) [n, k, d] cut to one member: its positions
    (a Read at all positions is gathered at `pos`) and its features."""
    if pos != read.pos:
        value = gather(value, position_index(batch, pos, columns).to(value.device))
    return features_of(site, value)


def _run(ir: IRGraph, rid: str) -> str:
    """The run whose Forward Read `rid` is taken from."""
    return ir.node(ir.node(rid).forward).run  # type: ignore[union-attr]


def _indices(interp: "RunContext", ir: IRGraph, rid: str, value: ReadValue, space: Space
             ) -> tuple[torch.Tensor, list[int]]:
    """The token indices [n, sum k] of every position of the space, in order, in the batch
    of Read `rid`, and each position's k (made once per run and position list: every
    estimate of a statement shares them)."""
    run = _run(ir, rid)
    key = ("estimate positions", run, value.batch.n, space.positions)
    got = interp.memo.get(key)
    if got is None:
        got = interp.memo[key] = positions_index(value.batch, space.positions,
                                                 interp.columns_for(run))
    return got


def one_by_one(interp: "RunContext", ir: IRGraph, node: Estimate,
               pairs: dict[Site, tuple[str, str]], bid: str) -> torch.Tensor:
    """Member by member: the per-experiment estimate of each member's site and position."""
    space: Space = node.space
    s_idx, p_idx, _ = split(space, members(space))
    m_b, grads = interp.values[bid]
    out = torch.empty(len(s_idx), m_b.shape[0])
    for j, (s, p) in enumerate(zip(s_idx.tolist(), p_idx.tolist())):
        site, pos = space.sites[s], space.positions[p]
        ra, rb = pairs[whole_site(site)]
        read: Read = ir.node(rb)  # type: ignore[assignment]
        a: ReadValue = interp.values[ra]
        b: ReadValue = interp.values[rb]
        columns = interp.columns_for(ir.node(read.forward).run)  # type: ignore[union-attr]
        columns_a = interp.columns_for(_run(ir, ra))
        av = _at(a.value, read, a.batch, pos, site, columns_a)
        bv = _at(b.value, read, b.batch, pos, site, columns)
        if node.method == "ig":
            member = f"{rb}#{j}"  # the member's own Read of B, for the interpolation only
            m_b, got = integrated_gradients(
                interp, ir, bid, [(member, Read(read.forward, site, pos), av, bv)], node.steps)
            g = got[member]
        else:
            g = _at(grads[rb], read, b.batch, pos, site, columns)
        diff = av.float().to(g.device) - bv.float().to(g.device)
        delta = (diff * g.float()).flatten(1).sum(1).cpu()
        valid = position_valid(b.batch, pos)  # `@ each` past a short prompt: NaN
        out[j] = torch.where(valid, m_b.cpu() + delta, torch.nan)
    return out


def batched(interp: "RunContext", ir: IRGraph, space: Space,
            pairs: dict[Site, tuple[str, str]], bid: str) -> torch.Tensor:
    """Every member at once: per whole site one product (a_A - a_B) * g [n, k, d], summed
    over each position's tokens ([P, n, d]) and then over each member site's features."""
    m_b, grads = interp.values[bid]
    n_sites, n_pos = len(space.sites), len(space.positions)
    n = m_b.shape[0]
    delta = torch.zeros(n_sites, n_pos, n)
    of_whole: dict[Site, list[int]] = {}
    for i, site in enumerate(space.sites):
        of_whole.setdefault(whole_site(site), []).append(i)
    batch = None
    index: tuple | None = None  # A's and B's token indices, once for every whole site
    for whole, idx in of_whole.items():
        ra, rb = pairs[whole]
        read: Read = ir.node(rb)  # type: ignore[assignment]
        a: ReadValue = interp.values[ra]
        b: ReadValue = interp.values[rb]
        batch = b.batch
        g = grads[rb].float()
        av, bv = a.value.float().to(g.device), b.value.float().to(g.device)
        whole_features = all(space.sites[i].features is None for i in idx)
        if n_pos == 1 and space.positions[0] == read.pos:
            per_pos = ((av - bv) * g).sum(1)[None]  # [1, n, d]
        else:
            if index is None or index[0].device != g.device:
                ia, sizes = _indices(interp, ir, ra, a, space)
                ib, _ = _indices(interp, ir, rb, b, space)
                ia, ib = ia.to(g.device), ib.to(g.device)
                index = (ia, ib, sizes, ia.shape == ib.shape and bool(torch.equal(ia, ib)),
                         all(k == 1 for k in sizes))
            ia, ib, sizes, alike, single = index
            if whole_features and av.shape == bv.shape and alike:
                # A and B padded alike: sum the features first, gather [n, sum k] after
                got = ((av - bv) * g).sum(-1, keepdim=True).gather(1, ib[..., None])
            else:  # each run's own token indices, every position's tokens in one gather
                got = (gather(av, ia) - gather(bv, ib)) * gather(g, ib)  # [n, sum k, d]
            if single:
                per_pos = got.transpose(0, 1)
            else:
                per_pos = torch.stack([part.sum(1) for part in got.split(sizes, 1)])
        if whole_features and len(idx) == 1:  # (one site: a row, not a list, to set)
            delta[idx[0]] = per_pos.sum(-1).float().cpu()
            continue
        feats = [space.sites[i].features for i in idx]
        if whole_features:
            vals = per_pos.sum(-1).expand(len(idx), -1, -1)  # [sites, P, n]
        elif all(f is not None and f[1] - f[0] == 1 for f in feats):  # neurons, latents
            cols = torch.tensor([f[0] for f in feats], device=per_pos.device)  # type: ignore[index]
            vals = per_pos.index_select(-1, cols).permute(2, 0, 1)
        else:
            vals = torch.stack([per_pos[..., slice(*f) if f else slice(None)].sum(-1)
                                for f in feats])
        delta[idx] = vals.float().cpu()
    assert batch is not None
    key = ("estimate valid", batch.n, tuple(batch.lengths), space.positions)
    if key not in interp.memo:  # (every estimate of a statement asks for the same)
        interp.memo[key] = positions_valid(batch, space.positions)  # [P, n]
    valid = interp.memo[key]
    est = torch.where(valid[None], m_b.float().cpu()[None, None] + delta, torch.nan)
    flat = torch.from_numpy(members(space).astype("int64"))
    return est.reshape(n_sites * n_pos, n)[flat]
