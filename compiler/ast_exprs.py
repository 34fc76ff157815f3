"""AST expressions: metric expressions and measures, vector expressions and scalars (see
ast.py, which re-exports every name here; import them from there)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Union

from .ast_sites import ColumnRef, RunSite
from .errors import Span

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
class MText:
    """`text(N)`: the greedy continuation of N tokens, a string per example."""

    n: int
    span: Span


@dataclass(frozen=True, slots=True)
class MSeqLogProb:
    """`seqlogprob(TOK)`: summed log-probability of every token of TOK, teacher-forced
    after the measured position."""

    tok: "Tok"
    span: Span


# Metrics that run the model past the prompt (a continuation pass after the prompt's).
GENERATING = (MGenerate, MText, MSeqLogProb)
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True, slots=True)
class MBin:
    op: str  # one of + - * /, or a comparison (== != < <= > >=: 1 or 0 per example)
    left: "MExpr"
    right: "MExpr"
    span: Span


@dataclass(frozen=True, slots=True)
class MNeg:
    operand: "MExpr"
    span: Span


MExpr = Union[MNum, MRef, MCall, MKL, MLoss, MGenerate, MText, MSeqLogProb, MBin, MNeg]


def metric_nodes(expr: MExpr) -> Iterator[MExpr]:
    """Every node of a metric expression, depth first (not following metric references)."""
    stack = [expr]  # (a loop, not nested generators: passes ask this of every metric)
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, MBin):
            stack += (e.right, e.left)  # the left operand first
        elif isinstance(e, MNeg):
            stack.append(e.operand)


@dataclass(frozen=True, slots=True)
class Measure:
    """One item of a `measure` clause: `[NAME =] EXPR [normalized [between R1 and R2]]`.
    `between` holds the names (R1, R2) of the runs mapped to 0 and 1; `name` names the
    column of an inline expression."""

    expr: MExpr
    normalized: bool
    span: Span
    # Additions of the language's version 1; dumps leave them out while they are None.
    between: "tuple[Any, Any] | None" = field(default=None, metadata={"optional": True})
    name: "Any | None" = field(default=None, metadata={"optional": True})  # Name


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

