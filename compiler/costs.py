"""The schedule's cost model: FLOPs and bytes of a (batched, narrowed, trimmed) forward, the
sizes of cached values, and where a forward's positions start (the narrowing boundary).

Counts are for the matrix multiplications that dominate a decoder (2 FLOPs per multiply-add):
q/k/v/o projections, attention scores and their weighted sum, the MLP and the unembedding.
Norms, embeddings and elementwise work are left out. Memory is a conservative estimate of the
activations a forward holds at once (one layer's, plus the key/value cache it keeps, plus its
logits), per batch row. Torch-free: `patchc compile --emit plan` uses it without a model, the
runtime with the real token counts. `GraphSizes` applies it to the nodes of one IR graph.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property

from .dictionaries import dict_width, is_dict_kind, split_kind
from .ir import Backward, Estimate, Forward, IRGraph, Metric, Positions, Read, Site, Vector
from .ir_sweep import count
from .modelspec import ModelSpec
from .sites import SITE_KINDS

SAFETY = 1.25  # activation estimates are multiplied by this
# Seconds of overhead (lowering, passes, scheduling, hook installation, bookkeeping, result
# assembly: everything but model passes) per run, per node of the lowered graph and per model
# pass, and the FLOP rate of the model passes: fitted to every bundled example spec on the
# project's shared 2-core CPU (benchmarks/estimate_fit.py; docs/performance.md, "What check
# estimates"). Per node is rounded up from the fit (0.13 ms): the largest graphs (sparse
# latent sweeps, 33k nodes) took ~0.2 ms a node.
OVERHEAD_PER_RUN = 5e-3
OVERHEAD_PER_NODE = 2e-4
OVERHEAD_PER_PASS = 2e-3
ASSUMED_FLOPS_PER_SECOND = 3e10
FLOAT32 = 4
# Held back from every budget: allocator slack, Python objects, the run's small tensors.
RESERVE_BYTES = 32 << 20


@dataclass(frozen=True)
class RunShape:
    """What the schedule knows of a run's prompts: token count per example, and the integer
    data columns that per-example positions (`@ DATA.column`) read."""

    lengths: tuple[int, ...]
    columns: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)

    @cached_property
    def width(self) -> int:  # (the schedule asks for it thousands of times on a big plan)
        return max(self.lengths)

    @property
    def n(self) -> int:
        return len(self.lengths)


def parse_bytes(text: str) -> int:
    """`"8GB"`, `"512MiB"`, `"1.5 GB"` -> bytes (GB = 10^9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    power = " KMGT".index(m.group(2).upper() or " ")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** power)


def first_index(pos: Positions, shape: RunShape, samples: int = 1) -> int:
    """The smallest padded token index `pos` selects in any row (left padding: a row of
    length n starts at width - n). Mirrors runtime/inputs.position_index."""
    width = shape.width
    if pos.kind == "all":
        return 0
    if pos.kind == "last":
        return width - 1
    offsets = [width - n for n in shape.lengths]
    if pos.kind == "index":
        return min(o + min(pos.lo, n - 1) for o, n in zip(offsets, shape.lengths))
    if pos.kind == "range":
        return min(offsets) + pos.lo
    if pos.kind == "set":
        return min(offsets) + min(pos.values)
    assert pos.column is not None
    values = shape.columns.get(pos.column)
    if not values:
        return 0
    return min(o + v for o, v in zip(offsets, values))


def n_positions(pos: Positions, shape: RunShape) -> int:
    """How many token slots a Read at `pos` holds per row."""
    if pos.kind == "all":
        return shape.width
    if pos.kind == "range":
        return pos.hi - pos.lo + 1
    if pos.kind == "set":
        return len(pos.values)
    if pos.kind == "span" and pos.column is not None and pos.end is not None:
        los, his = shape.columns.get(pos.column), shape.columns.get(pos.end)
        if los and his:
            return max(h - lo + 1 for lo, h in zip(los, his))
        return shape.width
    return 1


