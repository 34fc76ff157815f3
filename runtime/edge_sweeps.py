"""Running edge sweeps (compiler/ir_edges.py): path patching of many single edges, a sweep
Forward's members, each the target run with one receiver's input changed by one sender's
difference.

Member j patches edge (s_j, r_j): the receiver r_j alone sees x + (new_s - cur_s) at the
sweep's positions, new_s being the sender's value in the source run (`edge`), its mean over
the source run's examples (`edge_mean`) or 0 (`edge_zero`), and cur_s its value in the
target's unpatched run (a single edge's sender comes before its receiver, so no write of the
member changes it). These are the numbers of the per-edge Write (runtime/edges.py), computed
by the same code (edge_stack._Sender).

- `chunk_hooks` (the plan interpreter, runtime/sweeps.run_chunk): a chunk of k members
  stacks k copies of the run's batch; each sender's difference is computed once per chunk,
  and each receiver input the chunk writes gets one hook that adds their senders'
  differences to the rows of the members patching it, through index tensors. The receiver
  hooks (runtime/adapters/receivers.py) recompute a head's projection (or an MLP's input)
  only for the rows whose input changed.
- `member_hooks` (the reference interpreter, runtime/sweep_members.py): member by member, the
  per-edge Write's own hook (runtime/edges.edge_hooks).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from patchc.compiler.ir import Forward, IRGraph, Write
from patchc.compiler.ir_edges import EdgeSet, sweep_inputs

from .edge_stack import _Sender
from .edges import edge_hooks
from .inputs import Batch, position_index, position_valid
from .writes import ReadValue


def is_edge_sweep(f: Forward) -> bool:
    return isinstance(f.sweep.space, EdgeSet)


def _values(interp, f: Forward) -> tuple[list[ReadValue | None], list[ReadValue]]:
    """Per sender of the sweep: (its new-value Read on the source run, None for edge_zero;
    its Read on the target's unpatched run)."""
    new_ids, cur_ids = sweep_inputs(f)
    cur = [interp.values[i] for i in cur_ids]
    new = [interp.values[i] for i in new_ids] if new_ids else [None] * len(cur)
    return new, cur


def chunk_hooks(interp, ir: IRGraph, f: Forward, batch: Batch, columns, rows: np.ndarray,
                p0: int) -> tuple[list, torch.Tensor]:
    """The hooks of a chunk of an edge sweep's members `rows` (one per receiver input it
    writes) and valid [k, n]: which member rows have the sweep's positions."""
    es: EdgeSet = f.sweep.space
    pos = es.pos
    n, k = batch.n, len(rows)
    s_of = np.asarray(es.sender_of, dtype=np.int64)[rows]
    r_of = np.asarray(es.receiver_of, dtype=np.int64)[rows]
    idx = position_index(batch, pos, columns)  # [n, slots]
    have = position_valid(batch, pos)  # [n]
    valid = (have & interp.valid_rows(ir, f, batch))[None, :].expand(k, n)
    new, cur = _values(interp, f)
    write = Write(es.receivers[0], pos, f.sweep.mode, ())
    used = sorted(set(s_of.tolist()))
    at = np.full(len(es.senders), -1, dtype=np.int64)
    at[used] = np.arange(len(used))
    # each sender's difference once for the chunk, [senders used, n, slots, d] float32
    deltas = torch.stack([_Sender(write, es.senders[s], new[s], cur[s], None).difference(
        cur[s].value, idx, False, batch) for s in used])
    hooks = []
    for r in sorted(set(r_of.tolist())):
        sel = np.flatnonzero(r_of == r)
        site = es.receivers[r]
        add = _EdgeAdd(torch.from_numpy(sel), n, idx - p0,
                       deltas[torch.from_numpy(at[s_of[sel]])], have)
        hooks.append((site.kind, site.layer, site.head, add))
    return hooks, valid


class _EdgeAdd:
    """The hook of one receiver input in a chunk: the rows of the chunk members `sel`
    (member-major blocks of n rows) get their sender's difference `delta` [M, n, slots, d]
    added at token slots `pos` [n, slots], where the row's example has the positions
    (`ok` [n]); other rows are left as they are (and cost the receiver nothing)."""

    def __init__(self, sel: torch.Tensor, n: int, pos: torch.Tensor, delta: torch.Tensor,
                 ok: torch.Tensor) -> None:
        m = sel.numel()
        self.row = (sel[:, None] * n + torch.arange(n)[None, :]).reshape(-1)  # [M*n]
        self.pos = pos.repeat(m, 1)  # [M*n, slots]
        self.delta = delta.reshape(m * n, *delta.shape[2:])  # [M*n, slots, d]
        self.ok = ok.repeat(m)  # [M*n]

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        dev = act.device
        r = self.row.to(dev)[:, None]
        q = self.pos.to(dev)
        cur = act[r, q]  # [M*n, slots, d]
        # (as the per-edge write computes it: in float32, then rounded to the activation's)
        new = (cur.float() + self.delta.to(dev)).to(act.dtype)
        new = torch.where(self.ok.to(dev)[:, None, None], new, cur)
        out = act.clone()
        out[r, q] = new
        return out


def member_hooks(interp, f: Forward, batch: Batch, columns
                 ) -> Iterator[tuple[tuple[str, int | None, int | None, Callable], Write]]:
    """Per member, in row order: (the hook of its per-edge Write, that Write)."""
    es: EdgeSet = f.sweep.space
    new, cur = _values(interp, f)
    for s, r in zip(es.sender_of, es.receiver_of):
        site = es.receivers[r]
        write = Write(site, es.pos, f.sweep.mode, (), senders=(es.senders[s],))
        values = [cur[s]] if new[s] is None else [new[s], cur[s]]
        fn, _ = edge_hooks(write, batch, columns, values, interp.seed)
        yield (site.kind, site.layer, site.head, fn), write
