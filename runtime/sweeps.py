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
writes.make_writer. Metrics are evaluated on the chunk's logits right after the pass
(examples-major, so the naive interpreter's metric code applies unchanged) and stored into
the sweep's [members, examples] values; the chunk's logits are then dropped.
runtime/naive.py runs the same members one forward each (runtime/sweep_members.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from patchc.compiler.ir import Forward, IRGraph, Metric, Write
from patchc.compiler.ir_sweep import READ_MODES, SweepSpec, execution_order, members, split, \
    whole_index, whole_site
from patchc.compiler.schedule import ForwardStep

from .compat import with_cache
from .inputs import Batch, position_index, position_valid
from .naive import ForwardOutput
from .prefix import prefix_cache, skip_layers, trimmed_logits, widen
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


def _hooks(interp, ir: IRGraph, f: Forward, batch: Batch, columns, rows: np.ndarray,
           p0: int) -> tuple[list, torch.Tensor]:
    """The chunk's hooks (one per whole site) and valid [k, n]: which member rows have the
    member's position."""
    spec: SweepSpec = f.sweep
    space = spec.space
    n, k = batch.n, rows.size
    s_idx, p_idx, v_idx = split(space, members(space)[rows])
    # One hook per whole site (kind, layer, head): `spec.whole`'s index where the members
    # read from it, else the site's place among the distinct whole sites.
    if spec.whole:
        wmap = np.array(whole_index(spec))
    else:
        at: dict = {}
        wmap = np.array([at.setdefault(whole_site(x), len(at)) for x in space.sites])
    w_idx = wmap[s_idx]
    variants = sorted(set(p_idx.tolist()))
    index = {p: position_index(batch, space.positions[p], columns) for p in variants}
    have = {p: position_valid(batch, space.positions[p]) for p in variants}
    valid = torch.stack([have[p] for p in p_idx.tolist()]) if k else torch.zeros(0, n, dtype=bool)
    base = interp.valid_rows(ir, f, batch)
    valid = valid & base[None, :]
    news = _whole_values(interp, ir, f, batch, columns, w_idx, p_idx) \
        if spec.mode in READ_MODES else {}
    vectors = [interp.values[i].float() for i in f.inputs] if spec.mode == "add" else []
    hooks = []
    for w in sorted(set(w_idx.tolist())):
        sel = np.flatnonzero(w_idx == w)
        site = space.sites[int(s_idx[sel[0]])]
        hooks.append((site.kind, site.layer, site.head,
                      _edit(spec, sel, s_idx, p_idx, v_idx, index, valid, news, vectors,
                            n, p0, w)))
    return hooks, valid


def _edit(spec: SweepSpec, sel: np.ndarray, s_idx, p_idx, v_idx, index, valid, news,
          vectors, n: int, p0: int, w: int):
    """The hook editing the chunk members `sel` (all at whole site w)."""
    space = spec.space
    kpos = index[int(p_idx[sel[0]])].shape[1]
    # Per edited (member, example): its batch row, slots, features and validity.
    member = torch.as_tensor(sel).repeat_interleave(n)  # [M*n] chunk member
    example = torch.arange(n).repeat(len(sel))
    row = member * n + example
    pos = torch.stack([index[int(p_idx[j])] for j in sel]).reshape(-1, kpos) - p0  # [M*n, kpos]
    feats = [space.sites[int(s_idx[j])].features for j in sel]
    lo = torch.tensor([0 if fs is None else fs[0] for fs in feats]).repeat_interleave(n)
    width = None if feats[0] is None else feats[0][1] - feats[0][0]
    ok = valid[torch.as_tensor(sel)].reshape(-1)  # [M*n]
    scales = torch.tensor([spec.scales[int(v_idx[j])] for j in sel],
                          dtype=torch.float32).repeat_interleave(n)
    if spec.mode in READ_MODES:
        # [M*n, kpos, D]: each member's example row of its position's whole-site value
        stacked = torch.stack([news[w, int(p_idx[j])] for j in sel])  # [M, n, kpos, D]
        whole_new = stacked.reshape(-1, *stacked.shape[2:])

    def fn(act: torch.Tensor) -> torch.Tensor:
        d = act.shape[-1] if width is None else width
        f_idx = lo.to(act.device)[:, None] + torch.arange(d, device=act.device)[None, :]
        r = row.to(act.device)[:, None, None]
        q = pos.to(act.device)[:, :, None]
        fi = f_idx[:, None, :]
        cur = act[r, q, fi]  # [M*n, kpos, d]
        if spec.mode in READ_MODES:
            new = whole_new.to(act.device).gather(2, fi.expand(-1, kpos, -1)).to(act.dtype)
        elif spec.mode == "zero":
            new = torch.zeros_like(cur)
        elif spec.mode == "mul":
            new = cur * scales.to(act.device, act.dtype)[:, None, None]
        else:  # add
            vec = torch.stack([vectors[int(v_idx[j])] for j in sel]).repeat_interleave(n, 0)
            new = (cur.float() + scales.to(act.device)[:, None, None] *
                   vec.to(act.device)[:, None, :]).to(act.dtype)
        new = torch.where(ok.to(act.device)[:, None, None], new, cur)
        out = act.clone()
        out[r, q, fi] = new
        return out

    return fn


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
def run_chunk(ex, ir: IRGraph, step: ForwardStep) -> None:
    """One pass of a sweep chunk on the plan interpreter `ex` (runtime/execute.Executor);
    its metrics go to `ex.sweep_values`."""
    fid = step.members[0]
    f: Forward = ir.node(fid)  # type: ignore[assignment]
    assert step.sweep is not None
    lo, hi = step.sweep
    rows = execution_order(f.sweep.space)[lo:hi]
    batch = ex.run_inputs(f.run).batch
    columns = ex.columns_for(f.run)
    n, k, p0 = batch.n, hi - lo, step.p0
    hooks, valid = _hooks(ex, ir, f, batch, columns, rows, p0)
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

    feed = batch.to(ex.device)
    kwargs: dict[str, Any] = {
        "input_ids": feed.input_ids[:, p0:].repeat(k, 1),
        "attention_mask": feed.attention_mask.repeat(k, 1),
        "position_ids": feed.position_ids[:, p0:].repeat(k, 1),
        "use_cache": bool(p0)}
    if p0:
        kwargs = with_cache(ex.model, kwargs, prefix_cache(ex.kv[step.twin], p0, k,
                                                           step.start_layer))
    state = None
    if step.start is not None:
        state = ex.values[step.start].value[:, p0:].repeat(k, 1, 1)
    slots, index, tokens, remap = ex._logit_plan(ir, step, [f] * k, batch, columns)
    head = ex.model.get_output_embeddings()
    with ex.adapter.hooks(hooks), \
            skip_layers(ex.adapter.layers(), step.start_layer, state,
                        ex.adapter.fam.tuple_blocks), \
            trimmed_logits(head, index, tokens), ex.model_pass():
        logits = ex.model(**kwargs).logits
    del kwargs, state

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