def site_dim(site: Site, model: ModelSpec, width: int) -> int:
    if site.features is not None:
        return site.features[1] - site.features[0]
    if is_dict_kind(site.kind):
        return dict_width(model, site.kind)
    dim = SITE_KINDS[site.kind].dim
    if dim == "n_ctx":
        return width
    return model.dim_of(dim)


@dataclass(frozen=True)
class ForwardShape:
    """One forward pass as the cost model sees it."""

    rows: int  # batch rows (examples x samples x batched forwards)
    width: int  # padded prompt width
    p0: int = 0  # first position computed (narrowing); keys before it come from a cache
    start_layer: int = 0
    logit_positions: int | None = None  # None: every computed position
    vocab: int | None = None  # unembedding rows computed (None: the whole vocabulary)
    cache: bool = False  # keeps a key/value cache (a twin others narrow from, or narrowed)
    live: int | None = None  # dead_positions: the last block's MLP runs at this many positions
    latents: int = 0  # the latent widths (d_sae) of the dictionaries attached in this pass
    edges: bool = False  # an edge sweep's chunk: it holds its senders' differences (float32)


def layer_flops(model: ModelSpec, positions: int, keys_total: float) -> float:
    """FLOPs of one decoder layer for `positions` query tokens of one row, attending to
    `keys_total` keys summed over those queries."""
    d, da, dkv, dm = model.d_model, model.d_attn, model.d_kv, model.d_mlp
    proj = 2 * d * (da + 2 * dkv) + 2 * da * d
    mlp = 2 * d * dm * (3 if model.gated_mlp else 2)
    return positions * (proj + mlp) + 2 * 2 * model.d_head * model.n_heads * keys_total


def forward_flops(model: ModelSpec, f: ForwardShape) -> float:
    positions = f.width - f.p0
    keys = sum(q + 1 for q in range(f.p0, f.width))  # causal: query q sees q + 1 keys
    layers = model.n_layers - f.start_layer
    per_row = layers * layer_flops(model, positions, keys)
    if f.live is not None and f.live < positions:  # the last MLP skips dead positions
        per_row -= (positions - f.live) * 2 * model.d_model * model.d_mlp * \
            (3 if model.gated_mlp else 2)
    logit_pos = positions if f.logit_positions is None else f.logit_positions
    per_row += 2 * model.d_model * (f.vocab or model.vocab_size) * logit_pos
    return f.rows * per_row


def forward_bytes(model: ModelSpec, f: ForwardShape, dtype_bytes: int) -> int:
    """Activation bytes a forward holds at its peak (weights and cached values excluded)."""
    s = f.width - f.p0
    d, da, dkv, dm = model.d_model, model.d_attn, model.d_kv, model.d_mlp
    # Hidden states, norms and q/k/v with their head-major copies, and the MLP's hidden layer
    # with the temporaries of its activation function (tanh-GELU makes about five).
    per_row = s * (8 * d + 2 * da + 2 * dkv + 6 * dm) * dtype_bytes
    per_row += 2 * model.n_heads * s * f.width * FLOAT32  # scores and softmax
    if f.cache:  # the key/value cache of every layer run, kept to the end of the forward
        per_row += (model.n_layers - f.start_layer) * 2 * f.width * dkv * dtype_bytes
    logit_pos = s if f.logit_positions is None else f.logit_positions
    per_row += 3 * logit_pos * (f.vocab or model.vocab_size) * FLOAT32  # logits, softmaxes
    # An attached dictionary holds its latents (float32) at every computed position: the
    # pre-activations, the latents, the written copy and the comparison of the two.
    per_row += 4 * s * f.latents * FLOAT32
    if f.edges:  # the chunk's sender differences and each member row's copy of its own
        per_row += 2 * s * d * FLOAT32
    return math.ceil(SAFETY * f.rows * per_row)


