"""Edges: resolving `SENDER -> RECEIVER` patterns against a ModelSpec (docs/language.md, "Edges").

An edge joins a component's output (the sender: `embed`, `Ll.Hh.out`, `Ll.attn.out`,
`Ll.mlp.out`) to a component's input (the receiver: `Ll.Hh.q|k|v`, `Ll.mlp.in`, `logits`)
through the residual stream. It exists when the sender's output is part of the receiver's input:
the sender's component comes earlier, and in a parallel block attention and MLP of one layer
do not feed each other.

A receiver becomes an IR site of its input (`q.in`, `k.in`, `v.in`, `mlp.in`, `logits.in`): the
residual stream as that component alone reads it. On grouped-query models a `k`/`v` receiver is
the kv head of its query head; a pattern names it (and deduplicates it) by the group's first
query head, so `L1.H*.k` on a model with 8 query heads and 2 kv heads gives `L1.H0.k` and
`L1.H4.k`, while one head or a capture keeps the query head as written (`receivers`).
`logits.in` carries the layer count as its layer: it comes after every block (share_prefix then
starts a forward patched there after the last block, so only the final norm and unembedding run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from . import ast as A
from .errors import CheckError
from .ir import Site
from .modelspec import ModelSpec
from .resolve import expand_site

SENDER_KINDS = ("embed", "out", "attn.out", "mlp.out")
RECEIVER_KINDS = ("q", "k", "v", "mlp.in", "logits")
# receiver kind as written -> the IR site kind of its input
INPUT_KIND = {"q": "q.in", "k": "k.in", "v": "v.in", "mlp.in": "mlp.in", "logits": "logits.in"}
_WRITTEN = {v: k for k, v in INPUT_KIND.items()}


@dataclass(frozen=True, slots=True)
class EdgeRef:
    """One concrete edge: the sender's output site and the receiver's input site."""

    sender: Site
    receiver: Site

    def __str__(self) -> str:
        return f"{sender_text(self.sender)} -> {receiver_text(self.receiver)}"


@dataclass(frozen=True, slots=True)
class EdgeMatch:
    """One experiment of an edge sweep: the edges patched jointly and its column values."""

    edges: tuple[EdgeRef, ...]
    key: tuple[tuple[str, object], ...]


def sender_text(site: Site) -> str:
    return str(site)


def receiver_text(site: Site) -> str:
    """`L2.H1.q`, `L3.mlp.in`, `logits`: the receiver as written, from its input site."""
    kind = _WRITTEN[site.kind]
    if kind == "logits":
        return "logits"
    return str(Site(kind, site.layer, site.head))


# ---------------------------------------------------------------------------------------------
# Where components sit: (layer, stage), stage 0 = attention, 1 = MLP; embed before layer 0.


def _place(site: Site, model: ModelSpec) -> tuple[int, int]:
    if site.kind == "embed":
        return (-1, 1)
    if site.kind in ("logits.in",):
        return (model.n_layers, 0)
    assert site.layer is not None
    stage = 1 if site.kind in ("mlp.out", "mlp.in") else 0
    return (site.layer, stage)


def feeds(sender: Site, receiver: Site, model: ModelSpec) -> bool:
    """Is the sender's output part of the receiver's input?"""
    return _feeds(_place(sender, model), _place(receiver, model), model.parallel_attn)


def _feeds(s: tuple[int, int], r: tuple[int, int], parallel: bool) -> bool:
    # A parallel block's attention and MLP read the same stream: neither feeds the other.
    return s < r and not (parallel and s[0] == r[0])


def affects(receiver: Site, sender: Site, model: ModelSpec) -> bool:
    """Can writing the receiver's input change the sender's output in the same forward? (A
    conservative yes: the sender's component is the receiver's or comes after it.)"""
    return _place(sender, model) >= _place(receiver, model)


# ---------------------------------------------------------------------------------------------
# Resolution


def _no_extras(ref: A.SiteRef) -> None:
    if ref.features is not None or ref.subspace:
        raise CheckError("E391", f"an edge end is a whole component; {ref.text} takes no "
                         "feature slice or subspace", ref.span)


def _not_an_end(end: A.SiteRef, model: ModelSpec, role: str) -> str:
    """E390's message; for a dictionary's latents or error term, why they are no edge end."""
    name = end.kind[:-4] if end.kind.endswith(".err") else end.kind
    if model.dictionary(name) is None:
        return f"{end.text} is not an edge {role}"
    what = "error term" if end.kind.endswith(".err") else "latent"
    return (f"{end.text} is not an edge {role}: an edge joins one component's output to "
            f"another's input through the residual stream, and a dictionary's {what} is a "
            "site inside its host, not a component; patch or attribute it as a site "
            f"(`swap {end.text} from A into B`)")


def senders(end: A.EdgeEnd, model: ModelSpec) -> list[tuple[Site, tuple]]:
    """Concrete senders of one end, each with the captures it binds."""
    if isinstance(end, A.Every):
        out = [(Site("embed"), ())]
        for layer in range(model.n_layers):
            out += [(Site("out", layer, h), ()) for h in range(model.n_heads)]
            out.append((Site("mlp.out", layer), ()))
        return out
    if end.kind not in SENDER_KINDS:
        raise CheckError("E390", _not_an_end(end, model, "sender"), end.span,
                         hint="senders are embed, Ll.Hh.out, Ll.attn.out and Ll.mlp.out")
    _no_extras(end)
    return [(m.sites[0], _captures(end, m.sites[0])) for m in expand_site(end, model)]


def receivers(end: A.EdgeEnd, model: ModelSpec) -> list[tuple[Site, tuple, str]]:
    """Concrete receiver inputs of one end (k/v deduplicated by kv head), with captures and
    the text the edge table shows. A k/v receiver of a grouped-query model written with one
    head or a capture keeps the query head as written (`L1.H3.k`, the same input as
    `L1.H2.k` when they share a kv head); a pattern without captures lists each kv head
    once, by its group's first query head."""
    if isinstance(end, A.Every):
        out = []
        for layer in range(model.n_layers):
            for kind in ("q", "k", "v"):
                out += [(s, (), receiver_text(s))
                        for s in _heads(kind, layer, range(model.n_heads), model)]
            if model.missing("mlp.in") is None:
                mlp = Site("mlp.in", layer)
                out.append((mlp, (), receiver_text(mlp)))
        logits = Site("logits.in", model.n_layers)
        return out + [(logits, (), receiver_text(logits))]
    if end.kind not in RECEIVER_KINDS:
        raise CheckError("E390", _not_an_end(end, model, "receiver"), end.span,
                         hint="receivers are Ll.Hh.q, Ll.Hh.k, Ll.Hh.v, Ll.mlp.in and logits")
    _no_extras(end)
    out: list[tuple[Site, tuple, str]] = []
    for m in expand_site(end, model):
        site = m.sites[0]
        if end.kind == "logits":
            out.append((Site("logits.in", model.n_layers), (), "logits"))
        elif end.kind == "mlp.in":
            out.append((site, _captures(end, site), receiver_text(site)))
        else:
            (inp,) = _heads(end.kind, site.layer, [site.head], model)  # type: ignore[arg-type]
            caps = _captures(end, site)
            text = str(site) if caps or _is_single(end) else receiver_text(inp)
            out.append((inp, caps, text))
    return list(dict.fromkeys(out))


