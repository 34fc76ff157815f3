"""The AST of a `.patch` spec: frozen dataclasses, each carrying the Span it was parsed from.

This module is the AST's one namespace (`from patchc.compiler import ast as A`): sites and
positions live in ast_sites.py and expressions in ast_exprs.py, and are re-exported here;
declarations, interventions and operations are defined below.

The parser (parse.py) builds these; the checker (check.py) reads them against a ModelSpec;
the printer (printer.py) turns them back into canonical text; lower.py turns them into IR.
Nothing here knows about models or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from .ast_sites import (  # noqa: F401 - re-exported: the AST is one namespace
    Idx,
    Star,
    IdxRange,
    IdxSet,
    Capture,
    Slice,
    Index,
    FeatureSel,
    PosLast,
    PosEach,
    PosIndex,
    PosRange,
    ColumnRef,
    PosSet,
    PosSpan,
    Pos,
    SiteRef,
    Group,
    Every,
    EdgeEnd,
    Edge,
    EdgeGroup,
    SiteItem,
    RunSite,
    DictDecl,
)
from .ast_exprs import (  # noqa: F401 - re-exported: the AST is one namespace
    TokString,
    TokId,
    Tok,
    MNum,
    MRef,
    MCall,
    MKL,
    MLoss,
    MGenerate,
    MText,
    MSeqLogProb,
    GENERATING,
    COMPARISONS,
    MBin,
    MNeg,
    MExpr,
    metric_nodes,
    Measure,
    Scalar,
    ScalarSweep,
    ScalarLike,
    VRef,
    VLoad,
    VMean,
    VSae,
    VNormalize,
    VScale,
    VBin,
    VNeg,
    VExpr,
)
from .errors import Source, Span

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


@dataclass(frozen=True, slots=True)
class ReadSites:
    """`read SITES in RUN`: cache the sites' values (results.activations(NAME))."""

    sites: tuple[SiteItem, ...]
    target: Name
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class Lens:
    """`lens SITES in RUN measure M`: decode each residual-shaped site through the final
    norm and unembedding, and evaluate the metrics on those logits."""

    sites: tuple[SiteItem, ...]
    target: Name
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class MeasureRun:
    """`measure M, M2 in RUN`: the metrics on a run as it is (a one-row table); the
    metrics are in `clauses.measures`."""

    target: Name
    clauses: Clauses
    span: Span


@dataclass(frozen=True, slots=True)
class CircuitSize:
    """One K of `top K`: a count (`20`) or a percentage of the table's rows (`5%`)."""

    value: float
    percent: bool
    span: Span


@dataclass(frozen=True, slots=True)
class CircuitDecl:
    """`circuit NAME = top K of TABLE`: the K rows of a node or edge table with the largest
    effect; several sizes (`{5, 10, 20}`) make a sweep of circuits (docs/circuits.md)."""

    name: Name
    sizes: tuple[CircuitSize, ...]
    table: Name
    is_list: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Evaluate:
    """`evaluate CIRCUIT in B with ablate(A) | mean(A)`: B with everything outside the
    circuit patched from A (`ablate`) or A's mean (`mean`); faithfulness per size."""

    circuit: Name
    target: Name
    how: Ablation  # kind "ablate" or "mean", run A
    clauses: Clauses
    span: Span


Operation = Union[Swap, Ablate, Backpatch, Steer, Scale, Attribute, Compare, Trace, Dla,
                  ReadSites, Lens, MeasureRun, Evaluate]
Statement = Union[ModelDecl, SetDecl, DataDecl, RunDecl, MetricDecl, VectorDecl, DictDecl,
                  CircuitDecl, Operation]
OPERATIONS = (Swap, Ablate, Backpatch, Steer, Scale, Attribute, Compare, Trace, Dla,
              ReadSites, Lens, MeasureRun, Evaluate)
# Statements that only look at a run (no write): §11 of the language.
OBSERVATIONS = (ReadSites, Lens, MeasureRun)
_KEYWORD = {ReadSites: "read", MeasureRun: "measure"}


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed spec: its statements in order and the source they came from."""

    statements: tuple[Statement, ...]
    source: Source = field(compare=False)

    def operations(self) -> list[Operation]:
        return [s for s in self.statements if isinstance(s, OPERATIONS)]


def op_keyword(op: Operation) -> str:
    """The statement keyword of an operation (`swap`, `ablate`, ...)."""
    return _KEYWORD.get(type(op)) or type(op).__name__.lower()


def table_name(op: Operation) -> str:
    """The result table's name: `as NAME`, else `op_LINE`."""
    return op.clauses.name.value if op.clauses.name else f"op_{op.span.line}"
