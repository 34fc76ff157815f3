"""Compact edge Estimates (compiler/ir_edges.py): the value [members, examples] of one Estimate
that stands for every edge of an `attribute EDGES ... using eap | eap_ig | relp`.

Member j's value per example is m_B + sum over its edges (s, r) of (s_A - s_B) . g_r, summed
over positions and features, NaN for an example that lacks a position of one of its receivers
(runtime/edge_estimates.py explains g_r and eap_ig's averaged gradients). The receivers'
gradients come from the Estimate's Backward, or for eap_ig from the interpolated passes,
computed once per (Backward, steps) and kept in `interp.memo`: every Estimate of one statement
shares them.

Two ways to compute the same numbers:
  - `batched` (the executor): the sender differences [S, n, F] times the receiver gradients
    [R, n, F] in one batched product [n, S, R], then each edge's score picked out of it and
    summed per member (index_add);
  - member by member (the naive interpreter, the reference): for each member, each of its
    edges' (s_A - s_B) * g_r summed, as the per-edge Estimate computes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from patchc.compiler.ir import Estimate, IRGraph
from patchc.compiler.ir_edges import EdgeSet, split_inputs

from .edge_estimates import _diff, _ig_gradients
from .inputs import position_valid
from .writes import ReadValue

if TYPE_CHECKING:
    from .context import RunContext


def run_edge_set(interp: "RunContext", ir: IRGraph, node: Estimate,
                 batched: bool = True) -> torch.Tensor:
    """The compact Estimate's value [members, examples] (float32)."""
    a, b, g, _, bid = split_inputs(node)
    m_b, grads = _gradients(interp, ir, bid, node)
    m_b = m_b.cpu()
    like = grads[g[0]]
    valid = torch.stack([_valid(interp, r, node, m_b.shape[0]) for r in g])  # [R, n]
    es: EdgeSet = node.edges
    if batched:
        return _batched(interp, es, a, b, g, grads, m_b, valid, like)
    rows = []
    for j in range(es.count):
        total = torch.zeros_like(m_b)
        ok = torch.ones_like(m_b, dtype=torch.bool)
        for s, r in es.member(j):
            d = _diff(interp, a[s], b[s], like)
            total = total + (d * grads[g[r]].float().flatten(1).to(d.device)).sum(1).cpu()
            ok &= valid[r]
        rows.append(torch.where(ok, m_b + total, torch.nan))
    return torch.stack(rows)


def _batched(interp: "RunContext", es: EdgeSet, a, b, g, grads, m_b: torch.Tensor,
             valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    d = torch.stack([_diff(interp, x, y, like) for x, y in zip(a, b)])  # [S, n, F]
    gr = torch.stack([grads[r].float().flatten(1) for r in g]).to(d.device)  # [R, n, F]
    prod = torch.bmm(d.transpose(0, 1), gr.permute(1, 2, 0)).cpu()  # [n, S, R]
    del d, gr
    si = torch.tensor(es.sender_of, dtype=torch.long)
    ri = torch.tensor(es.receiver_of, dtype=torch.long)
    scores = prod[:, si, ri].T  # [E, n]
    bad = (~valid[ri]).to(torch.int32)  # [E, n]
    if es.count == es.n_edges:  # one edge per member (every pattern but `all(...)`)
        total, invalid = scores, bad
    else:
        member = torch.tensor(es.member_of(), dtype=torch.long)
        total = torch.zeros(es.count, m_b.shape[0]).index_add_(0, member, scores)
        invalid = torch.zeros(es.count, m_b.shape[0], dtype=torch.int32).index_add_(
            0, member, bad)
    return torch.where(invalid == 0, m_b[None, :] + total, torch.nan)


def _gradients(interp: "RunContext", ir: IRGraph, bid: str, node: Estimate):
    """(m_B, receiver gradients by Read id) for the Estimate's method."""
    if node.method != "eap_ig":
        return interp.values[bid]
    key = ("edge_ig", bid, node.steps)
    memo = interp.memo  # type: ignore[attr-defined]
    if key not in memo:
        memo[key] = _ig_gradients(interp, ir, bid, node)
    return memo[key]


def _valid(interp: "RunContext", rid: str, node: Estimate, n: int) -> torch.Tensor:
    """The examples [n] that have every position of the receiver Read `rid`."""
    rv: ReadValue = interp.values[rid]
    batch = rv.batch if rv.batch.n == n else rv.batch.repeat(n // rv.batch.n)
    return position_valid(batch, node.pos).cpu()
