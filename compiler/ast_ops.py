"""AST operations: the statements that each yield one result table (swap, ablate, ...,
read, lens, measure, circuit, evaluate), their indented clauses, and the table name and
keyword of each (see ast.py, which re-exports every name here; import them from there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .ast_decls import Ablation, Method, Name
from .ast_exprs import Measure, ScalarLike, VExpr
from .ast_sites import SiteItem, SiteRef
from .errors import Span

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
OPERATIONS = (Swap, Ablate, Backpatch, Steer, Scale, Attribute, Compare, Trace, Dla,
              ReadSites, Lens, MeasureRun, Evaluate)
# Statements that only look at a run (no write): §11 of the language.
OBSERVATIONS = (ReadSites, Lens, MeasureRun)
_KEYWORD = {ReadSites: "read", MeasureRun: "measure"}


def op_keyword(op: Operation) -> str:
    """The statement keyword of an operation (`swap`, `ablate`, ...)."""
    return _KEYWORD.get(type(op)) or type(op).__name__.lower()


def table_name(op: Operation) -> str:
    """The result table's name: `as NAME`, else `op_LINE`."""
    return op.clauses.name.value if op.clauses.name else f"op_{op.span.line}"
