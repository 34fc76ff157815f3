"""Metric and vector expressions for lower.py: inlining named references and splitting sweeps.

Metric nodes carry their expression with every `MRef` replaced by the referenced metric's
expression, and Vector nodes carry theirs with every `VRef` inlined, so the runtime
evaluates one self-contained expression per node. Pure AST rewriting: no graph, no torch.
"""

from __future__ import annotations

import dataclasses

from . import ast as A
from . import printer
from .errors import PlanError


def inline_metric(
    expr: A.MExpr, metrics: dict[str, A.MetricDecl], stack: tuple[str, ...] = ()
) -> A.MExpr:
    """`expr` with every metric reference replaced by that metric's (inlined) expression."""
    if isinstance(expr, A.MRef):
        if expr.name in stack:
            raise PlanError("E513", f"metric {expr.name} refers to itself", expr.span)
        decl = metrics.get(expr.name)
        if decl is None:
            raise PlanError("E514", f"unknown metric {expr.name}", expr.span)
        return inline_metric(decl.expr, metrics, stack + (expr.name,))
    if isinstance(expr, A.MBin):
        return dataclasses.replace(expr, left=inline_metric(expr.left, metrics, stack),
                                   right=inline_metric(expr.right, metrics, stack))
    if isinstance(expr, A.MNeg):
        return dataclasses.replace(expr, operand=inline_metric(expr.operand, metrics, stack))
    return expr


def _top_refs(expr: A.MExpr) -> list[A.MRef]:
    """The metric references of an inline expression (not looking inside what they name)."""
    if isinstance(expr, A.MRef):
        return [expr]
    if isinstance(expr, A.MBin):
        return _top_refs(expr.left) + _top_refs(expr.right)
    if isinstance(expr, A.MNeg):
        return _top_refs(expr.operand)
    return []


def metric_parts(
    expr: A.MExpr, metrics: dict[str, A.MetricDecl]
) -> tuple[str, A.MExpr, A.Pos | None]:
    """(column name, inlined expression, position) of a measured expression.

    A bare reference is named after the metric and evaluated at the metric's `@ POS`; an
    inline expression is named by its printed text and evaluated where the metrics it
    references are (they must agree; default `last`).
    """
    if isinstance(expr, A.MRef):
        decl = metrics.get(expr.name)
        pos = decl.pos if decl is not None else None
        return expr.name, inline_metric(expr, metrics), pos
    seen: dict[str, A.Pos | None] = {}
    for ref in _top_refs(expr):
        decl = metrics.get(ref.name)
        if decl is not None and decl.pos is not None:
            seen.setdefault(printer.pos(decl.pos), decl.pos)
    if len(seen) > 1:
        raise PlanError("E512", "this expression combines metrics evaluated at different "
                        f"positions ({', '.join(seen)})", expr.span,
                        hint="declare one metric with a single `@ POS` and measure it")
    pos = next(iter(seen.values())) if seen else None
    return printer.mexpr(expr), inline_metric(expr, metrics), pos


def kl_runs(expr: A.MExpr) -> list[str]:
    """The runs that `kl(RUN)` terms of an (inlined) expression compare against, in order."""
    if isinstance(expr, A.MKL):
        return [expr.run]
    if isinstance(expr, A.MBin):
        return list(dict.fromkeys(kl_runs(expr.left) + kl_runs(expr.right)))
    if isinstance(expr, A.MNeg):
        return kl_runs(expr.operand)
    return []


def inline_vector(
    expr: A.VExpr, vectors: dict[str, A.VectorDecl], stack: tuple[str, ...] = ()
) -> A.VExpr:
    """`expr` with every vector reference replaced by that vector's (inlined) expression."""
    if isinstance(expr, A.VRef):
        if expr.name in stack:
            raise PlanError("E513", f"vector {expr.name} refers to itself", expr.span)
        decl = vectors.get(expr.name)
        if decl is None:
            raise PlanError("E514", f"unknown vector {expr.name}", expr.span)
        return inline_vector(decl.expr, vectors, stack + (expr.name,))
    if isinstance(expr, A.VBin):
        return dataclasses.replace(expr, left=inline_vector(expr.left, vectors, stack),
                                   right=inline_vector(expr.right, vectors, stack))
    if isinstance(expr, A.VScale):
        return dataclasses.replace(expr, vec=inline_vector(expr.vec, vectors, stack))
    if isinstance(expr, A.VNeg):
        return dataclasses.replace(expr, operand=inline_vector(expr.operand, vectors, stack))
    if isinstance(expr, A.VNormalize):
        return dataclasses.replace(expr, arg=inline_vector(expr.arg, vectors, stack))
    return expr


def vmeans(expr: A.VExpr) -> list[A.VMean]:
    """The `mean(RUN.SITE @ POS)` terms of an expression, left to right."""
    if isinstance(expr, A.VMean):
        return [expr]
    if isinstance(expr, A.VBin):
        return vmeans(expr.left) + vmeans(expr.right)
    if isinstance(expr, A.VScale):
        return vmeans(expr.vec)
    if isinstance(expr, A.VNeg):
        return vmeans(expr.operand)
    if isinstance(expr, A.VNormalize):
        return vmeans(expr.arg)
    return []


def _sweeps(expr: A.VExpr) -> list[A.ScalarSweep]:
    if isinstance(expr, A.VScale):
        own = [expr.factor] if isinstance(expr.factor, A.ScalarSweep) else []
        return own + _sweeps(expr.vec)
    if isinstance(expr, A.VBin):
        return _sweeps(expr.left) + _sweeps(expr.right)
    if isinstance(expr, A.VNeg):
        return _sweeps(expr.operand)
    if isinstance(expr, A.VNormalize):
        return _sweeps(expr.arg)
    return []


def _substitute(expr: A.VExpr, value: float) -> A.VExpr:
    """`expr` with its one scalar sweep replaced by `value`."""
    if isinstance(expr, A.VScale):
        factor = expr.factor
        if isinstance(factor, A.ScalarSweep):
            factor = A.Scalar(value, factor.span)
        return dataclasses.replace(expr, factor=factor, vec=_substitute(expr.vec, value))
    if isinstance(expr, A.VBin):
        return dataclasses.replace(expr, left=_substitute(expr.left, value),
                                   right=_substitute(expr.right, value))
    if isinstance(expr, A.VNeg):
        return dataclasses.replace(expr, operand=_substitute(expr.operand, value))
    if isinstance(expr, A.VNormalize):
        return dataclasses.replace(expr, arg=_substitute(expr.arg, value))
    return expr


def split_sweep(expr: A.VExpr) -> list[tuple[float | None, float, A.VExpr]]:
    """The steering variants of `steer ... by EXPR`: (value of the `scale` column or None,
    the Write's scale, the vector expression). `k * v` and `{a, b} * v` keep `v` as the
    vector (shared by every value); a sweep nested deeper is substituted into the vector."""
    sweeps = _sweeps(expr)
    if len(sweeps) > 1:
        raise PlanError("E515", "a steering expression may sweep one scalar list",
                        sweeps[1].span)
    if isinstance(expr, A.VScale):
        if isinstance(expr.factor, A.ScalarSweep):
            if _sweeps(expr.vec):
                raise PlanError("E515", "a steering expression may sweep one scalar list",
                                expr.span)
            return [(v, v, expr.vec) for v in expr.factor.values]
        if not sweeps:
            return [(None, expr.factor.value, expr.vec)]
    if sweeps:
        return [(v, 1.0, _substitute(expr, v)) for v in sweeps[0].values]
    return [(None, 1.0, expr)]
