"""share_prefix: a forward whose earliest own write is at layer l starts from its twin's
cached residual stream at layer l instead of recomputing layers < l.

The twin of a forward F is a forward T of the same run (and noise samples) whose writes are a
proper prefix of F's, all of them finished before block l starts, where l is the first layer
that F's remaining ("own") writes touch. Up to block l the two runs compute the same values,
so F can start from T's `resid_pre(l)`: the pass adds that Read on T and sets F.start to it
(F.start_layer = l). At run time the skipped blocks are stubbed with modules that hand the
cached state on, and the model's own forward runs (masks and rotary embeddings are built as
usual). Reads of F inside the skipped layers are moved to T, where they have the same value.

When no forward of the run has the shared writes (a sweep over a run nothing else measures),
one is added if at least two forwards would start from it. A twin is always computed in
full. A forward whose own writes start at the embedding (layer 0) keeps a twin without
writes when its positions could be narrowed: narrow_positions reuses the twin's keys/values.

Forwards whose metric is differentiated run as they are. One whose metric generates text
(generate, text, seqlogprob) starts at layer 0 (decoding needs every layer's keys and values
at every position), but takes a twin when its own writes could be narrowed: narrow_positions
then feeds it only the positions from its first written one, the earlier ones' keys and
values coming from the twin. It is never a twin itself (another forward of the same writes
is added to be one).
"""

from __future__ import annotations

import dataclasses

from patchc.compiler.edges import start_site
from patchc.compiler.ir import ALL_POSITIONS, Forward, IRGraph, Node, Read, Write
from patchc.compiler.ir_sweep import layer_of

from .drop_baselines import lone_baselines
from ._graph import (
    Finder,
    before_layer,
    consumers_of,
    differentiated,
    generates,
    nodes_of,
    rebuild,
    remap,
    remap_tables,
    site_layer,
)


def _split(nodes: dict[str, Node], writes: tuple[str, ...], k: int) -> int | None:
    """The start layer if a forward's first k writes are shared with its twin: the first layer
    of the remaining writes, provided every shared write is finished before it. None when
    the split gains nothing or is not exact."""
    own = [nodes[w] for w in writes[k:]]
    known = [x for w in own if (x := site_layer(w.site)) is not None]  # type: ignore[union-attr]
    if not own or not known:
        return None
    start = min(known)
    if any(not before_layer(nodes[w].site, start) for w in writes[:k]):  # type: ignore[union-attr]
        return None
    if start == 0 and (k or not _narrowable(nodes, writes[k:])):
        return None  # nothing to skip and nothing narrow_positions could use
    return start


def _narrowable(nodes: dict[str, Node], writes: tuple[str, ...]) -> bool:
    """Could positions be narrowed for these own writes (none at every position)?"""
    for wid in writes:
        w = nodes[wid]
        assert isinstance(w, Write)
        if w.pos.kind == "all" or w.site.kind == "attn.pattern":
            return False
    return True


def _sweep_split(nodes: dict[str, Node], f: Forward) -> int | None:
    """The start layer of a sweep Forward (compiler/ir_sweep.py) whose twin has all its
    writes (the run's): its members' first layer, when every shared write is finished
    before it; None when that gains nothing."""
    start = layer_of(f.sweep)
    if start is None or any(not before_layer(nodes[w].site, start)  # type: ignore[union-attr]
                            for w in f.writes):
        return None
    if start == 0 and (f.writes or any(p.kind == "all" for p in f.sweep.space.positions)):
        return None
    return start


def _narrow_twin(nodes: dict[str, Node], by_writes: dict[tuple, str], fid: str, f: Forward,
                 chosen: dict[str, tuple[str, int]], wanted: dict[tuple, list[str]]) -> None:
    """A generating forward's twin, for narrowing only (start layer 0): the forward with the
    longest prefix of its writes whose remaining writes each name positions."""
    for k in range(len(f.writes) - 1, -1, -1):
        if not _narrowable(nodes, f.writes[k:]):
            return
        tid = by_writes.get((f.run, f.samples, f.writes[:k]))
        if tid is not None and tid != fid:
            chosen[fid] = (tid, 0)
            return
    wanted.setdefault((f.run, f.samples, ()), []).append(fid)


