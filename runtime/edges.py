"""Edge Writes as hook functions (ir.Write modes `edge`, `edge_mean`, `edge_zero`).

The Write sits on a receiver's input site (runtime/adapters/receivers.py: only that receiver
sees what the hook returns) and adds, at its positions, sum over its senders of
(new_s - cur_s): new_s is run A's value of the sender (`edge`), A's mean over examples
(`edge_mean`, as an ablation with mean(A) computes it) or 0 (`edge_zero`); cur_s is the
sender's value in this forward, from a Read of the unpatched run or, for the senders in
`Write.live`, captured in the forward itself by a read hook that `edge_hooks` also returns.
"""

from __future__ import annotations

from typing import Callable

import torch

from patchc.compiler.ir import Site, Write

from .inputs import Batch, position_index, position_valid
from .writes import ReadValue, _mean_value, _repeat, gather, scatter

EDGE_MODES = frozenset({"edge", "edge_mean", "edge_zero"})
Hook = tuple[str, int | None, int | None, Callable]


def edge_hooks(write: Write, batch: Batch, columns, inputs: list, seed: int
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[Hook]]:
    """(the writer hook on the receiver input, read hooks capturing the live senders). The
    read hooks must be installed with the writer, for the same rows."""
    idx = position_index(batch, write.pos, columns)
    valid = position_valid(batch, write.pos)
    k = len(write.senders)
    n_new = 0 if write.mode == "edge_zero" else k
    new_vals, rest = inputs[:n_new], inputs[n_new:]
    cached = iter(rest)
    cur: list[ReadValue | None] = [None if i in write.live else next(cached) for i in range(k)]
    live: dict[int, torch.Tensor] = {}
    captures: list[Hook] = []
    for i in write.live:
        s: Site = write.senders[i]

        def store(act: torch.Tensor, i=i) -> None:
            live[i] = act.detach()
            return None

        captures.append((s.kind, s.layer, s.head, store))

    def fn(act: torch.Tensor) -> torch.Tensor:
        here = gather(act, idx)  # [N, k, d]
        n = here.shape[0]
        delta = torch.zeros(here.shape, dtype=torch.float32, device=act.device)
        for i in range(k):
            now = gather(live[i], idx) if i in live else \
                _repeat(cur[i].value, n).to(act.device)  # type: ignore[union-attr]
            if write.mode == "edge":
                new = _repeat(new_vals[i].value, n).to(act.device)
            elif write.mode == "edge_mean":
                new = _mean_value(write, new_vals[i], now, batch, idx)
            else:
                new = torch.zeros_like(now)
            delta += new.float() - now.float()
        out = (here.float() + delta).to(act.dtype)
        if not bool(valid.all()):  # rows without this position stay as they are
            keep = valid.to(act.device).view(-1, 1, 1)
            out = torch.where(keep, out, here)
        live.clear()
        return scatter(act, idx, out)

    return fn, captures


def is_edge(write: Write) -> bool:
    return write.mode in EDGE_MODES

