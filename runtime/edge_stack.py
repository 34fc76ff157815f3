"""One forward's edge senders, stacked: the receivers of a layer take their inputs' changes
from one matrix product.

An edge Write on receiver r adds delta_r = sum over its senders s of (new_s - cur_s)
(runtime/edges.py). A forward that patches many edges at once (`evaluate` of an edge
circuit: every receiver, each with up to all of its senders) would otherwise sum the senders
one at a time per receiver. Here each sender's difference d_s = new_s - cur_s is computed
once per forward into a row of a stack D [S, n*k*d], and the receivers that read the same
stream at the same point (a group: the q/k/v receivers of one layer, one layer's mlp.in, the
logits) get their changes at once as M @ D, M the [receivers x senders] 0/1 matrix of which
sender each receiver's write patches.

All receivers of a group read one residual stream at one point, so every sender of any of
them is computed before the first of them runs: the group's product is taken when its first
receiver asks, and the others read their rows. A sender read live (changed by this forward's
own writes) is recomputed in each forward, when its capture hook has run again (and so are
the products: no capture falls between the receivers of one group); one read from the
unpatched run is computed once (a hook set may serve several forwards: a compact sweep's
members, gradient steps).
"""

from __future__ import annotations

from typing import Callable

import torch

from patchc.compiler.ir import Positions, Site, Write

from .inputs import Batch
from .writes import ReadValue, _mean_value, _repeat, gather

# A sender's difference is defined by its site, how its new value is made (mode, and the
# run-A value's identity) and where its current value comes from (a cached Read, or live).
SenderKey = tuple[Site, str, int | None, int | None]


def group_of(site: Site) -> tuple:
    """Receivers that read the same stream at the same point: q/k/v of one layer share the
    attention normalizer's input; mlp.in and logits.in stand alone."""
    kind = "qkv" if site.kind in ("q.in", "k.in", "v.in") else site.kind
    return (kind, site.layer)


class _Sender:
    """How to compute one sender's difference at a position set."""

    def __init__(self, write: Write, site: Site, new: ReadValue | None,
                 cur: ReadValue | None, box: dict | None) -> None:
        self.write, self.site, self.new, self.cur, self.box = write, site, new, cur, box

    def difference(self, here: torch.Tensor, idx: torch.Tensor, whole: bool,
                   batch: Batch) -> torch.Tensor:
        """new - cur, float32, [n, k, d] like `here`."""
        n = here.shape[0]
        if self.box is not None:
            act = self.box["value"]
            now = act if whole else gather(act, idx)
        else:
            assert self.cur is not None
            now = _repeat(self.cur.value, n)
        now = now.to(here.device).float()
        mode = self.write.mode
        if mode == "edge":
            assert self.new is not None
            return _repeat(self.new.value, n).to(here.device).float() - now
        if mode == "edge_mean":
            assert self.new is not None
            return _mean_value(self.write, self.new, now, batch, idx).float() - now
        return -now


