"""Integrated gradients of a compact Estimate (compiler/lower_estimates.py) with its members
batched: the interpolated forwards of several members, and of several steps, stacked along
the batch axis of one forward+backward.

Member j (site s, positions p) is estimated as estimate_sweeps.one_by_one does it (the
reference): m_B + sum over p and s's features of (a_A - a_B) * g_j, g_j the gradient at s
averaged over the midpoints a_B + alpha (a_A - a_B), alpha = (t + 0.5) / steps, written at
s and p only (the rest of the forward is B's). Rows of one pass are laid out example-major,
then member, then step (row i * R + m * k + t): each member's rows interpolate its own site
and positions, every other row keeps B's value there, and a row's gradient is its own (the
rows of a batch do not interact), so one backward gives every member's g_j.

How many rows one pass holds: `set batch_size`, else IG_PASS_ROWS, and never more than the
run's memory budget allows for a forward whose activations are all kept for the backward
(costs.grad_pass_bytes); at least one step of one member (the examples). A pass holds
members of one layer: it starts at that layer from B's residual stream there (prefix.
skip_layers, as share_prefix does; the state taken once, by one forward of B), so neither
its forward nor its backward computes the blocks below; and it unembeds only the positions
B's metrics read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from patchc.compiler import costs as C
from patchc.compiler.ir import ALL_POSITIONS, Backward, Estimate, Forward, IRGraph, Read, Site
from patchc.compiler.ir_sweep import Space, members, split, whole_site

from .compat import blocks_return_tuples
from .estimates import Trim, gradients
from .inputs import Batch, position_index, position_valid
from .prefix import skip_layers
from .writes import _features, gather, scatter

if TYPE_CHECKING:
    from .context import RunContext

IG_PASS_ROWS = 1024  # rows (examples x members x steps) of one pass unless batch_size says

# (member site, its positions, a_B and a_A - a_B at them [n, k, features])
End = tuple[Site, Any, torch.Tensor, torch.Tensor]


def ig_batchable(ir: IRGraph, bid: str) -> bool:
    """Can members share a pass? Not in a run with noise: it draws noise by the batch's
    shape, so each member's passes must have B's own (estimates._ig_chunk runs them)."""
    fwd: Forward = ir.node(ir.node(ir.node(bid).metric).forward)  # type: ignore[union-attr]
    return not any(ir.node(w).mode == "noise" for w in fwd.writes)  # type: ignore[union-attr]


def pass_rows(interp: "RunContext", fwd: Forward, n: int) -> int:
    """The most rows one batched ig pass of `fwd`'s run may hold (module docstring)."""
    rows = interp.checked.options.batch_size or IG_PASS_ROWS
    plan = getattr(interp, "plan", None)
    budget = getattr(plan, "budget_bytes", None)
    if budget is not None:
        model = interp.model
        param = next(model.parameters())
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        width = interp.run_inputs(fwd.run).batch.width
        per_row = C.grad_pass_bytes(interp.checked.model, 1, width, param.element_size())
        rows = min(rows, (budget - weights - C.RESERVE_BYTES) // max(per_row, 1))
    return max(rows, n)


def ig_batched(interp: "RunContext", ir: IRGraph, node: Estimate,
               pairs: dict[Site, tuple[str, str]], bid: str) -> torch.Tensor:
    """The ig estimate of every member of `node.space`, [members, n] float32 on the CPU.
    `pairs`: the (A Read, B Read) ids of each whole site (estimate_sweeps.run_compact's)."""
    space: Space = node.space
    s_idx, p_idx, _ = split(space, members(space))
    backward: Backward = ir.node(bid)  # type: ignore[assignment]
    fid = ir.node(backward.metric).forward  # type: ignore[union-attr]
    fwd: Forward = ir.node(fid)  # type: ignore[assignment]
    base = interp.run_inputs(fwd.run).batch
    columns = interp.columns_for(fwd.run)
    m_b = interp.values[bid][0].float().cpu()
    n, steps, total = base.n, node.steps, len(s_idx)
    rows = pass_rows(interp, fwd, n)
    k = max(1, min(steps, rows // n))  # steps per pass, then as many members as fit
    per = max(1, rows // (n * k))
    wholes = list(dict.fromkeys(whole_site(s) for s in space.sites))
    nodes = {f"{bid}#ig:{w}": Read(fid, w, ALL_POSITIONS) for w in wholes}
    rid = {w: r for r, w in zip(nodes, wholes)}
    chunks = _chunks([space.sites[s].layer or 0 for s in s_idx.tolist()], per)
    states = _start_states(interp, ir, fid, fwd, {layer for _, _, layer in chunks if layer})
    # (asked before any hook is in: it runs a forward of its own)
    as_tuple = bool(states) and _tuples(interp)
    out = torch.empty(total, n)
    for lo, hi, layer in chunks:
        ends = [_end(interp, ir, pairs, space.sites[s], space.positions[p])
                for s, p in zip(s_idx[lo:hi].tolist(), p_idx[lo:hi].tolist())]
        used = list(dict.fromkeys(whole_site(site) for site, _, _, _ in ends))
        acc = [torch.zeros_like(diff, dtype=torch.float32) for _, _, _, diff in ends]
        for first in range(0, steps, k):
            alphas = [(t + 0.5) / steps for t in range(first, min(steps, first + k))]
            r = (hi - lo) * len(alphas)
            replace = {w: _interpolate(base, columns, ends, w, alphas) for w in used}
            around = None
            if layer:  # the blocks below the chunk's layer: B's state, not recomputed
                around = lambda r=r, layer=layer: skip_layers(  # noqa: E731
                    interp.adapter.layers(), layer, states[layer].repeat_interleave(r, 0),
                    as_tuple)
            _, grads = gradients(interp, ir, backward.metric, [rid[w] for w in used],
                                 replace=replace, repeat=r, nodes=nodes, around=around,
                                 trim=_trim(fwd, base.repeat(r), columns))
            for m, (site, pos, _, _) in enumerate(ends):
                g = grads[rid[whole_site(site)]]
                g = g.view(n, hi - lo, len(alphas), *g.shape[1:])[:, m].float().sum(1)
                acc[m] += _cut(g, ALL_POSITIONS, base, pos, site, columns).cpu() / steps
        for m, (_, pos, _, diff) in enumerate(ends):
            delta = (diff.float().cpu() * acc[m]).flatten(1).sum(1)
            out[lo + m] = torch.where(position_valid(base, pos), m_b + delta, torch.nan)
    return out


def _trim(fwd: Forward, batch: Batch, columns) -> Trim | None:
    """Logits only at the positions B's metrics read (trim_logits' choice for B's forward;
    every token id: a log-probability needs them all), not at every position of every row."""
    if not fwd.logit_positions:
        return None
    slots = {p: j for j, p in enumerate(fwd.logit_positions)}
    index = torch.cat([position_index(batch, p, columns)[:, :1] for p in fwd.logit_positions],
                      1)
    return Trim(slots, index, None, None)


def _chunks(layers: list[int], per: int) -> list[tuple[int, int, int]]:
    """(lo, hi, layer): runs of at most `per` consecutive members of one layer (a pass then
    starts at its layer, and its backward stops there)."""
    out = []
    lo = 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i] != layers[lo] or i - lo == per:
            out.append((lo, i, layers[lo]))
            lo = i
    return out


def _tuples(interp: "RunContext") -> bool:
    """Do the model's blocks return tuples (what a skipped block's stub must return)?"""
    return interp.adapter.fam.tuple_blocks or \
        blocks_return_tuples(interp.model, interp.adapter.layer(0))


def _start_states(interp: "RunContext", ir: IRGraph, fid: str, fwd: Forward,
                  layers: set[int]) -> dict[int, torch.Tensor]:
    """B's residual stream entering each of `layers` [n, T, d], from one forward of B with
    its own writes (taken before B's writes at that site: the passes apply those)."""
    if not layers:
        return {}
    batch = interp.run_inputs(fwd.run).batch
    got: dict[int, torch.Tensor] = {}

    def grab(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(act: torch.Tensor) -> None:
            got[layer] = act.detach().clone()
        return fn

    hooks = [("resid_pre", layer, None, grab(layer)) for layer in sorted(layers)]
    hooks += interp.hooks_for(ir, fid, fwd, batch, reads=False)
    with torch.no_grad(), interp.adapter.hooks(hooks), interp.model_pass():
        interp.model(**batch.to(interp.device).model_kwargs())
    return got


def _end(interp: "RunContext", ir: IRGraph, pairs: dict[Site, tuple[str, str]], site: Site,
         pos) -> End:
    """A member's interpolation ends: (site, positions, a_B, a_A - a_B) at its positions
    and features, each run's Read cut with that run's own token indices."""
    ra, rb = pairs[whole_site(site)]
    cut = []
    for rid in (ra, rb):
        read: Read = ir.node(rid)  # type: ignore[assignment]
        value = interp.values[rid]
        run = ir.node(read.forward).run  # type: ignore[union-attr]
        cut.append(_cut(value.value, read.pos, value.batch, pos, site, interp.columns_for(run)))
    a, b = cut
    return site, pos, b, a.to(b.device) - b


def _cut(value: torch.Tensor, read_pos, batch: Batch, pos, site: Site, columns
         ) -> torch.Tensor:
    """A whole site's value (or gradient) [n, k, d] read at `read_pos`, cut to a member's
    positions (gathered, when the read holds others too) and features."""
    if pos != read_pos:
        value = gather(value, position_index(batch, pos, columns).to(value.device))
    return value[..., _features(site, value)]


def _interpolate(batch: Batch, columns, ends: list[End], whole: Site, alphas: list[float]
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The edit of `whole` in a pass whose rows are example x member x step: each member at
    this site gets a_B + alpha (a_A - a_B) at its positions and features, in its own rows.
    Those entries are constants, like a swap's; every other entry keeps its value and its
    gradient path (an earlier member site's gradient flows through it)."""
    k, m_count = len(alphas), len(ends)
    mine = [(m, e) for m, e in enumerate(ends) if whole_site(e[0]) == whole]

    def fn(act: torch.Tensor) -> torch.Tensor:
        n = act.shape[0] // (m_count * k)
        new, mask = act.detach().clone(), torch.zeros_like(act, dtype=torch.bool)
        al = torch.tensor(alphas, device=act.device, dtype=torch.float32)
        for m, (site, pos, b, diff) in mine:
            rows = (torch.arange(n)[:, None] * (m_count * k) + m * k +
                    torch.arange(k)[None, :]).flatten().to(act.device)  # row i, step t
            idx = position_index(batch, pos, columns).repeat_interleave(k, 0)
            b, diff = b.to(act.device, torch.float32), diff.to(act.device, torch.float32)
            al_ = al.view(1, k, *([1] * (b.dim() - 1)))
            point = (b[:, None] + al_ * diff[:, None]).flatten(0, 1)  # [n k, positions, f]
            feats = _features(site, act)
            sub, msub = new[rows], mask[rows]
            sub[..., feats] = scatter(sub[..., feats], idx, point)
            msub[..., feats] = scatter(msub[..., feats], idx, torch.ones_like(point))
            new[rows], mask[rows] = sub, msub
        return torch.where(mask, new, act)
    return fn
