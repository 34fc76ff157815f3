"""The AST of a `.patch` spec: frozen dataclasses, each carrying the Span it was parsed from.

The parser (parse.py) builds these; the checker (check.py) reads them against a ModelSpec;
the printer (printer.py) turns them back into canonical text; lower.py turns them into IR.
Nothing here knows about models or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from .errors import Source, Span

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


Pos = Union[PosLast, PosEach, PosIndex, PosRange, ColumnRef]

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


SiteItem = Union[SiteRef, Group]


@dataclass(frozen=True, slots=True)
class RunSite:
    """`run.SITE @ POS`: a site read from a named run (used by vector `mean(...)`)."""

    run: str
    site: SiteRef
    span: Span


# ---------------------------------------------------------------------------------------------
# Metric expressions


@dataclass(frozen=True, slots=True)
class TokString:
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class TokId:
    token_id: int
    span: Span


Tok = Union[ColumnRef, TokString, TokId]


@dataclass(frozen=True, slots=True)
class MNum:
    value: float
    span: Span


@dataclass(frozen=True, slots=True)
class MRef:
    """A reference to another `metric` by name."""

    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class MCall:
    """`logit(TOK)`, `logprob(TOK)`, `prob(TOK)` or `rank(TOK)`."""

    fn: str
    tok: Tok
    span: Span


@dataclass(frozen=True, slots=True)
class MKL:
    """`kl(RUN)`: KL(RUN's next-token distribution || this run's), same position."""

    run: str
    span: Span


@dataclass(frozen=True, slots=True)
class MLoss:
    span: Span


@dataclass(frozen=True, slots=True)
class MGenerate:
    """`generate(N) contains DATA.column`: 1 if greedy generation contains the answer."""

    n: int
    answer: ColumnRef
    span: Span


@dataclass(frozen=True, slots=True)
class MBin:
    op: str  # one of + - * /
    left: "MExpr"
    right: "MExpr"
    span: Span


@dataclass(frozen=True, slots=True)
class MNeg:
    operand: "MExpr"
    span: Span


MExpr = Union[MNum, MRef, MCall, MKL, MLoss, MGenerate, MBin, MNeg]


@dataclass(frozen=True, slots=True)
class Measure:
    """One item of a `measure` clause: an expression, optionally `normalized`."""

    expr: MExpr
    normalized: bool
    span: Span


# ---------------------------------------------------------------------------------------------
# Vector expressions and scalars


@dataclass(frozen=True, slots=True)
class Scalar:
    value: float
    span: Span


@dataclass(frozen=True, slots=True)
class ScalarSweep:
    """`{1, 4, 8}`: a sweep over scalar values (result column `scale`)."""

    values: tuple[float, ...]
    span: Span


ScalarLike = Union[Scalar, ScalarSweep]


@dataclass(frozen=True, slots=True)
class VRef:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class VLoad:
    """`load("FILE.safetensors", key="name")`."""

    path: str
    key: str
    span: Span


@dataclass(frozen=True, slots=True)
class VMean:
    """`mean(run.SITE @ POS)`: the site's mean over the run's examples."""

    of: RunSite
    span: Span


@dataclass(frozen=True, slots=True)
class VSae:
    """`sae("FILE.safetensors", feature=N)`: a decoder row."""

    path: str
    feature: int
    span: Span


@dataclass(frozen=True, slots=True)
class VNormalize:
    arg: "VExpr"
    span: Span


@dataclass(frozen=True, slots=True)
class VScale:
    factor: ScalarLike
    vec: "VExpr"
    span: Span


@dataclass(frozen=True, slots=True)
class VBin:
    op: str  # + or -
    left: "VExpr"
    right: "VExpr"
    span: Span


@dataclass(frozen=True, slots=True)
class VNeg:
    operand: "VExpr"
    span: Span


VExpr = Union[VRef, VLoad, VMean, VSae, VNormalize, VScale, VBin, VNeg]

# ---------------------------------------------------------------------------------------------
# Keyword arguments (noise(...), ig(steps=N), relp(ah=true))


@dataclass(frozen=True, slots=True)
class StdOf:
    """`3*std(SITE)`: a multiple of the standard deviation of a site's activations."""

    factor: float
    site: SiteRef
    span: Span


@dataclass(frozen=True, slots=True)
class KwArg:
    name: str
    value: Union[float, int, str, bool, StdOf]
    span: Span