def _heads(kind: str, layer: int, heads, model: ModelSpec) -> list[Site]:
    """Input sites of head receivers; k/v of a grouped-query model by the group's first head."""
    if kind == "q" or not model.grouped_query:
        return [Site(INPUT_KIND[kind], layer, h) for h in heads]
    group = model.n_heads // model.n_kv_heads
    return list(dict.fromkeys(Site(INPUT_KIND[kind], layer, model.kv_head(h) * group)
                              for h in heads))


def _captures(ref: A.SiteRef, site: Site) -> tuple[tuple[str, int], ...]:
    out = []
    for idx, value in ((ref.layer, site.layer), (ref.head, site.head)):
        if isinstance(idx, A.Capture) and value is not None:
            out.append((idx.name, value))
    return tuple(out)


def _is_single(end: A.EdgeEnd) -> bool:
    if isinstance(end, A.Every):
        return False
    return not any(isinstance(i, (A.Star, A.IdxRange, A.IdxSet, A.Capture))
                   for i in (end.layer, end.head))


def iter_edge(edge: A.Edge, model: ModelSpec) -> Iterator[EdgeMatch]:
    """Every existing edge a pattern matches (one experiment each), keyed by `sender`,
    `receiver` and the captures of both ends (a capture on both ends must agree), one at a
    time: `* -> *` has tens of thousands, and a consumer that keeps only a summary of each
    (ir_edges.edge_set) never holds them all."""
    ss, rs = senders(edge.sender, model), receivers(edge.receiver, model)
    # Each end's place and text once (`* -> *` pairs every sender with every receiver).
    rplaced = [(r, rc, _place(r, model), ("receiver", text)) for r, rc, text in rs]
    for s, sc in ss:
        sp, stext = _place(s, model), ("sender", sender_text(s))
        for r, rc, rp, rtext in rplaced:
            if not _feeds(sp, rp, model.parallel_attn):
                continue
            if not sc and not rc:  # no captures (`* -> *`): the key is the two texts
                yield EdgeMatch((EdgeRef(s, r),), (stext, rtext))
                continue
            caps = dict(sc)
            if rc:
                if any(caps.get(c, v) != v for c, v in rc):
                    continue
                caps.update(rc)
            yield EdgeMatch((EdgeRef(s, r),), (stext, rtext) + tuple(caps.items()))


