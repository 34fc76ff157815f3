"""Edge attribution: per-edge Estimate nodes of method `eap` and `eap_ig` (the lowering's
`compact=False` form, compiler/lower_edges.py; the compact form is runtime/edge_sets.py,
which shares `_diff` and `_ig_gradients` from here).

An edge's estimate per example is m_B + (s_A - s_B) . g_r, summed over the positions and
features it covers, with s a sender's output and g_r the gradient of the metric at the
receiver's input on B (a zero added at `q.in`/`k.in`/`v.in`/`mlp.in`/`logits.in`, so every
receiver's gradient is its own and the paths through the others stay open). The Backward gives
every receiver's gradient from one forward+backward (`grad` rules for eap, `lrp` for relp).

eap_ig (Hanna et al. 2024, EAP-IG) averages g_r over `steps` forward+backward passes of B whose
input embedding is moved to e_A + (j / steps)(e_B - e_A), j = 0 .. steps-1, the points EAP-IG
takes from the corrupted input towards the clean one (its clean run is our B, the run patched).
The steps run batched, as ig's do.

Every estimate of one Backward is computed at once, the first time one of them is asked for:
sender differences [S, n, F] times receiver gradients [R, n, F] in one batched product per
position set, kept in `interp.memo`; each Estimate then looks its (sender, receiver) pairs up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from patchc.compiler.ir import Estimate, IRGraph, Site

from .estimates import IG_ROWS, gradients
from .inputs import position_index, position_valid
from .writes import ReadValue

if TYPE_CHECKING:
    from .context import RunContext

EDGE_METHODS = frozenset({"eap", "eap_ig"})


def _triples(node: Estimate) -> list[tuple[str, str, str]]:
    n = (len(node.inputs) - 1 - (2 if node.method == "eap_ig" else 0)) // 3
    flat = node.inputs[:3 * n]
    return [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]  # type: ignore[misc]


def run_edge_estimate(interp: "RunContext", ir: IRGraph, node: Estimate) -> torch.Tensor:
    """Per-example estimate of the edge swap [n]."""
    bid = node.inputs[-1]
    key = ("edges", bid, node.method, node.steps)
    memo = interp.memo  # type: ignore[attr-defined]
    if key not in memo:
        memo[key] = _all_scores(interp, ir, bid, node)
    m_b, scores, valid = memo[key]
    total = torch.zeros_like(m_b)
    ok = torch.ones_like(m_b, dtype=torch.bool)
    for t in _triples(node):
        if t not in scores:  # its reads were not all here when the others were computed
            _, more, more_valid = _scores(interp, ir, m_b, memo[key + ("grads",)], [t])
            scores.update(more)
            valid.update(more_valid)
        total = total + scores[t]
        ok &= valid[t[2]]
    return torch.where(ok, m_b + total, torch.nan)


def _all_scores(interp: "RunContext", ir: IRGraph, bid: str, first: Estimate):
    """(m_B [n], {(a read, b read, gradient read): score [n]}, {gradient read: valid rows})
    for every edge Estimate of the Backward `bid` with the method and steps of `first`."""
    triples: dict[tuple[str, str, str], None] = {}
    for _, est in ir.of_type(Estimate):
        if est.inputs[-1] == bid and est.method == first.method and est.steps == first.steps:
            triples.update(dict.fromkeys(_triples(est)))
    if first.method == "eap_ig":
        m_b, grads = _ig_gradients(interp, ir, bid, first)
    else:
        m_b, grads = interp.values[bid]
    interp.memo[("edges", bid, first.method, first.steps, "grads")] = grads  # type: ignore[attr-defined]
    # A worker holds the reads of its own share of the estimates only.
    have = [t for t in triples if all(r in interp.values for r in t)]
    return _scores(interp, ir, m_b.cpu(), grads, have)


def _scores(interp: "RunContext", ir: IRGraph, m_b: torch.Tensor, grads: dict,
            triples: list[tuple[str, str, str]]):
    """(m_B, scores, valid rows) of `triples`: one batched product per position set."""
    by_pos: dict = {}
    for t in triples:
        by_pos.setdefault(ir.node(t[2]).pos, []).append(t)  # type: ignore[union-attr]
    scores: dict = {}
    valid: dict = {}
    for pos, ts in by_pos.items():
        pairs = list(dict.fromkeys((a, b) for a, b, _ in ts))
        recv = list(dict.fromkeys(g for _, _, g in ts))
        d = torch.stack([_diff(interp, a, b, grads[recv[0]]) for a, b in pairs])  # [S, n, F]
        g = torch.stack([grads[r].float().flatten(1) for r in recv])  # [R, n, F]
        prod = torch.bmm(d.transpose(0, 1), g.to(d.device).permute(1, 2, 0))  # [n, S, R]
        prod = prod.cpu()
        si = {p: i for i, p in enumerate(pairs)}
        ri = {r: i for i, r in enumerate(recv)}
        for a, b, r in ts:
            scores[(a, b, r)] = prod[:, si[(a, b)], ri[r]]
        for r in recv:
            rv: ReadValue = interp.values[r]
            batch = rv.batch if rv.batch.n == m_b.shape[0] else rv.batch.repeat(
                m_b.shape[0] // rv.batch.n)
            valid[r] = position_valid(batch, pos)
    return m_b, scores, valid


def _diff(interp: "RunContext", ra: str, rb: str, like: torch.Tensor) -> torch.Tensor:
    a: ReadValue = interp.values[ra]
    b: ReadValue = interp.values[rb]
    av, bv = a.value.float(), b.value.float()
    if av.shape[0] != bv.shape[0]:  # A without noise samples, B with: align rows
        av = av.repeat_interleave(bv.shape[0] // av.shape[0], 0)
    diff = av.to(like.device) - bv.to(like.device)
    if diff.shape[0] != like.shape[0]:
        diff = diff.repeat_interleave(like.shape[0] // diff.shape[0], 0)
    return diff.flatten(1)


def _ig_gradients(interp: "RunContext", ir: IRGraph, bid: str, node: Estimate):
    """m_B and the receiver gradients averaged over EAP-IG's interpolated inputs."""
    from patchc.compiler.ir import Backward, Forward

    backward: Backward = ir.node(bid)  # type: ignore[assignment]
    m_b, _ = interp.values[bid]
    fwd: Forward = ir.node(ir.node(backward.metric).forward)  # type: ignore[union-attr]
    emb_a, emb_b = node.inputs[-3], node.inputs[-2]
    a, b = interp.values[emb_a].value, interp.values[emb_b].value
    if a.shape[0] != b.shape[0]:
        a = a.repeat_interleave(b.shape[0] // a.shape[0], 0)
    wrt = list(backward.wrt)
    steps = node.steps
    n = interp.run_inputs(fwd.run).batch.n * fwd.samples
    rows = interp.checked.options.batch_size or IG_ROWS
    chunk = max(1, min(steps, rows // max(n, 1)))
    columns = interp.columns_for(fwd.run)
    total: dict[str, torch.Tensor] = {}
    for first in range(0, steps, chunk):
        alphas = [j / steps for j in range(first, min(steps, first + chunk))]
        k = len(alphas)
        batch = interp.run_inputs(fwd.run).batch.repeat(fwd.samples * k)
        idx = position_index(batch, interp.values[emb_b].pos, columns)

        def point(act: torch.Tensor, alphas=alphas, k=k, idx=idx) -> torch.Tensor:
            al = torch.tensor(alphas, device=act.device, dtype=torch.float32).view(1, k, 1, 1)
            av, bv = a.to(act.device).float(), b.to(act.device).float()
            pts = (av[:, None] + al * (bv - av)[:, None]).flatten(0, 1).to(act.dtype)
            out = act.detach().clone()
            return out.scatter(1, idx[..., None].expand(-1, -1, out.shape[-1]).to(
                out.device), pts)

        _, grads = gradients(interp, ir, backward.metric, wrt, replace={Site("embed"): point},
                             repeat=k)
        for rid, g in grads.items():
            g = g.view(-1, k, *g.shape[1:]).sum(1) / steps
            total[rid] = total.get(rid, 0) + g
    return m_b, total
