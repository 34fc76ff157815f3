"""Turning IR Write nodes into hook functions, and Reads into captured values.

A hook function receives a site's activation for the whole batch, [N, T, d] (N = examples x
noise samples), and returns the edited activation. Positions are padded token indices
(inputs.position_index); a feature slice restricts every edit to those features.

`attn.pattern` is the one site whose positions are not axis 1: the adapter hands it over as
[N, heads, q, k]. `position_major` turns it into [N, q, heads, k] for the hook functions here,
so everything below sees positions on axis 1 and any number of feature axes after them (a
feature slice then cuts the last axis, the keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.ir import Positions, Read, Site, Write

from .inputs import Batch, position_index, position_valid, slot_mask
from .vectors import projector


@dataclass
class ReadValue:
    """A captured Read: the values at its positions, [n, k, d] (k = T for all positions, in
    padded layout), with the batch it was read from (for lengths and alignment)."""

    value: torch.Tensor
    batch: Batch
    pos: Positions
    # [n, k] bool for per-example spans of different lengths: False on a row's repeated
    # slots past its own span (inputs.slot_mask); None when every slot is the row's own.
    mask: torch.Tensor | None = None


def _features(site: Site, act: torch.Tensor) -> slice:
    if site.features is None:
        return slice(None)
    lo, hi = site.features
    if hi > act.shape[-1]:
        raise RuntimeInterventionError("E450", f"{site}: features {lo}:{hi} outside the site's "
                                       f"{act.shape[-1]}")
    return slice(lo, hi)


def features_of(site: Site, act: torch.Tensor) -> torch.Tensor:
    """`act`'s features of `site` (its last axis cut to the site's feature slice); `act`
    itself for a whole site (no indexing: a hook calls this on every forward)."""
    return act if site.features is None else act[..., _features(site, act)]


def position_major(kind: str, fn: Callable[[torch.Tensor], torch.Tensor | None]
                   ) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """A hook for position-major activations [N, T, ...] made fit for site `kind`: only
    `attn.pattern` ([N, heads, q, k]) needs its head and query axes swapped both ways."""
    if kind != "attn.pattern":
        return fn

    def swapped(act: torch.Tensor) -> torch.Tensor | None:
        out = fn(act.transpose(1, 2))
        return None if out is None else out.transpose(1, 2)

    return swapped


def position_major_for(site: Site):
    """`position_major` as a decorator for hooks on `site`."""
    return lambda fn: position_major(site.kind, fn)


def _index(idx: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """idx [N, k] expanded over act's feature axes: [N, k, *act.shape[2:]]."""
    shape = (-1, -1, *act.shape[2:])
    return idx.view(*idx.shape, *([1] * (act.dim() - 2))).expand(shape).to(act.device)


