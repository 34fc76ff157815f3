"""Which metrics are linear in the logits, and their terms: what `dla` can split.

Direct logit attribution divides a metric among sites only when the metric is a linear
function of the logits: `logit(...)` terms, their sums and differences, and multiples by
numbers (a named metric counts as its definition). Anything else (prob, logprob, rank, kl,
loss, generate, a product or quotient of logit terms) has no such split. `check` reports
E465 for it (compiler/check_ops.py), and runtime/dla.py uses the terms.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import ast as A

Terms = list[tuple[float, A.Tok]]


class NonLinear(Exception):
    """The metric is not linear in the logits; the message says which part is not."""


def linear_terms(expr: A.MExpr, metrics: Mapping[str, A.MetricDecl] | None = None
                 ) -> tuple[Terms, float]:
    """(coefficient, token) of each logit term, and the constant. `metrics` resolves named
    metrics (a lowered metric has them inlined already)."""
    if isinstance(expr, A.MNum):
        return [], float(expr.value)
    if isinstance(expr, A.MRef) and metrics is not None and expr.name in metrics:
        return linear_terms(metrics[expr.name].expr, metrics)
    if isinstance(expr, A.MNeg):
        terms, c = linear_terms(expr.operand, metrics)
        return [(-k, t) for k, t in terms], -c
    if isinstance(expr, A.MCall):
        if expr.fn != "logit":
            raise NonLinear(f"{expr.fn}(...)")
        return [(1.0, expr.tok)], 0.0
    if isinstance(expr, A.MBin) and expr.op in A.COMPARISONS:
        raise NonLinear(f"a comparison ({expr.op})")
    if isinstance(expr, A.MBin):
        (lt, lc), (rt, rc) = linear_terms(expr.left, metrics), linear_terms(expr.right, metrics)
        if expr.op in "+-":
            sign = 1.0 if expr.op == "+" else -1.0
            return lt + [(sign * k, t) for k, t in rt], lc + sign * rc
        if expr.op == "*" and not (lt and rt):
            factor, terms = (lc, rt) if not lt else (rc, lt)
            return [(factor * k, t) for k, t in terms], lc * rc
        if expr.op == "/" and not rt:
            return [(k / rc, t) for k, t in lt], lc / rc
        raise NonLinear(f"a {'product' if expr.op == '*' else 'quotient'} of logit terms")
    name = {A.MKL: "kl(...)", A.MLoss: "loss", A.MGenerate: "generate(...)",
            A.MText: "text(...)", A.MSeqLogProb: "seqlogprob(...)"}.get(type(expr))
    raise NonLinear(name or type(expr).__name__)


def nonlinear_message(what: str) -> str:
    return (f"dla splits a metric that is linear in the logits (logit(...) terms, their "
            f"sums, differences and multiples by numbers); {what} is not")
