"""trim_logits: unembed only the positions, and where possible the token ids, that metrics
read.

The unembedding is the largest matrix of a small model (GPT-2: 50257 x d against 12 d^2 per
layer): a forward measured at `last` needs one position of it, not all. Each forward gets
`logit_positions`, the positions of the metrics on it and of the kl metrics that compare
with it (() when nothing measures it: a run that is only read skips the unembedding), or
None (every position) when a metric needs `loss`, a metric generates text, or something
reads or writes the `logits` site. A forward that the forwards of a sparse latent sweep
name as `same_as` also keeps the positions of their metrics, at every token id (a skipped
forward reads them there: runtime/sparse.py). When every metric on the forward is arithmetic over
`logit(TOK)` (no softmax over the vocabulary, no kl against it), `logit_tokens` is set and
only the rows of the unembedding for those token ids are computed.
"""

from __future__ import annotations

import dataclasses

from patchc.compiler import ast as A
from patchc.compiler.ir import Forward, IRGraph, Metric, Positions, Read, Write

from ._graph import consumers_of, logits_only, needs, nodes_of, rebuild


def trim_logits(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    cons = consumers_of(ir)
    for fid, f in list(nodes.items()):
        if not isinstance(f, Forward):
            continue
        users = [nodes[c] for c in cons.get(fid, [])]
        # Lens metrics decode a Read, not this forward's logits (unless kl compares with it).
        metrics = [u for u in users if isinstance(u, Metric)
                   and ((u.forward == fid and u.lens is None) or u.reference == fid)]
        own = [m for m in metrics if m.forward == fid]
        # Forwards of a sparse latent sweep that may stand in this one's place (same_as) read
        # their metrics from its logits when skipped: keep those positions, every token id.
        borrowed = [m for g in cons.get(fid, []) if getattr(nodes[g], "same_as", None) == fid
                    for m in (nodes[c] for c in cons.get(g, []))
                    if isinstance(m, Metric) and m.forward == g and m.lens is None]
        metrics += borrowed
        full = any(needs(m.expr, (A.MLoss,) + A.GENERATING) for m in own)
        full |= any(isinstance(u, Read) and u.site.kind == "logits" for u in users)
        full |= any(nodes[w].site.kind == "logits" for w in f.writes  # type: ignore[union-attr]
                    if isinstance(nodes[w], Write))
        positions: tuple[Positions, ...] | None = None
        tokens = False
        if not full:
            positions = tuple(dict.fromkeys(m.pos for m in metrics))
            tokens = bool(own) and len(own) == len(metrics) and all(logits_only(m.expr)
                                                                    for m in own)  # (no borrowed)
        if (f.logit_positions, f.logit_tokens) != (positions, tokens):  # (else the same node)
            nodes[fid] = dataclasses.replace(f, logit_positions=positions, logit_tokens=tokens)
    return rebuild(nodes, list(ir.tables), like=ir)
