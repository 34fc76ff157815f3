"""narrow_positions: in a causal model, positions before the earliest position a forward
writes are the same as in its twin, in every layer: compute only the later ones.

The pass marks a forward with a twin `narrow` when that can pay off: its own writes (those
after the twin's) each name positions (never `*`), no metric on it needs every position
(`loss`), and none of its Reads covers every position. A forward whose metrics generate
text is narrowed too: its prompt pass starts from the twin's keys and values, and decoding
continues from the joined cache. The runtime then finds
the boundary p0 for the actual prompts: the smallest padded index that an own write, a Read
or a metric of the forward (or a kl metric comparing with it) touches, the minimum over the
rows (left padding gives all rows one width, so a padded index is a common boundary). It
runs the twin once with a key/value cache, copies the cache's first p0 positions for the
batched variants and feeds only positions p0.. to the model; an `@ last` sweep then costs
about one token per patched layer. A boundary of 0 is an ordinary run.
"""

from __future__ import annotations

import dataclasses

from patchc.compiler import ast as A
from patchc.compiler.ir import Forward, IRGraph, Metric, Read, Write

from ._graph import consumers_of, needs, nodes_of, rebuild


def narrow_positions(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    cons = consumers_of(ir)
    for fid, f in list(nodes.items()):
        if not isinstance(f, Forward) or f.twin is None:
            continue
        twin = nodes[f.twin]
        assert isinstance(twin, Forward)
        own = [nodes[w] for w in f.writes[len(twin.writes):]]
        if f.sweep is not None:  # a sweep's own writes are its members', one position each
            if any(p.kind == "all" for p in f.sweep.space.positions):
                continue
        elif not own or any(not isinstance(w, Write) or w.pos.kind == "all"
                            or w.site.kind == "attn.pattern" for w in own):
            continue
        users = [nodes[c] for c in cons.get(fid, [])]
        if any(isinstance(u, Read) and (u.pos.kind == "all" or u.site.kind == "attn.pattern")
               for u in users):
            continue
        if any(isinstance(u, Metric) and needs(u.expr, A.MLoss) for u in users):
            continue
        nodes[fid] = dataclasses.replace(f, narrow=True)
    return rebuild(nodes, list(ir.tables), like=ir)
