"""Gradient estimates of a swap: Backward nodes (gradients of a metric at sites of run B)
and Estimate nodes (attribution patching, RelP, integrated gradients; dla in dla.py).

An Estimate's value per example is m_B + sum over its sites, positions and features of
(a_A - a_B) * g: an estimate of what `swap` would measure, so it normalizes like the swap.
g is the total derivative at each site (a zero is added there, so paths through the other
sites stay open): plain autograd for atp and ig, RelP's LRP rules (lrp.py) for relp. One
Backward is one forward+backward, whatever the number of sites it serves.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.ir import Backward, Estimate, Forward, IRGraph, Metric, Read, Site

from . import dla, lrp
from .activations import fused_backwards
from .inputs import position_index, position_valid
from .prefix import trimmed_logits
from .sparse import zero_path_gradients
from .writes import ReadValue, _features, features_of, gather, position_major_for, scatter

IG_ROWS = 64  # rows (examples x steps) per batched ig pass unless `set batch_size` says

if TYPE_CHECKING:
    from .context import RunContext


def _metric_values(interp: "RunContext", ir: IRGraph, metric: Metric, logits: torch.Tensor,
                   batch, trim: "Trim | None" = None) -> torch.Tensor:
    """Differentiable per-example metric values from full logits [N, T, V], or from logits
    trimmed as `trim` says ([N, K, U]: the metric's slot among K positions, U token ids)."""
    from . import metrics as M

    fwd: Forward = ir.node(metric.forward)  # type: ignore[assignment]
    ids = interp.token_ids(fwd.run, batch.n)
    if trim is not None:
        at, full = logits[:, trim.slots[metric.pos]].float(), None
        if trim.remap is not None:
            ids = lambda tok, ids=ids, remap=trim.remap: remap[ids(tok)]  # noqa: E731
    else:
        idx = position_index(batch, metric.pos, interp.columns_for(fwd.run)).to(logits.device)
        at = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))[:, 0].float()
        full = logits.float()
    return M.evaluate(metric.expr, M.MetricContext(at, full, batch, ids))


