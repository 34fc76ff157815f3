"""AST leaves: index patterns, positions and site references (see ast.py, which
re-exports every name here; import them from there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from .errors import Span

# ---------------------------------------------------------------------------------------------
# Index patterns: the `12`, `*`, `0..3`, `{1,5,7}`, `-1`, `$l` of `L12`, `H*`, `[0:512]`, ...


@dataclass(frozen=True, slots=True)
class Idx:
    """One index; negative counts from the end (`L-1` is the last layer)."""

    value: int
    span: Span


@dataclass(frozen=True, slots=True)
class Star:
    """`*`: every index (a sweep, unless inside `all(...)`)."""

    span: Span


@dataclass(frozen=True, slots=True)
class IdxRange:
    """`a..b`, inclusive on both ends."""

    lo: int
    hi: int
    span: Span


@dataclass(frozen=True, slots=True)
class IdxSet:
    """`{1,5,7}`."""

    values: tuple[int, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Capture:
    """`$name`: every index, bound to a result column called `name`."""

    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class Slice:
    """`[a:b]` on features: a half-open slice taken jointly (not a sweep)."""

    lo: int
    hi: int
    span: Span


Index = Union[Idx, Star, IdxRange, IdxSet, Capture]
FeatureSel = Union[Idx, Star, IdxRange, IdxSet, Capture, Slice]

# ---------------------------------------------------------------------------------------------
# Positions: what follows `@`.


@dataclass(frozen=True, slots=True)
class PosLast:
    """`@ last` (also written `@ -1`, which parses as PosIndex(-1))."""

    span: Span


@dataclass(frozen=True, slots=True)
class PosEach:
    """`@ each`: sweep over token positions (result column `pos`)."""

    span: Span


@dataclass(frozen=True, slots=True)
class PosIndex:
    value: int
    span: Span


@dataclass(frozen=True, slots=True)
class PosRange:
    """`@ a..b`, inclusive; a joint intervention on those positions."""

    lo: int
    hi: int
    span: Span


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """`data.column`: a column of a `data` table (also used for per-example positions)."""

    data: str
    column: str
    span: Span


@dataclass(frozen=True, slots=True)
class PosSet:
    """`@ {1, 3, 9}`: that set of positions, jointly (like a range)."""

    values: tuple[int, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class PosSpan:
    """`@ DATA.a..DATA.b`: a per-example inclusive range from two int columns."""

    lo: ColumnRef
    hi: ColumnRef
    span: Span


Pos = Union[PosLast, PosEach, PosIndex, PosRange, ColumnRef, PosSet, PosSpan]

# ---------------------------------------------------------------------------------------------
# Sites


@dataclass(frozen=True, slots=True)
class SiteRef:
    """One site pattern as written, e.g. `L$l.H*.z @ last` or `L3.mlp.post[0:512][v]`.

    `kind` is the canonical site kind after alias resolution (`resid_pre`, `mlp.post`, `z`,
    `attn.z`, `embed`, ...); whether the model has it is decided by check.py. `text` keeps the
    path as the user wrote it, for messages and the printer.
    """

    text: str
    kind: str
    layer: Index | None
    head: Index | None
    features: FeatureSel | None
    subspace: tuple[str, ...]
    pos: Pos | None
    span: Span


@dataclass(frozen=True, slots=True)
class Group:
    """`all(SITE, SITE, ...)`: one joint intervention over every match of every member."""

    members: tuple[SiteRef, ...]
    pos: Pos | None
    span: Span


@dataclass(frozen=True, slots=True)
class Every:
    """`*` alone at one end of an edge: every sender (at the finest grain) or every receiver.
    A receiver `*` takes `@ POS` like a named one (`* -> * @ last`)."""

    span: Span
    pos: Pos | None = None


EdgeEnd = Union[SiteRef, Every]


@dataclass(frozen=True, slots=True)
class Edge:
    """`SENDER -> RECEIVER`: the sender's output as it reaches the receiver's input through
    the residual stream (compiler/edges.py resolves it). Positions (`@ POS`) are written on
    the receiver and apply to both ends."""

    sender: EdgeEnd
    receiver: EdgeEnd
    span: Span

    @property
    def pos(self) -> Pos | None:
        return self.receiver.pos


@dataclass(frozen=True, slots=True)
class EdgeGroup:
    """`all(E1, E2, ...)` of edges: every edge the members match, patched jointly."""

    members: tuple[Edge, ...]
    pos: Pos | None
    span: Span


SiteItem = Union[SiteRef, Group, Edge, EdgeGroup]


@dataclass(frozen=True, slots=True)
class DictDecl:
    """`sae NAME = "PATH" at SITE` or `transcoder NAME = "PATH" at Ll.mlp`: a dictionary (an
    SAELens folder) attached to a site; its latents become sites `NAME[i]` and `NAME.err`.
    Without `at` (site None) the site is the one cfg.json's hook_name names. `name` is an
    ast.Name (typed loosely here: ast_decls.py defines Name and imports this module)."""

    kind: str  # "sae" or "transcoder"
    name: "Any"
    path: str
    site: SiteRef | None
    span: Span


@dataclass(frozen=True, slots=True)
class RunSite:
    """`run.SITE @ POS`: a site read from a named run (used by vector `mean(...)`)."""

    run: str
    site: SiteRef
    span: Span