def grad_pass_bytes(model: ModelSpec, rows: int, width: int, dtype_bytes: int) -> int:
    """Activation bytes of a forward whose backward takes gradients at its sites (ig's
    passes): autograd keeps every layer's activations (forward_bytes' per-layer part, once
    a layer) and the logits until the backward has run."""
    d, da, dkv, dm = model.d_model, model.d_attn, model.d_kv, model.d_mlp
    layer = width * (8 * d + 2 * da + 2 * dkv + 6 * dm) * dtype_bytes
    layer += 2 * model.n_heads * width * width * FLOAT32
    per_row = model.n_layers * layer + 3 * width * model.vocab_size * FLOAT32
    return math.ceil(SAFETY * rows * per_row)


def kv_bytes(model: ModelSpec, rows: int, width: int, dtype_bytes: int) -> int:
    return model.n_layers * 2 * rows * width * model.d_kv * dtype_bytes


def weights_bytes(model: ModelSpec, dtype_bytes: int) -> int:
    """The parameter bytes of a model of this shape (embeddings tied or not: counted twice
    is the conservative choice)."""
    d, da, dkv, dm = model.d_model, model.d_attn, model.d_kv, model.d_mlp
    layer = d * (da + 2 * dkv) + da * d + d * dm * (3 if model.gated_mlp else 2) + 4 * d
    return (model.n_layers * layer + 2 * model.vocab_size * d) * dtype_bytes


