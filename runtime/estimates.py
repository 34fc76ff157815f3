"""Gradient estimates of a swap: Backward nodes (gradients of a metric at sites of run B)
and Estimate nodes (attribution patching, integrated gradients).

An Estimate's value per example is m_B + sum over its sites, positions and features of
(a_A - a_B) * g: an estimate of what `swap` would measure, so it normalizes like the swap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.ir import Backward, Estimate, Forward, IRGraph, Metric, Read, Site

from .inputs import position_index
from .writes import ReadValue, _features, gather

if TYPE_CHECKING:
    from .naive import Interpreter


def _metric_values(interp: "Interpreter", ir: IRGraph, metric: Metric, logits: torch.Tensor,
                   batch) -> torch.Tensor:
    """Differentiable per-example metric values from full logits [N, T, V]."""
    from . import metrics as M

    fwd: Forward = ir.node(metric.forward)  # type: ignore[assignment]
    columns = interp.columns_for(fwd.run)
    idx = position_index(batch, metric.pos, columns).to(logits.device)
    at = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))[:, 0].float()
    ctx = M.MetricContext(at, logits.float(), batch, interp.token_ids(fwd.run, batch.n))
    return M.evaluate(metric.expr, ctx)


def gradients(interp: "Interpreter", ir: IRGraph, metric_id: str, reads: list[str],
              rules: str = "grad", replace: dict[Site, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example metric values [n] and d(metric)/d(site) at each Read's positions
    ([n, k, d] per read id), from one forward+backward of the metric's Forward.

    `replace` puts a full activation [n, T, d] at a site first (ig's interpolation points).
    """
    if rules != "grad":
        raise RuntimeInterventionError(
            "E460", f"backward rules {rules!r} (RelP) are not available in this runtime yet")
    metric: Metric = ir.node(metric_id)  # type: ignore[assignment]
    fwd: Forward = ir.node(metric.forward)  # type: ignore[assignment]
    batch = interp.run_inputs(fwd.run).batch.repeat(fwd.samples)
    columns = interp.columns_for(fwd.run)
    hooks = interp.hooks_for(ir, metric.forward, fwd, batch, reads=False)
    leaves: dict[Site, torch.Tensor] = {}
    sites = {}
    for rid in reads:
        read: Read = ir.node(rid)  # type: ignore[assignment]
        sites.setdefault(Site(read.site.kind, read.site.layer, read.site.head), []).append(rid)

    def make_leaf(site: Site):
        def fn(act: torch.Tensor) -> torch.Tensor:
            if replace and site in replace:
                act = replace[site].to(act.device, act.dtype)
            leaf = act.detach().requires_grad_(True)
            leaves[site] = leaf
            return leaf
        return fn

    grad_hooks = [(s.kind, s.layer, s.head, make_leaf(s)) for s in sites]
    with torch.enable_grad(), interp.adapter.hooks(hooks + grad_hooks):
        logits = interp.model(**batch.to(interp.device).model_kwargs()).logits
        values = _metric_values(interp, ir, metric, logits, batch)
        values.sum().backward()
    out: dict[str, torch.Tensor] = {}
    for site, rids in sites.items():
        leaf = leaves.get(site)
        if leaf is None or leaf.grad is None:
            raise RuntimeInterventionError("E461", f"no gradient reached {site}")
        for rid in rids:
            read = ir.node(rid)
            g = leaf.grad[..., _features(read.site, leaf.grad)]
            out[rid] = gather(g, position_index(batch, read.pos, columns)).detach()
    return values.detach(), out


def run_backward(interp: "Interpreter", ir: IRGraph, nid: str, node: Backward
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return gradients(interp, ir, node.metric, list(node.wrt), node.rules)


def run_estimate(interp: "Interpreter", ir: IRGraph, node: Estimate) -> torch.Tensor:
    """Per-example estimate of the swapped metric [n]."""
    if node.method == "dla":
        raise RuntimeInterventionError(
            "E462", "dla is not available in this runtime yet")
    *pairs_flat, bid = node.inputs
    pairs = list(zip(pairs_flat[0::2], pairs_flat[1::2]))
    backward: Backward = ir.node(bid)  # type: ignore[assignment]
    if node.method in ("atp", "relp"):
        m_b, grads = interp.values[bid]
    elif node.method == "ig":
        m_b, grads = _integrated_gradients(interp, ir, backward, pairs, node.steps)
    else:
        raise RuntimeInterventionError("E463", f"unknown estimator {node.method!r}")
    delta = torch.zeros_like(m_b)
    for ra, rb in pairs:
        a: ReadValue = interp.values[ra]
        b: ReadValue = interp.values[rb]
        diff = (a.value.float() - b.value.float()).to(grads[rb].device)
        if diff.shape[0] != grads[rb].shape[0]:
            diff = diff.repeat_interleave(grads[rb].shape[0] // diff.shape[0], 0)
        delta = delta + (diff * grads[rb].float()).flatten(1).sum(1).cpu()
    return (m_b.cpu() + delta)


def _integrated_gradients(interp: "Interpreter", ir: IRGraph, backward: Backward,
                          pairs: list[tuple[str, str]], steps: int
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gradients averaged over `steps` midpoints on the straight line a_B -> a_A at the
    estimated sites (all positions the reads cover), and m_B."""
    m_b, _ = gradients(interp, ir, backward.metric, [rb for _, rb in pairs])
    total: dict[str, torch.Tensor] = {}
    for k in range(steps):
        alpha = (k + 0.5) / steps
        replace = {}
        for ra, rb in pairs:
            read: Read = ir.node(rb)  # type: ignore[assignment]
            if read.pos.kind != "all" or read.site.features is not None:
                raise RuntimeInterventionError(
                    "E464", "ig interpolates whole sites; use it without @ or [features]")
            a: ReadValue = interp.values[ra]
            b: ReadValue = interp.values[rb]
            site = Site(read.site.kind, read.site.layer, read.site.head)
            replace[site] = b.value + alpha * (a.value - b.value)
        _, grads = gradients(interp, ir, backward.metric, [rb for _, rb in pairs],
                             replace=replace)
        for rid, g in grads.items():
            total[rid] = total.get(rid, 0) + g / steps
    return m_b, total
