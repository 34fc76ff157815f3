"""The stacked edge writers (runtime/edge_stack.py) against the sum over senders written out
in plain torch: receivers of one group share one product, senders read live and from the
unpatched run, `all` and `last` positions, the three modes, and one hook set serving two
forwards (the live senders' new values must be used the second time)."""

from __future__ import annotations

import torch

from patchc.compiler.ir import ALL_POSITIONS, Positions, Site, Write
from patchc.runtime.edge_stack import Senders
from patchc.runtime.edges import edge_hooks
from patchc.runtime.inputs import Batch
from patchc.runtime.writes import ReadValue

N, T, D = 3, 5, 4
LAST = Positions("last")
EMBED, H0, MLP0, H1 = Site("embed"), Site("out", 0, 1), Site("mlp.out", 0), Site("out", 1, 0)


def _batch() -> Batch:
    return Batch(torch.zeros(N, T, dtype=torch.long), torch.ones(N, T, dtype=torch.long),
                 torch.arange(T).expand(N, T), [T] * N)


def _read(batch: Batch, pos: Positions, g: torch.Generator) -> ReadValue:
    k = T if pos.kind == "all" else 1
    return ReadValue(torch.randn(N, k, D, generator=g), batch, pos)


def test_grouped_receivers_equal_the_plain_sums() -> None:
    g = torch.Generator().manual_seed(0)
    batch = _batch()
    a = {s: {p: _read(batch, p, g) for p in (ALL_POSITIONS, LAST)} for s in (EMBED, H0, MLP0, H1)}
    cached = _read(batch, ALL_POSITIONS, g)  # embed's value in the unpatched run
    cached_at = {ALL_POSITIONS: cached, LAST: ReadValue(cached.value[:, -1:], batch, LAST)}
    # (receiver, positions, mode, senders, live senders)
    specs = [(Site("q.in", 2, 0), ALL_POSITIONS, "edge", (EMBED, H0, MLP0, H1), (H0, MLP0, H1)),
             (Site("k.in", 2, 1), ALL_POSITIONS, "edge", (H0, H1), (H0, H1)),
             (Site("v.in", 2, 3), ALL_POSITIONS, "edge", (EMBED, MLP0), (MLP0,)),
             (Site("q.in", 2, 2), LAST, "edge", (EMBED, H1), (H1,)),
             (Site("mlp.in", 2), ALL_POSITIONS, "edge_zero", (H0, H1), (H0, H1)),
             (Site("k.in", 2, 0), ALL_POSITIONS, "edge_mean", (EMBED, H1), (H1,))]
    shared = Senders()
    hooks, captures = [], {}
    for site, pos, mode, senders, live in specs:
        inputs = [] if mode == "edge_zero" else [a[s][ALL_POSITIONS if mode == "edge_mean" else pos]
                                                 for s in senders]
        inputs += [cached_at[pos] for s in senders if s not in live]
        write = Write(site, pos, mode, senders=senders,
                      live=tuple(i for i, s in enumerate(senders) if s in live))
        fn, more = edge_hooks(write, batch, {}, inputs, 0, shared)
        hooks.append(fn)
        captures.update({Site(k, layer, head): c for k, layer, head, c in more})
    assert set(captures) == {H0, MLP0, H1}  # each live sender captured once

    for _ in range(2):  # the second forward has new live values
        live = {s: torch.randn(N, T, D, generator=g) for s in (H0, MLP0, H1)}
        for s, c in captures.items():
            assert c(live[s]) is None
        cur = {EMBED: cached.value, **live}
        for (site, pos, mode, senders, _), fn in zip(specs, hooks):
            x = torch.randn(N, T, D, generator=g)
            want = x.clone()
            at = slice(None) if pos.kind == "all" else slice(T - 1, T)
            for s in senders:
                new = {"edge": a[s][pos].value, "edge_zero": torch.zeros(N, 1, D),
                       "edge_mean": a[s][ALL_POSITIONS].value.mean(0, keepdim=True)}[mode]
                want[:, at] += new - cur[s][:, at]
            assert torch.allclose(fn(x), want, atol=1e-6), (site, pos, mode)
    # the q/k/v receivers at every position made one stack of differences
    stack = shared.stacks[(ALL_POSITIONS, "edge")]
    assert len(stack.groups) == 1 and stack.used == 4
