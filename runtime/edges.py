"""Edge Writes as hook functions (ir.Write modes `edge`, `edge_mean`, `edge_zero`).

The Write sits on a receiver's input site (runtime/adapters/receivers.py: only that receiver
sees what the hook returns) and adds, at its positions, sum over its senders of
(new_s - cur_s): new_s is run A's value of the sender (`edge`), A's mean over examples
(`edge_mean`, as an ablation with mean(A) computes it) or 0 (`edge_zero`); cur_s is the
sender's value in this forward, from a Read of the unpatched run or, for the senders in
`Write.live`, captured in the forward itself by a read hook that `edge_hooks` also returns.
The sums of all the writes of one forward are taken together (runtime/edge_stack.py): one
matrix product per group of receivers that read the same stream.
"""

from __future__ import annotations

from typing import Callable

import torch

from patchc.compiler.ir import Write

from .edge_stack import Senders, SenderKey, _Sender
from .inputs import Batch, position_index, position_valid
from .writes import gather, scatter

EDGE_MODES = frozenset({"edge", "edge_mean", "edge_zero"})
Hook = tuple[str, int | None, int | None, Callable]


def edge_hooks(write: Write, batch: Batch, columns, inputs: list, seed: int,
               shared: Senders | None = None
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[Hook]]:
    """(the writer hook on the receiver input, read hooks capturing the live senders). The
    read hooks must be installed with the writer, for the same rows. `shared` (one per
    forward and rows) holds the senders of all the writes of that forward: each live sender
    is captured once, each sender's difference computed once, and the writes of receivers
    that read the same stream summed in one product."""
    shared = Senders() if shared is None else shared
    idx = position_index(batch, write.pos, columns)
    valid = position_valid(batch, write.pos)
    every = write.pos.kind == "all"  # idx is then every position in order
    k = len(write.senders)
    n_new = 0 if write.mode == "edge_zero" else k
    new_vals, cached = inputs[:n_new], iter(inputs[n_new:])
    stack = shared.stack(write.pos, write.mode, batch)
    captures: list[Hook] = []
    keys: list[SenderKey] = []
    for i, s in enumerate(write.senders):
        new = new_vals[i] if n_new else None
        if i in write.live:
            box, fresh = shared.box(s)
            if fresh:
                captures.append((s.kind, s.layer, s.head,
                                 lambda act, s=s: shared.store(s, act)))
            key: SenderKey = (s, write.mode, id(new) if new is not None else None, None)
            if key not in stack.senders:
                shared.watch(s, lambda key=key: stack.captured(key))
            stack.sender(key, lambda s=s, new=new, box=box: _Sender(write, s, new, None, box))
        else:
            cur = next(cached)
            key = (s, write.mode, id(new) if new is not None else None, id(cur))
            stack.sender(key, lambda s=s, new=new, cur=cur: _Sender(write, s, new, cur, None))
        keys.append(key)
    group = stack.group(write.site)
    r = group.add(keys)

    def fn(act: torch.Tensor) -> torch.Tensor:
        whole = every and act.shape[1] == idx.shape[1]  # no gather, no scatter needed
        here = act if whole else gather(act, idx)  # [N, k, d]
        out = (here.float() + group.delta(r, here, idx, whole)).to(act.dtype)
        if not bool(valid.all()):  # rows without this position stay as they are
            keep = valid.to(act.device).view(-1, 1, 1)
            out = torch.where(keep, out, here)
        return out if whole else scatter(act, idx, out)

    return fn, captures


def is_edge(write: Write) -> bool:
    return write.mode in EDGE_MODES