class _Group:
    """The receivers of one group (group_of) at one position set and mode: their 0/1 rows
    over the stack's senders, and their changes of this forward once computed."""

    def __init__(self, stack: "SenderStack") -> None:
        self.stack = stack
        self.receivers: list[list[SenderKey]] = []  # each receiver's senders
        self.deltas: torch.Tensor | None = None
        self.made: tuple | None = None  # (stack version, shape) the deltas were made at
        self.left = 0  # receivers yet to read the deltas
        self.pairs: tuple[list[SenderKey], torch.Tensor, torch.Tensor] | None = None

    def add(self, senders: list[SenderKey]) -> int:
        self.receivers.append(senders)
        return len(self.receivers) - 1

    def delta(self, r: int, here: torch.Tensor, idx: torch.Tensor, whole: bool
              ) -> torch.Tensor:
        """Receiver r's change this forward, [n, k, d] float32. The product is taken again
        when a live sender has been captured since (a new forward) or the shape changed."""
        made = (self.stack.version, tuple(here.shape), here.device)
        if self.deltas is None or made != self.made:
            self.deltas = self._product(here, idx, whole)
            self.made, self.left = made, len(self.receivers)
        out = self.deltas[r]
        self.left -= 1
        if not self.left:  # every receiver has its change: the product is not kept
            self.deltas = None
        return out

    def _product(self, here: torch.Tensor, idx: torch.Tensor, whole: bool) -> torch.Tensor:
        if self.pairs is None:  # (receiver, sender) pairs as indices into the group's senders
            keys = list(dict.fromkeys(k for ks in self.receivers for k in ks))
            at = {k: j for j, k in enumerate(keys)}
            self.pairs = (keys,
                          torch.tensor([i for i, ks in enumerate(self.receivers) for _ in ks]),
                          torch.tensor([at[k] for ks in self.receivers for k in ks]))
        keys, receiver, sender = self.pairs
        rows = torch.tensor([self.stack.row(k, here, idx, whole) for k in keys])
        d = self.stack.rows_used()
        mask = torch.zeros(len(self.receivers), len(d), dtype=torch.float32)
        mask.index_put_((receiver, rows[sender]), torch.ones(len(sender)), accumulate=True)
        return (mask.to(d.device) @ d).view(len(self.receivers), *here.shape)


class SenderStack:
    """The senders' differences of one forward (its rows of the batch), at one position set
    and mode, stacked in the order they are first needed."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.senders: dict[SenderKey, _Sender] = {}
        self.rows: dict[SenderKey, int] = {}
        self.stale: set[SenderKey] = set()
        self.groups: dict[tuple, _Group] = {}
        self.buf: torch.Tensor | None = None
        self.used = 0
        self.version = 0  # counts captures of live senders

    def sender(self, key: SenderKey, make: Callable[[], _Sender]) -> None:
        if key not in self.senders:
            self.senders[key] = make()

    def group(self, site: Site) -> _Group:
        return self.groups.setdefault(group_of(site), _Group(self))

    def captured(self, key: SenderKey) -> None:
        """The live sender `key` has a new value in this forward."""
        self.stale.add(key)
        self.version += 1

    def row(self, key: SenderKey, here: torch.Tensor, idx: torch.Tensor, whole: bool) -> int:
        """The stack row holding `key`'s difference, computed now if it is not up to date."""
        if key in self.rows and key not in self.stale:
            return self.rows[key]
        d = self.senders[key].difference(here, idx, whole, self.batch).reshape(-1)
        if self.buf is None or self.buf.shape[1] != d.numel() or self.buf.device != d.device:
            self.buf = torch.empty(len(self.senders), d.numel(), dtype=torch.float32,
                                   device=d.device)
            self.rows, self.used = {}, 0
        if key not in self.rows:
            self.rows[key] = self.used
            self.used += 1
        self.buf[self.rows[key]] = d
        self.stale.discard(key)
        return self.rows[key]

    def rows_used(self) -> torch.Tensor:
        assert self.buf is not None
        return self.buf[:self.used]


class Senders:
    """Per forward (and rows of a batched pass): the live senders' capture boxes, each
    captured once whatever number of writes read it, and one SenderStack per position set
    and mode."""

    def __init__(self) -> None:
        self.boxes: dict[Site, dict] = {}
        self.stacks: dict[tuple[Positions, str], SenderStack] = {}
        self.watchers: dict[Site, list[Callable[[], None]]] = {}

    def stack(self, pos: Positions, mode: str, batch: Batch) -> SenderStack:
        return self.stacks.setdefault((pos, mode), SenderStack(batch))

    def box(self, site: Site) -> tuple[dict, bool]:
        """(the capture box of a live sender, whether it is new: then it needs a hook)."""
        new = site not in self.boxes
        if new:
            self.boxes[site] = {}
            self.watchers[site] = []
        return self.boxes[site], new

    def watch(self, site: Site, fn: Callable[[], None]) -> None:
        self.watchers[site].append(fn)

    def store(self, site: Site, act: torch.Tensor) -> None:
        self.boxes[site]["value"] = act.detach()
        for fn in self.watchers[site]:
            fn()
