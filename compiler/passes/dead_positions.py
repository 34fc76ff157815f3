"""dead_positions: at the top of the model, only the positions a metric reads are live.

A forward whose logits are read at a few positions (`logit_positions`, from trim_logits)
needs every position in every block but the last: block l's output at position t feeds
block l+1's keys and values at t, which the measured queries attend to. In the last block
the keys and values still need every position, but what comes after the attention (the
MLP and the residual stream it leaves) is read at the measured positions only, unless the
forward itself reads or writes something there. The MLP is most of a block's arithmetic
(8 d^2 of 12 d^2 per token in GPT-2), so at `@ last` a metric's forward saves most of
its last block.

The pass sets `Forward.live_from`: one past the highest layer at which the forward reads
or writes anything on the MLP side of a block (the MLP's sites, `ln2.scale`,
`resid_post`, `expert.*`, `router`, `shared.out`) or after the blocks (`ln_final.scale`,
`logits`): from that layer on, every position outside `logit_positions` is dead after
the attention. Sites before a block's MLP (its input, the attention's sites, `resid_mid`)
count toward the layer below: the runtime still computes them at every position. The
runtime (runtime/execute.py) computes the last block's MLP only at `logit_positions` when
`live_from` is at most that block. A forward whose logits are all needed
(`logit_positions` None: `loss`, generation, a `logits` read) is left alone.

Results stay equal: the skipped MLP rows are those of positions whose later values nothing
reads; the MLP acts on each position separately, so the kept rows are unchanged.
"""

from __future__ import annotations

import dataclasses
import math

from patchc.compiler.ir import Forward, IRGraph, Read, Site, Write

from ._graph import POST_SITES, consumers, nodes_of, rebuild

# Sites a block computes before its MLP: the runtime keeps them at every position.
# A head's q/k/v receiver input (edges) is the attention's input: an edge into the last
# block's heads leaves that block's MLP to the measured positions. (`mlp.in` is the MLP's own
# input: it stays at every position.)
BEFORE_MLP = frozenset({
    "resid_pre", "resid_mid", "attn.out", "ln1.scale", "attn.z", "attn.q", "attn.k", "attn.v",
    "attn.pattern", "z", "q", "k", "v", "pattern", "out", "q.in", "k.in", "v.in"})


def touched_layer(site: Site) -> float:
    """The highest layer whose MLP side a read or write at `site` needs at its positions
    (-1: none; infinity: after the last block)."""
    if site.kind in POST_SITES or site.kind == "logits.in":  # (the final residual stream)
        return math.inf
    if site.kind == "embed" or site.layer is None:
        return -1
    if site.kind in BEFORE_MLP:
        return site.layer - 1
    return site.layer


def dead_positions(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    cons = consumers(nodes)
    for fid, f in list(nodes.items()):
        if not isinstance(f, Forward) or f.logit_positions is None:
            continue
        sites = [w.site for w in (nodes[i] for i in f.writes) if isinstance(w, Write)]
        if f.sweep is not None:  # a compact sweep's members write its sites too
            sites += list(dict.fromkeys(Site(s.kind, s.layer) for s in f.sweep.space.sites))
        sites += [r.site for r in (nodes[c] for c in cons.get(fid, []))
                  if isinstance(r, Read) and r.forward == fid]
        top = max((touched_layer(s) for s in sites), default=-1)
        if top == math.inf:
            continue
        nodes[fid] = dataclasses.replace(f, live_from=int(top) + 1)
    return rebuild(nodes, list(ir.tables))
