"""The facts about sites and metrics the optimization passes decide on: where a site's value
is computed (which blocks a forward that writes it can skip), and what a forward's metrics
need of its logits (generated text, every position, gradients). _graph.py re-exports them.
"""

from __future__ import annotations

from typing import Mapping

from patchc.compiler import ast as A
from patchc.compiler.ir import Backward, Metric, Node, Site

# Site kinds computed after every decoder block: they belong to no layer a forward can skip.
POST_SITES = frozenset({"ln_final.scale", "logits"})


def site_layer(site: Site) -> int | None:
    """The first decoder block whose computation a write at `site` changes: `embed` is 0;
    the sites after the last block (final norm scale, logits) are None."""
    if site.kind in POST_SITES:
        return None
    if site.kind == "embed":
        return 0
    return site.layer


def before_layer(site: Site, layer: int) -> bool:
    """Is everything at `site` computed before block `layer` starts (its input included)?"""
    at = site_layer(site)
    if at is None:
        return False
    if site.kind == "embed":
        return layer >= 1
    return at < layer


def needs(expr: A.MExpr, kind: type | tuple[type, ...]) -> bool:
    """Does the expression hold a node of `kind` (a class or a tuple of them)?"""
    return any(isinstance(e, kind) for e in A.metric_nodes(expr))


def logits_only(expr: A.MExpr) -> bool:
    """Does the metric read nothing but `logit(TOK)` values (no softmax over the vocabulary)?"""
    for e in A.metric_nodes(expr):
        if isinstance(e, A.MCall) and e.fn != "logit":
            return False
        if isinstance(e, (A.MKL, A.MLoss, A.MRef) + A.GENERATING):
            return False
    return True


def forward_metrics(nodes: Mapping[str, Node], cons: Mapping[str, list[str]], fid: str
                    ) -> list[Metric]:
    """Metrics evaluated on forward `fid`'s logits (not those that only use it as a kl
    reference, nor lens metrics, which decode a Read of it)."""
    return [m for c in cons.get(fid, []) if isinstance(m := nodes[c], Metric)
            and m.forward == fid and m.lens is None]


def generates(nodes: Mapping[str, Node], cons: Mapping[str, list[str]], fid: str) -> bool:
    """Does a metric on `fid` generate text (the forward then runs as the naive one does)?"""
    return any(needs(m.expr, A.GENERATING) for m in forward_metrics(nodes, cons, fid))


def differentiated(nodes: Mapping[str, Node], cons: Mapping[str, list[str]], fid: str) -> bool:
    """Is a metric of `fid` differentiated by a Backward (its reads are then gradient sites)?"""
    for m in cons.get(fid, []):
        if isinstance(nodes[m], Metric) and any(isinstance(nodes[b], Backward)
                                                for b in cons.get(m, [])):
            return True
    return False
