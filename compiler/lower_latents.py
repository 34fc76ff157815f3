"""Sparse latent sweeps: which experiment forwards of a `swap`/`ablate`/`scale`/`trace` (and
the exact swaps of a `compare`) on dictionary latents can be skipped at run time, and what
stands in for them.

A write on latents that are zero in the target run and zero in what it writes changes
nothing: it replaces 0 by 0 (swap, trace, mean or resample of an all-zero source), zeroes a
zero (ablate) or scales it (scale). The dictionary then adds decode(f') - decode(f) = 0 to
its site exactly, so the experiment's forward is its target run's base forward, bit for bit.
Which latents are active is only known once the base forwards have run, so the decision is
the runtime's; the IR states what it needs:

    Forward.sparse   Reads of the whole latent vector at each written position, on the
                     target's base forward and (for swap, trace, mean, resample) the
                     source's: one Read per (run, dictionary, positions), shared by the sweep
    Forward.same_as  the target's base forward, whose output the skipped forward reuses

The plan interpreter (runtime/sparse.py) skips a gated forward when every latent its own
writes touch is zero in every `sparse` Read there, and packs the remaining active
forwards of a sweep into full batches. The naive interpreter runs every forward, so the
differential tests check that skipping changes nothing.

A compact latent sweep (one Forward with a `SweepSpec` for every latent x position of a
statement, compiler/lower_sweep.py) is gated the same way, member by member: its `sparse`
Reads are of the whole latent vector at every position (`sweep_gate`), and the runtime cuts
them to each member's latents and position.
"""

from __future__ import annotations

import math

from .dictionaries import is_dict_kind, split_kind
from .ir import ALL_POSITIONS, Site
from .lowerer import Lowerer, Target

# Write modes that leave a zero latent zero when the value they write is zero too.
GATED_MODES = frozenset({"replace", "zero", "mean", "resample", "mul"})


def is_latent(site: Site) -> bool:
    return is_dict_kind(site.kind) and not split_kind(site.kind)[1]


def sparse_of(lw: Lowerer, target: str, source: str | None, targets: tuple[Target, ...],
         mode: str, scale: float = 1.0) -> tuple[tuple[str, ...], str | None]:
    """(`sparse` Reads, same_as) for an experiment writing `targets` of run `target` with `mode`
    (reading `source` for swap/trace/mean/resample), or ((), None) when it cannot be gated:
    a target that is not latents, a subspace, or a mode that moves a zero."""
    if mode not in GATED_MODES or not math.isfinite(scale) or not targets:
        return (), None
    if any(not is_latent(t.site) or t.subspace for t in targets):
        return (), None
    runs = [lw.base(target)]
    if mode != "zero" and mode != "mul":
        if source is None:
            return (), None
        runs.append(lw.base(source))
    reads = []
    for t in targets:
        whole = Site(t.site.kind, t.site.layer, t.site.head)
        reads += [lw.read(f, whole, t.pos) for f in runs]
    return tuple(dict.fromkeys(reads)), runs[0]


def sweep_gate(lw: Lowerer, target: str, source: str | None, whole: tuple[Site, ...],
               mode: str, scales: tuple[float, ...]) -> tuple[tuple[str, ...], str | None]:
    """(`sparse` Reads, same_as) of a compact sweep writing latents of the `whole` dictionary
    sites (every latent, all positions) of run `target` with `mode`, or ((), None) when it
    cannot be gated (as `sparse_of`: not latents, a mode or scale that moves a zero)."""
    if mode not in GATED_MODES or not all(math.isfinite(s) for s in scales) or not whole:
        return (), None
    if any(not is_latent(w) for w in whole):
        return (), None
    runs = [lw.base(target)]
    if mode not in ("zero", "mul"):
        if source is None:
            return (), None
        runs.append(lw.base(source))
    reads = [lw.read(f, w, ALL_POSITIONS) for w in whole for f in runs]
    return tuple(dict.fromkeys(reads)), runs[0]


def source_read(lw: Lowerer, forward: str, t: Target) -> str:
    """The Read a write at `t` takes its value from, in `forward`: for latents, the Read of
    the whole latent vector at those positions (the one a sweep's `sparse` Reads share; the
    runtime cuts it to the written latents), so a sweep over d_sae latents adds no Read per
    latent; for any other site, the site itself."""
    if is_latent(t.site) and t.site.features is not None and not t.subspace:
        return lw.read(forward, Site(t.site.kind, t.site.layer, t.site.head), t.pos)
    return lw.read(forward, t.site, t.pos)
