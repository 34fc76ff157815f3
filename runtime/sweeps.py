"""Running compact sweeps (compiler/ir_sweep.py): a chunk of a sweep's members as one
batched pass, every member's edit applied through index tensors.

A chunk of k members stacks k copies of the run's batch (member-major rows, as a batch group
does). For each whole site the chunk writes (one hook each: a layer's neurons share one; a
layer's heads have one per head), the hook gathers the current values of every (row, token
slot, feature) a member edits in one indexing operation, computes their new values the way
runtime/writes.py computes a member's write, and scatters them back:

  replace / mean / resample  the new value of the whole site at the member's position is
                             computed once per position (writes._new_value on the Read of
                             the whole site, sliced to that position), then sliced to the
                             member's features;
  zero / mul / add           from the current values, with each member's scale and vector.

Rows whose prompt lacks the member's position keep their values and measure NaN, as in
writes.make_writer. An edge sweep's chunk (its space an ir_edges.EdgeSet) gets its hooks
from runtime/edge_sweeps.py instead: one per receiver input, adding each member's sender
difference in the member's rows. Metrics are evaluated on the chunk's logits right after the pass
(examples-major, so the naive interpreter's metric code applies unchanged) and stored into
the sweep's [members, examples] values; the chunk's logits are then dropped.
runtime/naive.py runs the same members one forward each (runtime/sweep_members.py).
"""

from __future__ import annotations


import numpy as np
import torch

from patchc.compiler.ir import Forward, IRGraph, Metric, Write
from patchc.compiler.ir_sweep import READ_MODES, SweepSpec, execution_order, members, split, \
    site_wholes, whole_index
from patchc.compiler.schedule import ForwardStep

from .edge_sweeps import chunk_hooks, is_edge_sweep
from .inputs import Batch, position_index, position_valid
from .forward_values import ForwardOutput
from .prefix import widen
from .sweep_members import slice_read
from .writes import _new_value, make_writer


def _whole_values(interp, ir: IRGraph, f: Forward, batch: Batch, columns, ws: np.ndarray,
                  ps: np.ndarray) -> dict[tuple[int, int], torch.Tensor]:
    """(whole site, position) -> the new value [n, slots, D] a write of the whole site at the
    position would put there (replace / mean / resample)."""
    spec: SweepSpec = f.sweep
    out = {}
    for w, p in set(zip(ws.tolist(), ps.tolist())):
        pos = spec.space.positions[p]
        src = slice_read(interp, ir, f.inputs[w], pos)
        idx = position_index(batch, pos, columns)
        cur = torch.zeros(batch.n, idx.shape[1], src.value.shape[-1], dtype=src.value.dtype,
                          device=src.value.device)
        write = Write(spec.whole[w], pos, spec.mode, (), 1.0, spec.seed)
        out[w, p] = _new_value(write, spec.mode, cur, [src], batch, idx, interp.seed)
    return out