class GraphSizes:
    """Sizes of cached values and shapes of forwards, for one graph."""

    def __init__(self, ir: IRGraph, model: ModelSpec, runs: dict[str, RunShape],
                 dtype_bytes: int, naive: bool) -> None:
        self.ir, self.model, self.runs, self.b, self.naive = ir, model, runs, dtype_bytes, naive
        self._bytes: dict[str, int] = {}  # value(): the schedule asks for each value often
        self._latents: dict[str, int] = {}
        self._p0: dict[str, int] = {}  # p0(): asked per member, chunk and step

    def fwd(self, fid: str) -> Forward:
        return self.ir.node(fid)  # type: ignore[return-value]

    def rows(self, fid: str) -> int:
        f = self.fwd(fid)
        return self.runs[f.run].n * f.samples

    def vocab(self, fid: str) -> int | None:
        f = self.fwd(fid)
        if self.naive or not f.logit_tokens:
            return None
        return min(self.model.vocab_size, 2 * self.runs[f.run].n)  # distinct ids: a guess

    def logit_positions(self, fid: str) -> int | None:
        f = self.fwd(fid)
        return None if self.naive or f.logit_positions is None else len(f.logit_positions)

    def value(self, vid: str) -> int:
        """Bytes of a cached value: a Read, a forward's logits, a vector, a cache."""
        got = self._bytes.get(vid)
        if got is None:
            got = self._bytes[vid] = self._value(vid)
        return got

    def _value(self, vid: str) -> int:
        if vid.startswith("kv:"):
            fid = vid[3:]
            return kv_bytes(self.model, self.rows(fid), self.runs[self.fwd(fid).run].width,
                              self.b)
        node = self.ir.node(vid)
        if isinstance(node, Read):
            if node.stat:
                return FLOAT32
            shape = self.runs[self.fwd(node.forward).run]
            dim = site_dim(node.site, self.model, shape.width)
            return self.rows(node.forward) * n_positions(node.pos, shape) * dim * self.b
        if isinstance(node, Forward) and node.sweep is not None:
            return 0  # its chunks' logits are measured and dropped inside their pass
        if isinstance(node, Forward):
            width = self.runs[node.run].width
            k = self.logit_positions(vid)
            k = width if k is None else k
            return k * self.rows(vid) * (self.vocab(vid) or self.model.vocab_size) * FLOAT32
        if isinstance(node, Vector):
            return node.dim * FLOAT32
        if isinstance(node, Backward):
            return sum(self.value(r) for r in node.wrt) * FLOAT32 // self.b
        if isinstance(node, Estimate) and node.space is not None:  # [members, examples]
            back = self.ir.node(node.inputs[-1])
            return count(node.space) * self.rows(self.ir.node(back.metric).forward) * FLOAT32  # type: ignore[union-attr]
        if isinstance(node, Metric):  # per example and member of a sweep
            f = self.fwd(node.forward)
            return (len(f.sweep) if f.sweep is not None else 1) * self.rows(node.forward) * \
                FLOAT32
        return 0

    def p0(self, fid: str) -> int:
        """The first position forward `fid` needs computed (0 unless narrowed)."""
        got = self._p0.get(fid)
        if got is None:
            got = self._p0[fid] = self._first(fid)
        return got

    def _first(self, fid: str) -> int:
        f = self.fwd(fid)
        if self.naive or not f.narrow or f.twin is None:
            return 0
        shape = self.runs[f.run]
        twin = self.fwd(f.twin)
        positions = [self.ir.node(w).pos for w in f.writes[len(twin.writes):]]  # type: ignore[union-attr]
        for c in self.ir.g.successors(fid):
            node = self.ir.node(c)
            if isinstance(node, (Read, Metric)):
                positions.append(node.pos)
        return min(first_index(p, shape) for p in positions) if positions else 0

    def latents(self, fid: str) -> int:
        """Summed d_sae of the dictionaries forward `fid` attaches: those whose sites its
        writes, its sweep or its Reads touch, hosted at or above the layer it starts at
        (a dictionary hosted below it encodes nothing in this pass)."""
        got = self._latents.get(fid)
        if got is not None:
            return got
        f = self.fwd(fid)
        kinds = {self.ir.node(w).site.kind for w in f.writes}  # type: ignore[union-attr]
        if f.sweep is not None:  # one site pattern: every member site is of one kind
            kinds |= {s.kind for s in f.sweep.space.sites[:1]}
        kinds |= {n.site.kind for n in map(self.ir.node, self.ir.g.successors(fid))
                  if isinstance(n, Read)}
        start = 0 if self.naive else f.start_layer
        names = {split_kind(k)[0] for k in kinds if is_dict_kind(k)}
        total = 0
        for name in sorted(names):
            info = self.model.dictionary(name)
            if info is not None and (info.host.layer is None or info.host.layer >= start):
                total += info.d_sae
        self._latents[fid] = total
        return total

    def shape(self, members: list[str], p0: int) -> ForwardShape:
        fid = members[0]
        f = self.fwd(fid)
        vocab = [self.vocab(m) for m in members]
        logits = [self.logit_positions(m) for m in members]
        live = [self.fwd(m).live_from for m in members]
        dead = not self.naive and not self.model.n_experts and None not in logits and \
            all(x is not None and x < self.model.n_layers for x in live)
        return ForwardShape(
            rows=sum(self.rows(m) for m in members), width=self.runs[f.run].width, p0=p0,
            start_layer=0 if self.naive else f.start_layer,
            logit_positions=None if None in logits else max(logits),  # type: ignore[type-var]
            vocab=None if None in vocab else sum(vocab),  # type: ignore[arg-type]
            cache=p0 > 0, live=max(logits) if dead else None,  # type: ignore[type-var]
            latents=max(self.latents(m) for m in members))

    def full_flops(self, fid: str) -> float:
        f = self.fwd(fid)
        return forward_flops(self.model, ForwardShape(self.rows(fid),
                                                         self.runs[f.run].width))


def overhead_seconds(lowered_nodes: int, passes: int = 0) -> float:
    """The estimated overhead of a run whose lowered (naive) graph has this many nodes and
    whose plan this many model passes."""
    return OVERHEAD_PER_RUN + OVERHEAD_PER_NODE * lowered_nodes + OVERHEAD_PER_PASS * passes


def overhead_share(overhead: float, flops: float) -> float:
    """The overhead's part of a run of `flops` at ASSUMED_FLOPS_PER_SECOND."""
    run = overhead + flops / ASSUMED_FLOPS_PER_SECOND
    return overhead / run if run > 0 else 0.0