@dataclass
class Trim:
    """Logits computed only where (and for the token ids that) the metrics read them:
    runtime/prefix.trimmed_logits's `index` and `tokens`, each metric position's slot, and
    the token id -> column map (None: every id)."""

    slots: dict
    index: torch.Tensor | None
    tokens: torch.Tensor | None
    remap: torch.Tensor | None


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters without requires_grad for the duration (restored after, also on error):
    the forward then records no weight-gradient paths and saves nothing for them."""
    # (each module's own table: parameters() builds names and drops tied duplicates, which
    # cost more than setting a flag twice)
    params = [p for m in model.modules() for p in m._parameters.values() if p is not None]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def chained(hooks: list) -> list:
    """(kind, layer, head, fn) hooks with each run of consecutive hooks at one site made one
    hook that calls them in order (what the adapter's chain of hooks computes, with one
    module hook instead of many: an `@ each` sweep reads one site at every position)."""
    out: list = []
    for kind, layer, head, fn in hooks:
        if out and out[-1][:3] == (kind, layer, head):
            out[-1][3].append(fn)
        else:
            out.append((kind, layer, head, [fn]))
    return [(k, layer, h, fns[0] if len(fns) == 1 else _chain(fns)) for k, layer, h, fns in out]


def by_site(hooks: list) -> list:
    """The hooks grouped by site (kind, layer, head), in order of first appearance, each
    site's in their own order. Only for hooks whose order across sites does not matter
    (reads and zero leaves): a write at one site changes what another site's hook on the
    same module sees."""
    groups: dict[tuple, list] = {}
    for h in hooks:
        groups.setdefault(h[:3], []).append(h)
    return [h for group in groups.values() for h in group]


def _chain(fns: list[Callable]) -> Callable:
    def fn(act: torch.Tensor) -> torch.Tensor | None:
        changed = False
        for f in fns:
            new = f(act)
            if new is not None:
                act, changed = new, True
        return act if changed else None
    return fn


def gradients(interp: "RunContext", ir: IRGraph, metric_id: str, reads: list[str],
              rules: str = "grad", replace: dict[Site, Callable] | None = None,
              repeat: int = 1, forward_reads: bool = False,
              logits_out: Callable[[torch.Tensor], None] | None = None,
              trim: Trim | None = None, nodes: dict[str, Read] | None = None,
              around: Callable[[], contextlib.AbstractContextManager] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example metric values [n] and d(metric)/d(site) at each Read's positions
    ([n, k, d] per read id), from one forward+backward of the metric's Forward.

    `rules`: `grad` (autograd), `lrp`/`lrp_ah` (RelP's rules, runtime/lrp.py: the same
    forward values, LRP's local backward). `replace[site](act)` edits a site's activation
    first (ig's interpolation points); `repeat` runs each row that many times in a row (ig's
    steps batched: the activations then have n * repeat rows, and so do the results).
    `forward_reads`: the pass also stores every Read of the Forward (as its own forward
    would), and `logits_out` receives its logits (detached): the Forward's pass and the
    backward's are then one (runtime/execute.py). `trim`: compute only the logits the
    metric reads (neither the forward nor the backward then pays for the unembedding).
    `nodes`: Reads not in the graph, by the ids `reads` names them (compact estimates).
    `around()`: a context entered last around the model call (ig_sweeps' skip_layers).
    """
    nodes = nodes or {}
    metric: Metric = ir.node(metric_id)  # type: ignore[assignment]
    fwd: Forward = ir.node(metric.forward)  # type: ignore[assignment]
    batch = interp.run_inputs(fwd.run).batch.repeat(fwd.samples * repeat)
    columns = interp.columns_for(fwd.run)
    hooks = interp.hooks_for(ir, metric.forward, fwd, batch, reads=forward_reads)
    leaves: dict[Site, torch.Tensor] = {}
    sites = {}
    for rid in reads:
        read: Read = nodes[rid] if rid in nodes else ir.node(rid)  # type: ignore[assignment]
        sites.setdefault(Site(read.site.kind, read.site.layer, read.site.head), []).append(rid)

    def make_leaf(site: Site):
        @position_major_for(site)  # the leaf, its gradient and `replace` see [N, T, ...]
        def fn(act: torch.Tensor) -> torch.Tensor:
            if replace and site in replace:
                act = replace[site](act)
            # A zero added at the site, not a detached copy of it: the zero's gradient is
            # the total derivative, with the paths through the other sites' leaves (a
            # later layer's input, a later MLP) still open.
            leaf = torch.zeros_like(act, requires_grad=True)
            leaves[site] = leaf
            return act + leaf
        return fn

    grad_hooks = [(s.kind, s.layer, s.head, make_leaf(s)) for s in sites]
    hooks += grad_hooks
    if not fwd.writes and not replace:
        # Nothing but reads and zero leaves, which change no value: each site's reads and
        # its leaf can be one hook (one module hook per site instead of two).
        hooks = by_site(hooks)
    # The rules go in first: writes and leaves then see the model's own (unchanged) values.
    head = interp.model.get_output_embeddings()
    # GELUs in many elementwise ops get their one-kernel backward (RelP's rules bypass it)
    with torch.enable_grad(), frozen(interp.model), lrp.rules_for(interp.adapter, rules), \
            fused_backwards(interp.model), \
            interp.adapter.hooks(chained(hooks)), \
            trimmed_logits(head, *(trim.index, trim.tokens) if trim else (None, None)), \
            interp.model_pass(), around() if around else contextlib.nullcontext():
        logits = interp.model(**batch.to(interp.device).model_kwargs()).logits
        if logits_out is not None:
            logits_out(logits.detach())
        values = _metric_values(interp, ir, metric, logits, batch, trim)
        # Only the leaves' gradients: no weight gradients computed, no `.grad` left behind
        # on the model's parameters.
        made = list(leaves.values())
        found = torch.autograd.grad(values.sum(), made, allow_unused=True) \
            if made and values.requires_grad else [None] * len(made)
        grads = {id(leaf): g for leaf, g in zip(made, found)}
    out: dict[str, torch.Tensor] = {}
    for site, rids in sites.items():
        leaf = leaves.get(site)
        if leaf is None:
            raise RuntimeInterventionError("E461", f"no gradient reached {site}")
        # No gradient at all: the metric does not depend on the site (a query under the
        # AH-rule, whose pattern is detached).
        grad = grads.get(id(leaf))
        grad = grad if grad is not None else torch.zeros_like(leaf)
        # The reads of one feature slice take their positions in one gather (an `@ each`
        # sweep reads a site at every position), each its own slice of it.
        by_features: dict = {}
        for rid in rids:
            read: Read = nodes[rid] if rid in nodes else ir.node(rid)  # type: ignore[no-redef]
            by_features.setdefault(read.site.features, []).append((rid, read))
        for items in by_features.values():
            g = features_of(items[0][1].site, grad)
            if len(items) == 1 and items[0][1].pos.kind == "all":  # every position: as is
                out[items[0][0]] = g.detach()
                continue
            idxs = [position_index(batch, read.pos, columns) for _, read in items]
            parts = gather(g, torch.cat(idxs, 1)).detach().split(
                [int(i.shape[1]) for i in idxs], 1)
            out.update((rid, part) for (rid, _), part in zip(items, parts))
    return values.detach(), out