def _site_arrays(interp, fid: str, spec: SweepSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per site of the sweep: its whole site's index (one hook each: `spec.whole`'s order
    where the members read from it, else first appearance) and its first feature. Made once
    per sweep (chunks reuse them)."""
    cache = interp.__dict__.setdefault("_sweep_sites", {})
    if fid not in cache:
        sites = spec.space.sites
        wmap = whole_index(spec) if spec.whole else site_wholes(spec.space)[1]
        lo = np.array([0 if x.features is None else x.features[0] for x in sites])
        cache[fid] = (wmap, lo)
    return cache[fid]


def _hooks(interp, ir: IRGraph, fid: str, f: Forward, batch: Batch, columns,
           rows: np.ndarray, p0: int) -> tuple[list, torch.Tensor]:
    """The chunk's hooks (one per whole site) and valid [k, n]: which member rows have the
    member's position (and the run's own written positions)."""
    spec: SweepSpec = f.sweep
    space = spec.space
    n = batch.n
    s_idx, p_idx, v_idx = split(space, members(space)[rows])
    wmap, site_lo = _site_arrays(interp, fid, spec)
    w_idx = wmap[s_idx]
    # The position variants of the chunk, and each member's place among them.
    variants = sorted(set(p_idx.tolist()))
    vmap = np.full(len(space.positions), -1)
    vmap[variants] = np.arange(len(variants))
    pv = torch.from_numpy(vmap[p_idx])  # [k]
    index = torch.stack([position_index(batch, space.positions[p], columns)
                         for p in variants])  # [P', n, slots]
    have = torch.stack([position_valid(batch, space.positions[p]) for p in variants])
    valid = have[pv] & interp.valid_rows(ir, f, batch)[None, :]  # [k, n]
    news = None
    if spec.mode in READ_MODES:
        whole = _whole_values(interp, ir, f, batch, columns, w_idx, p_idx)
    vectors = torch.stack([interp.values[i].float() for i in f.inputs]) \
        if spec.mode == "add" else None
    scales = torch.tensor(spec.scales, dtype=torch.float32)[torch.from_numpy(v_idx)]
    hooks = []
    for w in sorted(set(w_idx.tolist())):
        sel = np.flatnonzero(w_idx == w)
        site = space.sites[int(s_idx[sel[0]])]
        if spec.mode in READ_MODES:  # [P', n, slots, D]: this whole site's new values
            news = torch.stack([whole[w, p] for p in variants])
        t_sel = torch.from_numpy(sel)
        edit = _Edit(spec.mode, t_sel, n, index[pv[t_sel]] - p0, pv[t_sel],
                     torch.from_numpy(site_lo[s_idx[sel]]),
                     None if site.features is None else site.features[1] - site.features[0],
                     valid[t_sel], scales[t_sel], news,
                     None if vectors is None else vectors[torch.from_numpy(v_idx[sel])])
        hooks.append((site.kind, site.layer, site.head, edit))
    return hooks, valid


class _Edit:
    """The hook editing chunk members `sel` (all at one whole site): for each member's
    rows, its token slots `pos` [M, n, slots] (padded index - p0) and features lo..lo+width
    get their new values, where the row has the position (`ok` [M, n])."""

    def __init__(self, mode: str, sel: torch.Tensor, n: int, pos: torch.Tensor,
                 variant: torch.Tensor, lo: torch.Tensor, width: int | None,
                 ok: torch.Tensor, scales: torch.Tensor, news: torch.Tensor | None,
                 vectors: torch.Tensor | None) -> None:
        m = sel.numel()
        self.mode, self.width = mode, width
        self.row = (sel[:, None] * n + torch.arange(n)[None, :]).reshape(-1)  # [M*n]
        self.example = torch.arange(n).repeat(m)
        self.variant = variant.repeat_interleave(n)
        self.pos = pos.reshape(m * n, -1)  # [M*n, slots]
        self.lo = lo.repeat_interleave(n)
        self.ok = ok.reshape(-1)
        self.scales = scales.repeat_interleave(n)
        self.news = news  # [P', n, slots, D] (replace / mean / resample)
        self.vectors = None if vectors is None else vectors.repeat_interleave(n, 0)

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        dev = act.device
        d = act.shape[-1] if self.width is None else self.width
        fi = (self.lo.to(dev)[:, None] + torch.arange(d, device=dev)[None, :])[:, None, :]
        r = self.row.to(dev)[:, None, None]
        q = self.pos.to(dev)[:, :, None]
        cur = act[r, q, fi]  # [M*n, slots, d]
        if self.news is not None:
            slots = torch.arange(q.shape[1], device=dev)[None, :, None]
            new = self.news.to(dev)[self.variant.to(dev)[:, None, None],
                                    self.example.to(dev)[:, None, None], slots, fi]
            new = new.to(act.dtype)
        elif self.mode == "zero":
            new = torch.zeros_like(cur)
        elif self.mode == "mul":
            # (as `cur * scale` with a Python float: computed in float32, then rounded)
            new = (cur.float() * self.scales.to(dev)[:, None, None]).to(act.dtype)
        else:  # add
            assert self.vectors is not None
            new = (cur.float() + self.scales.to(dev)[:, None, None] *
                   self.vectors.to(dev)[:, None, :]).to(act.dtype)
        new = torch.where(self.ok.to(dev)[:, None, None], new, cur)
        out = act.clone()
        out[r, q, fi] = new
        return out


def _blocks(fn, k: int, n: int):
    """`fn` (a hook for n rows) applied to each of k blocks of n rows."""
    def blocks(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        for b in range(k):
            new = fn(out[b * n:(b + 1) * n])
            if new is not None:
                out[b * n:(b + 1) * n] = new
        return out

    return blocks


@torch.no_grad()
def run_chunk(ex, ir: IRGraph, step: ForwardStep, rows: np.ndarray | None = None) -> None:
    """One pass of a sweep chunk on the plan interpreter `ex` (runtime/execute.Executor):
    the members `rows` (row indices; default the step's range of the execution order); its
    metrics go to `ex.sweep_values`."""
    fid = step.members[0]
    f: Forward = ir.node(fid)  # type: ignore[assignment]
    assert step.sweep is not None
    if rows is None:
        lo, hi = step.sweep
        rows = execution_order(f.sweep.space)[lo:hi]
    batch = ex.run_inputs(f.run).batch
    columns = ex.columns_for(f.run)
    n, k, p0 = batch.n, len(rows), step.p0
    if is_edge_sweep(f):  # path patching: each member's edge in its own rows
        hooks, valid = chunk_hooks(ex, ir, f, batch, columns, rows, p0)
    else:
        hooks, valid = _hooks(ex, ir, fid, f, batch, columns, rows, p0)
    # The run's own writes first (those its start state has not applied yet), built for
    # one member's batch and applied block by block, so seeded draws are each member's own.
    shared = len(ir.node(f.twin).writes) if f.start else 0  # type: ignore[union-attr]
    baked = []
    for wid in f.writes[shared:]:
        w: Write = ir.node(wid)  # type: ignore[assignment]
        fn = make_writer(w, batch, columns, [ex.values[i] for i in w.inputs], ex.seed)
        baked.append((w.site.kind, w.site.layer, w.site.head,
                      _blocks(widen(fn, p0, batch.width), k, n)))
    hooks = baked + hooks

    out, slots, remap = ex.model_pass_of(ir, step, [f] * k, batch, columns, hooks)
    logits = out.logits
    del out

    # Examples-major rows (example i's k members together), as noise samples are laid out:
    # the interpreter's token ids and metric code then apply as they are.
    out = ForwardOutput(batch.repeat(k), 1)
    out.valid = valid.T.reshape(-1)
    out.token_map = remap  # type: ignore[attr-defined]
    metrics = [(m, ir.node(m)) for m in ir.g.successors(fid)
               if isinstance(ir.node(m), Metric)]
    for _, m in metrics:
        if m.pos in out.logits:
            continue
        if slots is not None:
            at = logits[:, slots[m.pos]]
        else:
            idx = (position_index(batch, m.pos, columns) - p0).repeat(k, 1).to(logits.device)
            at = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))[:, 0]
        out.logits[m.pos] = at.reshape(k, n, -1).transpose(0, 1).reshape(k * n, -1).float()
    ex.values[fid] = out
    order = torch.from_numpy(rows.copy())
    total = len(f.sweep)
    for mid, m in metrics:
        values = ex.metric(ir, m).reshape(n, k).T  # [k, n]
        buf = ex.sweep_values.get(mid)
        if buf is None:
            buf = ex.sweep_values[mid] = torch.full((total, n), torch.nan)
        buf[order] = values
    del ex.values[fid]
