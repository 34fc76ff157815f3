"""Site names: the catalog of site kinds, TransformerLens aliases, and parsing of site paths.

A site path such as `L$l.H*.z`, `L-1.mlp.post`, `embed` or `blocks.3.attn.hook_z` is lexed
as one PATH token by the grammar; `parse_site_path` splits it into layer/head index patterns
and a canonical kind. Whether a given model has the site is decided by `check.py` against a
ModelSpec (see `resolve.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .ast import Capture, Idx, Index, IdxRange, IdxSet, Star
from .errors import ParseError, Span


@dataclass(frozen=True, slots=True)
class SiteKind:
    """What a site kind needs and what shape it has per token."""

    name: str
    layered: bool  # takes `Ll.`
    headed: bool  # takes `Hh.` (per-head sites), or `Ee.` for expert sites
    dim: str  # the ModelSpec attribute giving its size per token (or "n_ctx"/"vocab_size")
    doc: str
    expert: bool = False  # the second index is an expert (`Ll.Ee.out`), column `expert`


SITE_KINDS: dict[str, SiteKind] = {
    k.name: k
    for k in [
        SiteKind("embed", False, False, "d_model", "token (+ learned position) embedding"),
        SiteKind("resid_pre", True, False, "d_model", "residual stream entering the layer"),
        SiteKind("resid_mid", True, False, "d_model", "after the attention residual add"),
        SiteKind("resid_post", True, False, "d_model", "residual stream leaving the layer"),
        SiteKind("attn.out", True, False, "d_model", "attention block's contribution"),
        SiteKind("mlp.out", True, False, "d_model", "MLP block's contribution"),
        SiteKind("mlp.pre", True, False, "d_mlp", "MLP neuron pre-activations"),
        SiteKind("mlp.post", True, False, "d_mlp", "MLP neuron activations"),
        SiteKind("ln1.scale", True, False, "1", "attention normalizer's 1/sigma per token"),
        SiteKind("ln2.scale", True, False, "1", "MLP normalizer's 1/sigma per token"),
        SiteKind("attn.z", True, False, "d_attn", "all heads' z, concatenated"),
        SiteKind("attn.q", True, False, "d_attn", "all heads' queries"),
        SiteKind("attn.k", True, False, "d_kv", "all kv heads' keys"),
        SiteKind("attn.v", True, False, "d_kv", "all kv heads' values"),
        SiteKind("attn.pattern", True, False, "n_ctx", "all heads' attention probabilities"),
        SiteKind("z", True, True, "d_head", "head's attention-weighted values"),
        SiteKind("q", True, True, "d_head", "head's query (before rotary)"),
        SiteKind("k", True, True, "d_head", "head's key (before rotary)"),
        SiteKind("v", True, True, "d_head", "head's value"),
        SiteKind("pattern", True, True, "n_ctx", "head's attention probabilities"),
        SiteKind("out", True, True, "d_model", "head's contribution to the residual"),
        SiteKind("router", True, False, "n_experts", "router logits, one per expert"),
        SiteKind("expert.out", True, True, "d_model", "expert's weighted contribution to "
                 "mlp.out (zero where not routed)", expert=True),
        SiteKind("expert.post", True, True, "d_mlp", "expert's neurons (zero where not routed)",
                 expert=True),
        SiteKind("shared.out", True, False, "d_model", "shared expert's contribution"),
        # Receiver inputs (edges, compiler/edges.py): the residual stream as one component
        # alone reads it; a write there reaches that component only.
        SiteKind("q.in", True, True, "d_model", "residual stream input of the head's query"),
        SiteKind("k.in", True, True, "d_model", "residual stream input of the head's key "
                 "(its kv head's)"),
        SiteKind("v.in", True, True, "d_model", "residual stream input of the head's value "
                 "(its kv head's)"),
        SiteKind("mlp.in", True, False, "d_model", "residual stream input of the MLP"),
        SiteKind("logits.in", False, False, "d_model", "final residual stream (input of the "
                 "final norm)"),
        SiteKind("ln_final.scale", False, False, "1", "final normalizer's 1/sigma per token"),
        SiteKind("logits", False, False, "vocab_size", "final logits"),
    ]
}

# TransformerLens hook names (after `blocks.N.`, or top-level) -> canonical kinds.
TL_ALIASES: dict[str, str] = {
    "hook_embed": "embed",
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn.out",
    "hook_mlp_out": "mlp.out",
    "mlp.hook_pre": "mlp.pre",
    "mlp.hook_post": "mlp.post",
    "attn.hook_z": "attn.z",
    "attn.hook_q": "attn.q",
    "attn.hook_k": "attn.k",
    "attn.hook_v": "attn.v",
    "attn.hook_pattern": "attn.pattern",
    "ln1.hook_scale": "ln1.scale",
    "ln2.hook_scale": "ln2.scale",
    "ln_final.hook_scale": "ln_final.scale",
}

_INDEX_RE = r"\*|\$[A-Za-z_]\w*|\{[^}]*\}|-?\d+(?:\.\.-?\d+)?"
_LH_RE = re.compile(rf"([LHE])({_INDEX_RE})$")
_SEG_RE = re.compile(rf"[LHE](?:{_INDEX_RE})|[A-Za-z_]\w*|{_INDEX_RE}")


@dataclass(frozen=True, slots=True)
class ParsedPath:
    """A site path split into its parts; `kind` may be unknown (check.py reports it)."""

    kind: str
    layer: Index | None
    head: Index | None


def split_segments(text: str, span: Span) -> list[tuple[str, Span]]:
    """Split a dotted path into segments with their spans (ranges like `0..3` stay whole)."""
    segs: list[tuple[str, Span]] = []
    i = 0
    while i < len(text):
        m = _SEG_RE.match(text, i)
        if not m:
            raise ParseError("E102", f"malformed site path {text!r}", span)
        col = span.col + m.start()
        segs.append((m.group(0), Span(span.line, col, span.line, span.col + m.end())))
        i = m.end()
        if i < len(text):
            if text[i] != ".":
                raise ParseError("E102", f"malformed site path {text!r}", span)
            i += 1
    return segs


def parse_index(text: str, span: Span) -> Index:
    """Parse an index pattern: `12`, `-1`, `*`, `0..3`, `{1,5,7}`, `$name`."""
    if text == "*":
        return Star(span)
    if text.startswith("$"):
        return Capture(text[1:], span)
    if text.startswith("{"):
        body = text[1:-1].strip()
        try:
            values = tuple(int(v) for v in body.split(",")) if body else ()
        except ValueError:
            raise ParseError("E103", f"index set {text} must list integers", span) from None
        if not values:
            raise ParseError("E103", "empty index set {}", span)
        return IdxSet(values, span)
    if ".." in text:
        lo, hi = text.split("..")
        return IdxRange(int(lo), int(hi), span)
    return Idx(int(text), span)


def is_site_head(segment: str) -> bool:
    """Does a path segment start a site (`L3`, `H*`, a kind, `blocks`, `hook_embed`)?"""
    return bool(_LH_RE.match(segment)) or segment in ("blocks", "embed", "logits", "ln_final",
                                                      "hook_embed")


def parse_site_path(text: str, span: Span) -> ParsedPath:
    """Parse a site path into layer/head patterns and a canonical kind (aliases resolved)."""
    segs = split_segments(text, span)
    layer: Index | None = None
    head: Index | None = None
    rest = segs
    if segs and segs[0][0] == "blocks":
        # TransformerLens name: blocks.N.<hook>
        if len(segs) < 3:
            raise ParseError("E102", f"TransformerLens name {text!r} needs blocks.N.hook_...",
                             span)
        layer = parse_index(segs[1][0], segs[1][1])
        tail = ".".join(s for s, _ in segs[2:])
        kind = TL_ALIASES.get(tail, tail)
        return ParsedPath(kind, layer, None)
    if rest:
        m = _LH_RE.match(rest[0][0])
        if m and m.group(1) == "L":
            layer = parse_index(m.group(2), _shift(rest[0][1], 1))
            rest = rest[1:]
    expert = False
    if rest:
        m = _LH_RE.match(rest[0][0])
        if m and m.group(1) in "HE" and len(rest) > 1:
            head = parse_index(m.group(2), _shift(rest[0][1], 1))
            expert = m.group(1) == "E"
            rest = rest[1:]
    tail = ".".join(s for s, _ in rest)
    if expert:  # `Ll.Ee.out` -> kind expert.out, the expert index in the head slot
        return ParsedPath(f"expert.{tail}", layer, head)
    return ParsedPath(TL_ALIASES.get(tail, tail), layer, head)


def _shift(span: Span, n: int) -> Span:
    return Span(span.line, span.col + n, span.end_line, span.end_col)
