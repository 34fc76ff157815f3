"""AST declarations: what a spec declares before its operations (the model, `set`
options, data, runs with the interventions baked into them, metrics, vectors), and the
keyword arguments and ablation kinds that interventions and operations share (see ast.py,
which re-exports every name here; import them from there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from .ast_exprs import MExpr, Scalar, VExpr
from .ast_sites import ColumnRef, Pos, SiteItem, SiteRef
from .errors import Span

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
