"""The AST of a `.patch` spec: frozen dataclasses, each carrying the Span it was parsed from.

This module is the AST's one namespace (`from patchc.compiler import ast as A`): sites and
positions live in ast_sites.py, expressions in ast_exprs.py, declarations (with the
interventions baked into runs) in ast_decls.py and operations in ast_ops.py, all re-exported
here; a whole spec (`Spec`, a tuple of statements) is defined below.

The parser (parse.py) builds these; the checker (check.py) reads them against a ModelSpec;
the printer (printer.py) turns them back into canonical text; lower.py turns them into IR.
Nothing here knows about models or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

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
from .ast_decls import (  # noqa: F401 - re-exported: the AST is one namespace
    StdOf,
    KwArg,
    Method,
    Ablation,
    INoise,
    IAblate,
    ISteer,
    IScale,
    ISwap,
    IFreezeLn,
    Name,
    ModelDecl,
    SetDecl,
    DataDecl,
    TextLiteral,
    RunDecl,
    MetricDecl,
    VectorDecl,
    Intervention,
    TextSource,
)
from .ast_ops import (  # noqa: F401 - re-exported: the AST is one namespace
    Cond,
    Clauses,
    Swap,
    Ablate,
    Backpatch,
    Steer,
    Scale,
    Attribute,
    Compare,
    Trace,
    Dla,
    ReadSites,
    Lens,
    MeasureRun,
    CircuitSize,
    CircuitDecl,
    Evaluate,
    Operation,
    OPERATIONS,
    OBSERVATIONS,
    op_keyword,
    table_name,
)
from .errors import Source

# Anything a spec line may be: a declaration or an operation.
Statement = Union[ModelDecl, SetDecl, DataDecl, RunDecl, MetricDecl, VectorDecl, DictDecl,
                  CircuitDecl,
                  Operation]


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed spec: its statements in order and the source they came from."""

    statements: tuple[Statement, ...]
    source: Source = field(compare=False)

    def operations(self) -> list[Operation]:
        return [s for s in self.statements if isinstance(s, OPERATIONS)]