def expand_edge(edge: A.Edge, model: ModelSpec) -> list[EdgeMatch]:
    """iter_edge's matches as a list. An edge written without patterns that does not exist
    is an error (E392); a pattern that matches no edge is one too (E393)."""
    out = list(iter_edge(edge, model))
    if not out:
        _no_edge(edge, model)
    return out


def check_edge(edge: A.Edge, model: ModelSpec) -> None:
    """expand_edge's errors, without making every match (the checker's question)."""
    if next(iter_edge(edge, model), None) is None:
        _no_edge(edge, model)


def _no_edge(edge: A.Edge, model: ModelSpec) -> None:
    if _is_single(edge.sender) and _is_single(edge.receiver):
        s, r = senders(edge.sender, model)[0][0], receivers(edge.receiver, model)[0][0]
        own = "" if model.parallel_attn else " (and its own layer's MLP)"
        raise CheckError("E392", f"there is no edge {sender_text(s)} -> "
                         f"{receiver_text(r)}: {_why_not(s, r, model)}", edge.span,
                         hint=f"a head's output reaches later layers{own} and the logits, an "
                              "MLP's output later layers and the logits, `embed` everything; "
                              "`* -> RECEIVER` or `SENDER -> *` lists what there is")
    raise CheckError("E393", "the edge pattern matches no edge of the model", edge.span,
                     hint="a sender must come before its receiver")


def _why_not(s: Site, r: Site, model: ModelSpec) -> str:
    if model.parallel_attn and _place(s, model)[0] == _place(r, model)[0] and \
            _place(s, model) < _place(r, model):
        return f"{model.family} runs attention and MLP of a layer in parallel"
    return "the sender does not come before the receiver"


def expand_edge_item(item: A.Edge | A.EdgeGroup, model: ModelSpec) -> list[EdgeMatch]:
    """An edge pattern (one experiment per edge) or `all(...)` of edges (one experiment)."""
    if isinstance(item, A.Edge):
        return expand_edge(item, model)
    return list(iter_edge_item(item, model))


def iter_edge_item(item: A.Edge | A.EdgeGroup, model: ModelSpec) -> Iterator[EdgeMatch]:
    """expand_edge_item's matches one at a time (the item is checked: check_edge_item)."""
    if isinstance(item, A.Edge):
        yield from iter_edge(item, model)
        return
    edges: list[EdgeRef] = []
    for member in item.members:
        for m in expand_edge(member, model):
            edges.extend(m.edges)
    yield EdgeMatch(tuple(dict.fromkeys(edges)), ())


def check_edge_item(item: A.Edge | A.EdgeGroup, model: ModelSpec) -> None:
    """The errors expand_edge_item would raise."""
    for edge in [item] if isinstance(item, A.Edge) else item.members:
        check_edge(edge, model)


def start_site(layer: int, own_sites) -> Site:
    """The site whose value enters block `layer` (share_prefix's start state): `resid_pre`,
    or, for a forward whose first own write is into the logits (after the last block), the
    final residual stream `logits.in`. `own_sites`: the sites its own writes (or its sweep's
    members) write."""
    if Site("logits.in", layer) in own_sites:
        return Site("logits.in", layer)
    return Site("resid_pre", layer)


def has_edges(items: tuple[A.SiteItem, ...]) -> bool:
    return any(isinstance(i, (A.Edge, A.EdgeGroup)) for i in items)


def edge_pos(item: A.Edge | A.EdgeGroup) -> A.Pos | None:
    """The positions an edge item patches (the receiver's `@ POS`, or the group's)."""
    if isinstance(item, A.EdgeGroup):
        return item.pos
    return item.pos


def end_captures(item: A.Edge | A.EdgeGroup) -> list[A.Capture]:
    edges = [item] if isinstance(item, A.Edge) else list(item.members)
    out = []
    for e in edges:
        for end in (e.sender, e.receiver):
            if isinstance(end, A.SiteRef):
                out += [i for i in (end.layer, end.head) if isinstance(i, A.Capture)]
    return out

