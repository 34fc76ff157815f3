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

Gradient-only reads. A Read that only gradient estimates consume (the `wrt` of a Backward,
an atp/relp/ig Estimate's input pair; no table, write, vector, metric or forward uses it)
does not count, when its site is one the narrowed MLP leaves whole-width for its hooks
(GRAD_SITES: `mlp.out`, `resid_post`, `ln2.scale`, `mlp.in`) and the positions where its
estimates' metrics can have a gradient are among the forward's own `logit_positions`. Such
an estimate sums (a_A - a_B) * g over positions. At a position t the metric does not read,
every site of the last block after its attention reaches only the logits at t (the
residual stream there feeds no later key or value): g(t) is exactly zero, in the full
computation as in the narrowed one (a zero gradient times finite weights stays zero, for
autograd and for RelP's rules alike; integrated gradients' midpoints at t move only the
unread logits at t). So whatever finite value the runtime hands the estimate at t (the
widened MLP output's zero, `resid_post` = `resid_mid` there; `ln2.scale` and `mlp.in` are
computed before the MLP and stay exact), its term is a zero, and the estimate is the full
computation's (m_B where the site is dead). At the metric positions the values are exact,
provided the metric's positions are live in this forward too: a source run A is read at
the same padded index as the differentiated run B (runs swapped between have equal token
lengths per example, E322; where `check` had no tokenizer the runtime keeps a source of
other lengths whole, runtime/pass_plan.unaligned_sources), so a position of kind
`last`/index/range/set names the same index in both; a per-example column is only trusted
within one run. Sites inside the MLP
(`mlp.pre`, `mlp.post`, expert sites, dictionary latents) and every other consumer keep
today's rule. Only the model's last block is ever narrowed, and only in a pass that
computes logits (these forwards do: their metric positions are live): lower layers stay
whole, so a gradient-only read below it changes nothing. Families whose MLP the runtime
does not narrow (Bloom, MPT, OPT, mixtures of experts) compute as before.
"""

from __future__ import annotations

import dataclasses
import math

from patchc.compiler.ir import Backward, Estimate, Forward, IRGraph, Metric, Node, Read, Site, Write

from ._graph import POST_SITES, consumers, nodes_of, rebuild, table_refs

# Sites a block computes before its MLP: the runtime keeps them at every position.
# A head's q/k/v receiver input (edges) is the attention's input: an edge into the last
# block's heads leaves that block's MLP to the measured positions. (`mlp.in` is the MLP's own
# input: it stays at every position.)
BEFORE_MLP = frozenset({
    "resid_pre", "resid_mid", "attn.out", "ln1.scale", "attn.z", "attn.q", "attn.k", "attn.v",
    "attn.pattern", "z", "q", "k", "v", "pattern", "out", "q.in", "k.in", "v.in"})

# MLP-side sites whose hooks see every position while the last MLP is narrowed (the MLP's
# input and its normalizer are computed before the narrowing; its output is widened before
# any hook on it): a read there that only gradient estimates use need not keep it whole.
GRAD_SITES = frozenset({"mlp.out", "resid_post", "ln2.scale", "mlp.in"})
GRAD_METHODS = frozenset({"atp", "relp", "ig"})
# Positions resolved by the padded width and the row lengths alone: the same index in
# every run of equal token lengths.
SAME_IN_EVERY_RUN = frozenset({"last", "index", "range", "set"})


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
    # (what tables name is only asked of a read at a GRAD_SITES site: most graphs have none)
    tabled = table_refs(ir.tables) if any(
        isinstance(n, Read) and n.site.kind in GRAD_SITES for n in nodes.values()) else set()
    for fid, f in list(nodes.items()):
        if not isinstance(f, Forward) or f.logit_positions is None:
            continue
        sites = [w.site for w in (nodes[i] for i in f.writes) if isinstance(w, Write)]
        if f.sweep is not None:  # a compact sweep's members write its sites too
            sites += list(dict.fromkeys(Site(s.kind, s.layer) for s in f.sweep.space.sites))
        sites += [r.site for rid, r in ((c, nodes[c]) for c in cons.get(fid, []))
                  if isinstance(r, Read) and r.forward == fid and
                  not gradient_only(nodes, cons, tabled, rid, f)]
        top = max((touched_layer(s) for s in sites), default=-1)
        if top == math.inf:
            continue
        nodes[fid] = dataclasses.replace(f, live_from=int(top) + 1)
    return rebuild(nodes, list(ir.tables))


def gradient_only(nodes: dict[str, Node], cons: dict[str, list[str]], tabled: set[str],
                  rid: str, f: Forward) -> bool:
    """Is Read `rid` (of forward `f`) used only by gradient estimates, at a GRAD_SITES site,
    each estimate's metric measured at positions `f` computes in full? (Its values at the
    other positions of the last block then meet an exactly zero gradient.)"""
    read = nodes[rid]
    assert isinstance(read, Read)
    if read.site.kind not in GRAD_SITES or read.stat is not None or rid in tabled or \
            not f.logit_positions:
        return False
    users = cons.get(rid, [])
    for c in users:
        user = nodes[c]
        if isinstance(user, Estimate):
            back = nodes[user.inputs[-1]]
            if user.method not in GRAD_METHODS or user.edges is not None or \
                    not isinstance(back, Backward):
                return False
        elif isinstance(user, Backward):
            back = user
        else:
            return False
        metric = nodes[back.metric]
        assert isinstance(metric, Metric)
        of = nodes[metric.forward]
        assert isinstance(of, Forward)
        if metric.pos not in f.logit_positions or \
                (of.run != f.run and metric.pos.kind not in SAME_IN_EVERY_RUN):
            return False
    return bool(users)
