"""Direct logit attribution (`dla SITES in B`): what each site adds to the metric through
the direct path from the residual stream to the logits, with B's cached final-norm scale.

For a metric linear in the logits at one position, m = sum_k c_k * logit(t_k) + const, a
site's value x (a d_model vector that the block adds to the residual stream: a head's `out`,
`attn.out`, `mlp.out`, `embed`) at the metric's position contributes

    dla(x) = sum_k c_k * (centered(x) * s * w) @ u_{t_k}

with s the final normalizer's 1/sigma read on B at that position (centered() is the mean
removal of LayerNorm; RMSNorm does not center), w its weight and u_t the unembedding row of
token t. The norm's bias, the unembedding's bias and the metric's constants are not
attributed. When B's normalizers use a frozen scale (`freeze ln from A`), the final norm is
linear and dla(x) is exactly m_B minus m_B with x subtracted from the final residual.

Metrics that are not linear in the logits (prob, logprob, rank, kl, loss, generate, and
products or quotients of logit terms) have no such split: E465. Gemma-2's soft-capped final
logits neither: E466.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from patchc.compiler import ast as A
from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.ir import Estimate, Forward, IRGraph, Metric, Read

from patchc.compiler.linear import NonLinear, Terms, nonlinear_message
from patchc.compiler.linear import linear_terms as _linear_terms

from .dictionaries import host_space
from .inputs import position_index, position_valid
from .writes import ReadValue, gather

if TYPE_CHECKING:
    from .context import RunContext

def linear_terms(expr: A.MExpr) -> tuple[Terms, float]:
    """compiler/linear.py's terms; E465 if the metric is not linear (check reports it
    first; this guards a graph built without check)."""
    try:
        return _linear_terms(expr)
    except NonLinear as e:
        raise RuntimeInterventionError("E465", nonlinear_message(str(e))) from None


def _at_metric(value: ReadValue, read: Read, mpos: torch.Tensor, columns) -> torch.Tensor:
    """The read's value at the metric's position per row, [n, d] (zero where the read does
    not cover that position: a site elsewhere has no direct path to these logits)."""
    idx = position_index(value.batch, read.pos, columns).to(value.value.device)
    hit = (idx == mpos.to(idx.device)).to(torch.float32)  # [n, k]
    return (value.value.float() * hit[..., None]).sum(1)


def run_dla(interp: "RunContext", ir: IRGraph, node: Estimate) -> torch.Tensor:
    """Per-example direct logit attribution [n] of the Estimate's sites to its metric."""
    *site_ids, scale_id, metric_id = node.inputs
    metric: Metric = ir.node(metric_id)  # type: ignore[assignment]
    fwd: Forward = ir.node(metric.forward)  # type: ignore[assignment]
    terms, _ = linear_terms(metric.expr)
    ad = interp.adapter
    if ad.final_softcap() is not None:
        raise RuntimeInterventionError(
            "E466", f"dla: {ad.family}'s final logits are soft-capped (tanh), so they do not "
            "split into direct contributions")
    scale: ReadValue = interp.values[scale_id]
    batch, columns = scale.batch, interp.columns_for(fwd.run)
    mpos = position_index(batch, metric.pos, columns).to(scale.value.device)  # [n, 1]
    s = gather(scale.value.float(), mpos)[:, 0]  # [n, 1]
    x = torch.zeros(batch.n, ad.d_model, device=scale.value.device)
    valid = torch.ones(batch.n, dtype=torch.bool)
    for rid in site_ids:
        read: Read = ir.node(rid)  # type: ignore[assignment]
        value: ReadValue = interp.values[rid]
        contrib = _at_metric(value, read, mpos, columns).to(x.device)
        # A latent's contribution is activation x decoder row, in its host's space.
        contrib, feats = host_space(ad.dictionaries, read.site, contrib)
        lo, hi = feats or (0, ad.d_model)
        x[:, lo:hi] += contrib
        valid &= position_valid(value.batch, read.pos)
    if ad.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    x = x * s
    w = ad.norm_weight(ad.ln_final())
    if w is not None:
        x = x * w.detach().float().to(x.device)
    token_ids = interp.token_ids(fwd.run, batch.n)
    total = torch.zeros(batch.n, device=x.device)
    with torch.no_grad():
        for coef, tok in terms:
            rows = ad.unembed_rows(token_ids(tok)).float().to(x.device)  # [n, d]
            total += coef * (x * rows).sum(-1)
    out = torch.where(valid, total.cpu(), torch.nan)
    return out.view(-1, fwd.samples).mean(1) if fwd.samples > 1 else out