def share_prefix(ir: IRGraph) -> IRGraph:
    nodes = nodes_of(ir)
    cons = consumers_of(ir)
    forwards = {nid: n for nid, n in nodes.items() if isinstance(n, Forward)}
    speaks = {nid for nid in forwards if generates(nodes, cons, nid)}
    graded = {nid for nid in forwards if differentiated(nodes, cons, nid)}
    fixed = speaks | graded
    # A forward only unpatched baselines measure is no existing twin: one is added where it
    # would be without them (and is found to be that forward); else drop_baselines drops it.
    lone = lone_baselines(nodes, ir.tables, cons)
    by_writes: dict[tuple, str] = {}
    for nid in sorted(forwards, key=lambda x: int(x[1:])):
        f = forwards[nid]
        if nid not in fixed and f.sweep is None and nid not in lone:  # a sweep: never a twin
            by_writes.setdefault((f.run, f.samples, f.writes), nid)

    # 1. The best existing twin of each forward: the longest shared prefix of its writes.
    # 2. Else the longest prefix that would do, made once two forwards would start from it.
    chosen: dict[str, tuple[str, int]] = {}
    wanted: dict[tuple, list[str]] = {}
    for fid, f in forwards.items():
        if fid in speaks and f.writes and fid not in graded:
            _narrow_twin(nodes, by_writes, fid, f, chosen, wanted)
            continue
        if fid in fixed:
            continue
        if f.sweep is not None:  # its own writes are its members': the twin has the rest
            start = _sweep_split(nodes, f)
            if start is None:
                continue
            tid = by_writes.get((f.run, f.samples, f.writes))
            if tid is not None:
                chosen[fid] = (tid, start)
            else:
                wanted.setdefault((f.run, f.samples, f.writes), []).append(fid)
            continue
        if not f.writes:
            continue
        first_valid = None
        for k in range(len(f.writes) - 1, -1, -1):
            start = _split(nodes, f.writes, k)
            if start is None:
                continue
            tid = by_writes.get((f.run, f.samples, f.writes[:k]))
            if tid is not None and tid != fid:
                chosen[fid] = (tid, start)
                break
            if first_valid is None:
                first_valid = k
        if fid not in chosen and first_valid is not None:
            wanted.setdefault((f.run, f.samples, f.writes[:first_valid]), []).append(fid)
    # A forward that generates runs apart (token by token): it keeps no key/value cache for
    # narrowed forwards, so it is never a twin; an equal twin is added beside it.
    finder = Finder(nodes, exclude=frozenset(speaks))
    for (run, samples, prefix), fids in wanted.items():
        if len(fids) < 2 and forwards[fids[0]].sweep is None:
            continue  # (a sweep alone is many forwards: its twin pays)
        tid = finder.find_or_add(Forward(run, prefix, None, samples))
        for fid in fids:
            f = forwards[fid]
            start = 0 if fid in speaks else _sweep_split(nodes, f) if f.sweep is not None \
                else _split(nodes, f.writes, len(prefix))
            assert start is not None
            chosen[fid] = (tid, start)

    # 3. A twin is computed in full: it does not start from another forward itself.
    twins = {t for t, _ in chosen.values()}
    chosen = {f: v for f, v in chosen.items() if f not in twins}

    moved: dict[str, str] = {}
    for fid, (tid, start) in chosen.items():
        f = forwards[fid]
        start_read = None
        if start >= 1:
            own = [nodes[w].site for w in f.writes[len(nodes[tid].writes):]]  # type: ignore[union-attr]
            if f.sweep is not None:  # its members' writes (an edge sweep's: its receivers)
                own += list(f.sweep.space.sites[:1])
            start_read = finder.find_or_add(Read(tid, start_site(start, own), ALL_POSITIONS))
            # Reads inside the skipped layers have the twin's values: read them there.
            for rid in cons.get(fid, []):
                r = nodes[rid]
                if isinstance(r, Read) and r.forward == fid and before_layer(r.site, start):
                    moved[rid] = finder.find_or_add(dataclasses.replace(r, forward=tid))
        nodes[fid] = dataclasses.replace(f, twin=tid, start_layer=start if start_read else 0,
                                         start=start_read)
    for rid in moved:
        del nodes[rid]
    nodes = {nid: remap(n, moved) for nid, n in nodes.items()}
    return rebuild(nodes, remap_tables(ir.tables, moved), like=ir)