def run_backward(interp: "RunContext", ir: IRGraph, nid: str, node: Backward
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return gradients(interp, ir, node.metric, list(node.wrt), node.rules)


def run_estimate(interp: "RunContext", ir: IRGraph, node: Estimate) -> torch.Tensor:
    """Per-example estimate of the swapped metric [n]."""
    if node.method == "dla":
        return dla.run_dla(interp, ir, node)
    *pairs_flat, bid = node.inputs
    pairs = list(zip(pairs_flat[0::2], pairs_flat[1::2]))
    backward: Backward = ir.node(bid)  # type: ignore[assignment]
    if node.method in ("atp", "relp"):
        m_b, grads = interp.values[bid]
    elif node.method == "ig":
        # Latents zero in both runs: no passes, the estimate is exactly m_B (sparse.py).
        zeros = zero_path_gradients(interp, ir, pairs)
        if zeros is not None:
            m_b, grads = interp.values[bid][0], zeros
        else:
            m_b, grads = _integrated_gradients(interp, ir, bid, pairs, node.steps)
    else:
        raise RuntimeInterventionError("E463", f"unknown estimator {node.method!r}")
    delta = torch.zeros_like(m_b, device="cpu")  # the products are summed on the CPU
    valid = torch.ones(m_b.shape[0], dtype=torch.bool)
    for ra, rb in pairs:
        a: ReadValue = interp.values[ra]
        b: ReadValue = interp.values[rb]
        av, bv = a.value.float(), b.value.float()
        if av.shape[0] != bv.shape[0]:  # A without noise samples, B with: align rows
            av = av.repeat_interleave(bv.shape[0] // av.shape[0], 0)
        g = grads[rb]  # reads of one site in two forwards may sit on different devices
        diff = av.to(g.device) - bv.to(g.device)
        if diff.shape[0] != grads[rb].shape[0]:
            diff = diff.repeat_interleave(grads[rb].shape[0] // diff.shape[0], 0)
        delta = delta + (diff * grads[rb].float()).flatten(1).sum(1).cpu()
        read: Read = ir.node(rb)  # type: ignore[assignment]
        batch = b.batch if b.batch.n == m_b.shape[0] else b.batch.repeat(
            m_b.shape[0] // b.batch.n)
        valid &= position_valid(batch, read.pos)  # `@ each` past a short prompt: NaN
    est = torch.where(valid, m_b.cpu() + delta, torch.nan)
    samples = ir.node(ir.node(backward.metric).forward).samples  # type: ignore[union-attr]
    return est.view(-1, samples).mean(1) if samples > 1 else est


def _ig_chunk(interp: "RunContext", ir: IRGraph, backward: Backward, steps: int) -> int:
    """How many of ig's steps share one batched forward+backward. A run with noise draws
    noise by the batch's shape, so its steps run one at a time (the same draws as B's)."""
    fwd: Forward = ir.node(ir.node(backward.metric).forward)  # type: ignore[union-attr]
    if any(ir.node(w).mode == "noise" for w in fwd.writes):  # type: ignore[union-attr]
        return 1
    n = interp.run_inputs(fwd.run).batch.n * fwd.samples
    rows = interp.checked.options.batch_size or IG_ROWS
    return max(1, min(steps, rows // max(n, 1)))


def _integrated_gradients(interp: "RunContext", ir: IRGraph, bid: str,
                          pairs: list[tuple[str, str]], steps: int
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """integrated_gradients at the (A Read, B Read) pairs of an experiment."""
    points = [(rb, ir.node(rb), interp.values[ra].value, interp.values[rb].value)
              for ra, rb in pairs]
    return integrated_gradients(interp, ir, bid, points, steps)  # type: ignore[arg-type]


def integrated_gradients(interp: "RunContext", ir: IRGraph, bid: str,
                         points: list[tuple[str, Read, torch.Tensor, torch.Tensor]], steps: int
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gradients averaged over `steps` midpoints on the straight line a_B -> a_A at the
    estimated sites (at the positions and features the reads cover; the rest of each site
    keeps B's value), and m_B. `points`: (read id, its Read of B, a_A, a_B) per estimated
    read (the Read need not be in the graph: a compact estimate's member). The steps run
    batched: each forward+backward stacks up to _ig_chunk of them along the batch."""
    backward: Backward = ir.node(bid)  # type: ignore[assignment]
    m_b, _ = interp.values[bid]
    fwd: Forward = ir.node(ir.node(backward.metric).forward)  # type: ignore[union-attr]
    columns = interp.columns_for(fwd.run)
    rb_ids = [rb for rb, _, _, _ in points]
    nodes = {rb: read for rb, read, _, _ in points}
    ends: dict[Site, list[tuple[Read, torch.Tensor, torch.Tensor]]] = {}
    for _, read, a, b in points:
        if a.shape[0] != b.shape[0]:  # noise samples of one run: align rows
            a = a.repeat_interleave(b.shape[0] // a.shape[0], 0)
        site = Site(read.site.kind, read.site.layer, read.site.head)
        ends.setdefault(site, []).append((read, b, a.to(b.device) - b))
    chunk = _ig_chunk(interp, ir, backward, steps)
    total: dict[str, torch.Tensor] = {}
    for first in range(0, steps, chunk):
        alphas = [(j + 0.5) / steps for j in range(first, min(steps, first + chunk))]
        k = len(alphas)
        batch = interp.run_inputs(fwd.run).batch.repeat(fwd.samples * k)
        replace = {site: _shift(batch, columns, diffs, alphas) for site, diffs in ends.items()}
        _, grads = gradients(interp, ir, backward.metric, rb_ids, replace=replace, repeat=k,
                             nodes=nodes)
        for rid, g in grads.items():
            g = g.view(-1, k, *g.shape[1:]).sum(1) / steps
            total[rid] = total.get(rid, 0) + g
    return m_b, total


def _shift(batch, columns, ends: list[tuple[Read, torch.Tensor, torch.Tensor]],
           alphas: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The edit that puts a_B + alpha (a_A - a_B) at each read's positions and features of a
    site, in a forward of B whose rows repeat once per alpha. Those entries are constants,
    like a swap's (a site upstream in the same group does not move them); the others stay."""
    def fn(act: torch.Tensor) -> torch.Tensor:
        k = len(alphas)
        new, mask = act.detach().clone(), torch.zeros_like(act)
        for read, b, diff in ends:
            al = torch.tensor(alphas, device=act.device, dtype=act.dtype)
            al = al.view(1, k, *([1] * (b.dim() - 1)))
            feats = _features(read.site, act)
            b, diff = b.to(act.device, act.dtype), diff.to(act.device, act.dtype)
            point = (b[:, None] + al * diff[:, None]).flatten(0, 1)  # row i, step j
            idx = position_index(batch, read.pos, columns)
            new[..., feats] = scatter(new[..., feats], idx, point)
            mask[..., feats] = scatter(mask[..., feats], idx, torch.ones_like(point))
        return torch.where(mask > 0, new, act)
    return fn