@dataclass(frozen=True, slots=True)
class Method:
    """An estimator of `attribute`/`compare`: `atp`, `relp`, `relp(ah=true)`, `ig(steps=32)`."""

    name: str
    kwargs: tuple[KwArg, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Ablation:
    """How `ablate` replaces a value: `zero`, `mean(RUN)` or `resample(RUN)`."""

    kind: str
    run: str | None
    span: Span


# ---------------------------------------------------------------------------------------------
# Interventions baked into a `run ... with ...`


@dataclass(frozen=True, slots=True)
class INoise:
    site: SiteRef
    kwargs: tuple[KwArg, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class IAblate:
    sites: tuple[SiteItem, ...]
    how: Ablation
    span: Span


@dataclass(frozen=True, slots=True)
class ISteer:
    sites: tuple[SiteItem, ...]
    by: VExpr
    span: Span


@dataclass(frozen=True, slots=True)
class IScale:
    sites: tuple[SiteItem, ...]
    by: Scalar
    span: Span


@dataclass(frozen=True, slots=True)
class ISwap:
    sites: tuple[SiteItem, ...]
    source: str
    span: Span


@dataclass(frozen=True, slots=True)
class IFreezeLn:
    source: str
    span: Span


Intervention = Union[INoise, IAblate, ISteer, IScale, ISwap, IFreezeLn]

# ---------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True, slots=True)
class Name:
    """An identifier as written, with its span (names are the things users misspell)."""

    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class ModelDecl:
    model_id: str
    revision: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class SetDecl:
    name: Name
    value: Union[str, int, float, bool]
    span: Span


@dataclass(frozen=True, slots=True)
class DataDecl:
    """`data NAME = "FILE"` (path set) or `data NAME = [ {...}, ... ]` (rows set).

    Rows are plain dicts from JSON; treat them as read-only.
    """

    name: Name
    path: str | None
    rows: tuple[dict[str, Any], ...] | None
    span: Span


@dataclass(frozen=True, slots=True)
class TextLiteral:
    """A string or a list of strings given inline as a run's prompts."""

    texts: tuple[str, ...]
    is_list: bool
    span: Span


TextSource = Union[ColumnRef, TextLiteral]


@dataclass(frozen=True, slots=True)
class RunDecl:
    name: Name
    text: TextSource
    interventions: tuple[Intervention, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class MetricDecl:
    name: Name
    expr: MExpr
    pos: Pos | None
    span: Span


@dataclass(frozen=True, slots=True)
class VectorDecl:
    name: Name
    expr: VExpr
    span: Span


# ---------------------------------------------------------------------------------------------
# Operations: each yields one result table.


@dataclass(frozen=True, slots=True)
class Cond:
    """One `where` condition: `$j > $i`, `$l >= 2`."""

    left: str
    op: str
    right: Union[str, int]  # a capture name or an int
    span: Span


@dataclass(frozen=True, slots=True)
class Clauses:
    """The indented clauses every operation may carry."""

    measures: tuple[Measure, ...] = ()
    name: Name | None = None
    where: tuple[Cond, ...] = ()


@dataclass(frozen=True, slots=True)
class Swap:
    sites: tuple[SiteItem, ...]
    source: Name
    target: Name
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Ablate:
    sites: tuple[SiteItem, ...]
    target: Name
    how: Ablation
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Backpatch:
    """`backpatch SRC -> DST in B [from A]`; a trailing `@ POS` on DST also applies to SRC
    when SRC has none (the parser fills that in)."""

    src: SiteRef
    dst: SiteRef
    target: Name
    source: Name | None
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Steer:
    sites: tuple[SiteItem, ...]
    target: Name
    by: VExpr
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Scale:
    sites: tuple[SiteItem, ...]
    target: Name
    by: ScalarLike
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Attribute:
    sites: tuple[SiteItem, ...]
    source: Name
    target: Name
    method: Method
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Compare:
    methods: tuple[Method, ...]
    sites: tuple[SiteItem, ...]
    source: Name
    target: Name
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Trace:
    sites: tuple[SiteItem, ...]
    source: Name
    target: Name
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Dla:
    sites: tuple[SiteItem, ...]
    target: Name
    clauses: Clauses
    span: Span


Operation = Union[Swap, Ablate, Backpatch, Steer, Scale, Attribute, Compare, Trace, Dla]
Statement = Union[ModelDecl, SetDecl, DataDecl, RunDecl, MetricDecl, VectorDecl, Operation]
OPERATIONS = (Swap, Ablate, Backpatch, Steer, Scale, Attribute, Compare, Trace, Dla)


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed spec: its statements in order and the source they came from."""

    statements: tuple[Statement, ...]
    source: Source = field(compare=False)

    def operations(self) -> list[Operation]:
        return [s for s in self.statements if isinstance(s, OPERATIONS)]


def op_keyword(op: Operation) -> str:
    """The statement keyword of an operation (`swap`, `ablate`, ...)."""
    return type(op).__name__.lower()


def table_name(op: Operation) -> str:
    """The result table's name: `as NAME`, else `op_LINE`."""
    return op.clauses.name.value if op.clauses.name else f"op_{op.span.line}"
