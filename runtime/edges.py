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


def edge_hooks(write: Write, batch: Batch, columns, inputs: list, seed: int,
               shared: dict | None = None
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[Hook]]:
    """(the writer hook on the receiver input, read hooks capturing the live senders). The
    read hooks must be installed with the writer, for the same rows. `shared` (one dict per
    forward and rows) lets the writes of one forward capture each live sender once: a sender
    already captured there gets no second hook."""
    shared = {} if shared is None else shared
    idx = position_index(batch, write.pos, columns)
    valid = position_valid(batch, write.pos)
    k = len(write.senders)
    n_new = 0 if write.mode == "edge_zero" else k
    new_vals, rest = inputs[:n_new], inputs[n_new:]
    cached = iter(rest)
    cur: list[ReadValue | None] = [None if i in write.live else next(cached) for i in range(k)]
    live: dict[int, dict] = {}  # sender index -> the box its capture hook fills
    captures: list[Hook] = []
    for i in write.live:
        s: Site = write.senders[i]
        if s not in shared:
            box: dict = {}
            shared[s] = box

            def store(act: torch.Tensor, box=box) -> None:
                box["value"] = act.detach()
                return None

            captures.append((s.kind, s.layer, s.head, store))
        live[i] = shared[s]

    def fn(act: torch.Tensor) -> torch.Tensor:
        here = gather(act, idx)  # [N, k, d]
        n = here.shape[0]
        key = (n, here.shape[1], act.device)
        if key not in fixed:  # the senders read from the unpatched run: one sum, kept
            fixed[key] = _sum(here, [i for i in range(k) if i not in live])
        delta = fixed[key].clone()
        delta += _sum(here, list(live))
        out = (here.float() + delta).to(act.dtype)
        if not bool(valid.all()):  # rows without this position stay as they are
            keep = valid.to(act.device).view(-1, 1, 1)
            out = torch.where(keep, out, here)
        return scatter(act, idx, out)

    fixed: dict = {}

    def _sum(here: torch.Tensor, senders: list[int]) -> torch.Tensor:
        """sum of (new_i - cur_i) over `senders`, float32, at the write's positions."""
        n = here.shape[0]
        delta = torch.zeros(here.shape, dtype=torch.float32, device=here.device)
        for i in senders:
            now = gather(live[i]["value"], idx) if i in live else \
                _repeat(cur[i].value, n).to(here.device)  # type: ignore[union-attr]
            if write.mode == "edge":
                new = _repeat(new_vals[i].value, n).to(here.device)
            elif write.mode == "edge_mean":
                new = _mean_value(write, new_vals[i], now, batch, idx)
            else:
                new = torch.zeros_like(now)
            delta += new.float().to(here.device) - now.float()
        return delta

    return fn, captures


def is_edge(write: Write) -> bool:
    return write.mode in EDGE_MODES