def gather(act: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """act [N, T, ...] at padded indices idx [N, k] -> [N, k, ...]."""
    if idx.shape[1] == act.shape[1] and torch.equal(
            idx, torch.arange(idx.shape[1], device=idx.device).expand_as(idx)):
        return act.clone()  # every position in order (`@ *` unpadded): a copy, many x faster
    return act.gather(1, _index(idx, act))


def scatter(act: torch.Tensor, idx: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A copy of act with [N, k, ...] `value` put at idx [N, k]."""
    out = act.clone()
    out.scatter_(1, _index(idx, act), value.to(act.dtype))
    return out


def make_reader(read: Read, batch: Batch, columns, store: Callable[[ReadValue], None]):
    """A read-only hook that stores the site's value at the Read's positions (or its std)."""
    idx = position_index(batch, read.pos, columns)
    slots = slot_mask(batch, read.pos, columns)
    every = read.pos.kind == "all"  # idx is every position in order: gather's copy

    @position_major_for(read.site)
    def fn(act: torch.Tensor) -> None:
        a = features_of(read.site, act).detach()
        if read.stat == "std":  # over the Read's positions of every row, and every feature
            if every:
                values = a[batch.attention_mask.to(a.device).bool()]
            else:
                got = gather(a, idx.to(a.device))
                own = position_valid(batch, read.pos).to(a.device)[:, None].expand(got.shape[:2])
                values = got[own if slots is None else own & slots.to(a.device)]
            store(ReadValue(values.float().std(), batch, read.pos))
        else:
            same = every and a.shape[1] == idx.shape[1]
            store(ReadValue(a.clone() if same else gather(a, idx), batch, read.pos, slots))
        return None

    return fn


def make_readers(reads: list[tuple[str, Read]], batch: Batch, columns,
                 store: Callable[[str, ReadValue], None]) -> list[tuple]:
    """(kind, layer, head, fn) read-only hooks for a forward's (id, Read) pairs. The Reads
    of one site (same kind, layer, head and features; not a `std` statistic) share one hook
    that gathers all their positions at once and gives each Read its slice: an `@ each`
    sweep reads one site at every position, and a hook and a gather per position cost more
    than the gather itself. Each slice equals what make_reader would store."""
    groups: dict[tuple, list[tuple[str, Read]]] = {}
    for rid, read in reads:
        key = (read.site, rid) if read.stat else (read.site,)
        groups.setdefault(key, []).append((rid, read))
    out = []
    for items in groups.values():
        site = items[0][1].site
        if len(items) == 1:
            rid = items[0][0]
            fn = make_reader(items[0][1], batch, columns, lambda v, rid=rid: store(rid, v))
        else:
            fn = _site_reader(items, batch, columns, store)
        out.append((site.kind, site.layer, site.head, fn))
    return out


def _site_reader(items: list[tuple[str, Read]], batch: Batch, columns,
                 store: Callable[[str, ReadValue], None]):
    site = items[0][1].site
    idxs = [position_index(batch, read.pos, columns) for _, read in items]
    slots = [slot_mask(batch, read.pos, columns) for _, read in items]
    widths = [int(i.shape[1]) for i in idxs]
    idx = torch.cat(idxs, 1)

    @position_major_for(site)
    def fn(act: torch.Tensor) -> None:
        a = features_of(site, act).detach()
        parts = gather(a, idx).split(widths, 1)
        for (rid, read), value, mask in zip(items, parts, slots):
            store(rid, ReadValue(value, batch, read.pos, mask))
        return None

    return fn


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of a read repeated to match a batch of n rows (noise samples repeat examples)."""
    if t.shape[0] == n:
        return t
    if n % t.shape[0]:
        raise RuntimeInterventionError("E451", f"cannot align {t.shape[0]} examples with {n}")
    return t.repeat_interleave(n // t.shape[0], 0)


def make_writer(write: Write, batch: Batch, columns, inputs: list, seed: int
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The hook that applies `write` in a forward over `batch`. `inputs` are the values of
    write.inputs: ReadValues, vectors [d] or std scalars. A ReadValue of the whole site
    feeding a write on a feature slice is cut to that slice (one Read of a dictionary's
    latents serves a sweep over them: compiler/lower_latents.py)."""
    inputs = [_cut(v, write.site) for v in inputs]
    idx = position_index(batch, write.pos, columns)
    valid = position_valid(batch, write.pos)
    slots = slot_mask(batch, write.pos, columns)
    # A repeated slot (a span shorter than the longest) takes its row's last own slot's new
    # value, so that the scatter writes one value per position.
    own = None if slots is None else (slots.long().cumsum(1) - 1).clamp(min=0)
    mode = write.mode
    n_operands = {"replace": 1, "mean": 1, "resample": 1, "add": 1, "project": 1,
                  "noise": len(inputs), "freeze_ln": 1}.get(mode, 0)
    basis = [v for v in inputs[n_operands:]]
    proj = projector(basis) if basis else None
    if mode in ("project", "remove") and proj is None:
        raise RuntimeInterventionError("E452", f"{mode} write on {write.site} has no subspace")

    @position_major_for(write.site)
    def fn(act: torch.Tensor) -> torch.Tensor:
        feats = _features(write.site, act)
        sub = act[..., feats]
        cur = gather(sub, idx)  # [N, k, d]
        new = _new_value(write, mode, cur, inputs, batch, idx, seed)
        if own is not None:
            new = new.gather(1, own[..., None].expand(-1, -1, new.shape[-1]).to(new.device))
        if proj is not None:
            p = proj.to(cur.device, torch.float32)
            new = cur + ((new - cur).float() @ p).to(cur.dtype)
        if not bool(valid.all()):  # rows without this position stay as they are
            keep = valid.to(cur.device).view(-1, *([1] * (cur.dim() - 1)))
            new = torch.where(keep, new, cur)
        out = act.clone()
        out[..., feats] = scatter(sub, idx, new)
        return out

    return fn


def _cut(value, site: Site):
    """A ReadValue wider than `site`'s feature slice, cut to it (else `value` as it is)."""
    if not isinstance(value, ReadValue) or site.features is None or value.value.dim() < 3:
        return value  # (a std statistic is a scalar)
    lo, hi = site.features
    width = value.value.shape[-1]
    if width == hi - lo or width < hi:
        return value
    return dataclasses.replace(value, value=value.value[..., lo:hi])


def _new_value(write: Write, mode: str, cur: torch.Tensor, inputs: list, batch: Batch,
               idx: torch.Tensor, seed: int) -> torch.Tensor:
    n = cur.shape[0]
    if mode in ("replace", "project", "freeze_ln"):
        src: ReadValue = inputs[0]
        value = _repeat(src.value, n)
        if value.shape[1] != cur.shape[1]:
            raise RuntimeInterventionError(
                "E453", f"{write.site}: source has {value.shape[1]} positions, target "
                f"{cur.shape[1]} (runs swapped between need equal token lengths)")
        return value.to(cur.device, cur.dtype)
    if mode in ("zero", "remove"):
        return torch.zeros_like(cur)
    if mode == "mul":
        return cur * write.scale
    if mode == "add":
        vec = inputs[0].to(cur.device, torch.float32)
        return (cur.float() + write.scale * vec).to(cur.dtype)
    if mode == "noise":
        std = float(inputs[0].value) if inputs else 1.0
        gen = torch.Generator().manual_seed(write.seed if write.seed is not None else seed)
        noise = torch.randn(cur.shape, generator=gen, dtype=torch.float32)
        return (cur.float() + write.scale * std * noise.to(cur.device)).to(cur.dtype)
    if mode == "mean":
        return _mean_value(write, inputs[0], cur, batch, idx)
    if mode == "resample":
        return _resample_value(write, inputs[0], cur, batch, seed)
    raise RuntimeInterventionError("E454", f"unknown write mode {mode!r}")


def _mean_value(write: Write, src: ReadValue, cur: torch.Tensor, batch: Batch,
                idx: torch.Tensor) -> torch.Tensor:
    """The mean over the source run's examples, per position: for `all` positions aligned
    by token index from each prompt's start (padding excluded); else per selected slot."""
    if src.pos.kind != "all":
        # Only the examples that have the position (`@ each` past a short prompt reads a
        # stand-in token there) enter the mean.
        have = position_valid(src.batch, src.pos)
        if not bool(have.any()):
            raise RuntimeInterventionError(
                "E455", f"{write.site}: mean ablation has no example with position {src.pos}")
        if src.mask is not None:  # per-example spans: each slot over the rows that have it
            w = (src.mask & have[:, None]).to(src.value.device, torch.float32)[..., None]
            mean = (src.value.float() * w).sum(0, keepdim=True) / w.sum(0, keepdim=True)
            return mean.expand_as(cur).to(cur.device, cur.dtype)
        mean = src.value[have.to(src.value.device)].float().mean(0, keepdim=True)
        return mean.expand_as(cur).to(cur.device, cur.dtype)
    sb = src.batch
    width = max(sb.lengths)
    total = torch.zeros(width, *cur.shape[2:], device=cur.device)
    count = torch.zeros(width, *([1] * (cur.dim() - 2)), device=cur.device)
    for i, length in enumerate(sb.lengths):
        total[:length] += src.value[i, sb.offset(i):].float().to(cur.device)
        count[:length] += 1
    mean = total / count.clamp(min=1)
    longest = max(batch.lengths)  # `batch` is the batch fed: one row per row of cur
    if longest > width:
        raise RuntimeInterventionError(
            "E455", f"{write.site}: mean ablation has no example with {longest} tokens")
    # Each slot takes the mean at its token index from its own prompt's start; slots on
    # padding keep their value. (One gather, not a Python loop over rows and slots.)
    offsets = torch.tensor([batch.offset(i) for i in range(cur.shape[0])], dtype=torch.long)
    rel = idx.to(torch.long) - offsets[:, None]  # [n, k]
    new = mean.to(cur.dtype)[rel.clamp(min=0).to(mean.device)]
    keep = (rel >= 0).to(cur.device).view(*rel.shape, *([1] * (cur.dim() - 2)))
    return torch.where(keep, new, cur)


def _resample_value(write: Write, src: ReadValue, cur: torch.Tensor, batch: Batch,
                    seed: int) -> torch.Tensor:
    """Each example takes the value of a random other example of the source run with the
    same token count (seeded, so reruns agree)."""
    gen = torch.Generator().manual_seed(write.seed if write.seed is not None else seed)
    sb = src.batch
    n_src = src.value.shape[0]
    samples = batch.n // n_src if batch.n % n_src == 0 else 1
    # `@ each` past a short prompt: only examples that have the position are drawn from,
    # and a row without it keeps its own value (the writer leaves that row unchanged).
    have = position_valid(sb, src.pos).tolist()
    needs = position_valid(batch, src.pos).tolist()
    choice = []
    for i in range(batch.n):
        example = i // samples  # noise samples of one example share its identity
        pool = [j for j in range(n_src) if j != example and have[j] and
                (src.pos.kind != "all" or sb.lengths[j] == batch.lengths[i])]
        if not needs[i]:
            pool = pool or [min(example, n_src - 1)]
        if not pool:
            what = f"position {src.pos}" if src.pos.kind == "index" else \
                f"{batch.lengths[i]} tokens"
            raise RuntimeInterventionError(
                "E456", f"{write.site}: example {i} has no other example with {what} to "
                "resample from")
        choice.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    value = src.value[choice]
    if src.pos.kind == "all" and value.shape[1] != cur.shape[1]:
        value = value[:, -cur.shape[1]:]
    return value.to(cur.device, cur.dtype)
