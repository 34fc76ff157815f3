"""Metric evaluation: an AST metric expression -> one value per example (docs/language.md §7).

Everything is computed in float32 from the run's logits at the metric's position, whatever
dtype the model runs in, so that bf16 runs compare against fp32 ones on the same scale.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import torch

from patchc.compiler import ast as A
from patchc.compiler.errors import RuntimeInterventionError

from .inputs import Batch


@dataclass
class MetricContext:
    """What a metric may look at, for one forward."""

    logits: torch.Tensor  # [n, V] at the metric's position, float32
    full_logits: torch.Tensor | None  # [n, T, V] (for loss), float32
    batch: Batch
    token_ids: Callable[[A.Tok], torch.Tensor]  # per-example token ids [n]
    reference: torch.Tensor | None = None  # [n, V] logits of kl(RUN)'s run
    # id(MGenerate) or id(MSeqLogProb) -> [n]: computed by a continuation of the forward
    contains: dict[int, torch.Tensor] = field(default_factory=dict)


_OPS: dict[str, Callable] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge}


def binary(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Arithmetic, or a comparison as 1.0/0.0 (NaN stays NaN: an invalid row stays out).
    Only `op` is computed (a table of every result computed them all)."""
    if op in A.COMPARISONS:
        hit = _OPS[op](a, b)
        return torch.where(torch.isnan(a) | torch.isnan(b), torch.nan, hit.float())
    return _OPS[op](a, b)


def evaluate(expr: A.MExpr, ctx: MetricContext) -> torch.Tensor:
    """Per-example values [n] (float32)."""
    if isinstance(expr, A.MNum):
        return torch.full((ctx.logits.shape[0],), float(expr.value), device=ctx.logits.device)
    if isinstance(expr, A.MBin):
        return binary(expr.op, evaluate(expr.left, ctx), evaluate(expr.right, ctx))
    if isinstance(expr, A.MNeg):
        return -evaluate(expr.operand, ctx)
    if isinstance(expr, A.MCall):
        ids = ctx.token_ids(expr.tok).to(ctx.logits.device)
        logits = ctx.logits
        picked = logits.gather(1, ids[:, None])[:, 0]
        if expr.fn == "logit":
            return picked
        if expr.fn == "logprob":
            return torch.log_softmax(logits, -1).gather(1, ids[:, None])[:, 0]
        if expr.fn == "prob":
            return torch.softmax(logits, -1).gather(1, ids[:, None])[:, 0]
        if expr.fn == "rank":
            # 0 is the top token; ties count against the token (a conservative rank).
            return (logits > picked[:, None]).sum(-1).float()
        raise AssertionError(expr.fn)
    if isinstance(expr, A.MKL):
        if ctx.reference is None:
            raise RuntimeInterventionError("E430", f"kl({expr.run}) has no reference logits")
        p_log = torch.log_softmax(ctx.reference.to(ctx.logits.device), -1)
        q_log = torch.log_softmax(ctx.logits, -1)
        return (p_log.exp() * (p_log - q_log)).sum(-1)
    if isinstance(expr, A.MLoss):
        return next_token_loss(ctx)
    if isinstance(expr, (A.MGenerate, A.MSeqLogProb)):
        if id(expr) not in ctx.contains:
            raise RuntimeInterventionError("E431", f"{type(expr).__name__} was not run for "
                                           "this metric")
        return ctx.contains[id(expr)].to(ctx.logits.device)  # scored on the CPU
    if isinstance(expr, A.MRef):
        raise RuntimeInterventionError("E432", f"metric {expr.name} was not inlined")
    raise AssertionError(expr)


def next_token_loss(ctx: MetricContext) -> torch.Tensor:
    """Mean next-token cross-entropy over each row's real tokens."""
    if ctx.full_logits is None:
        raise RuntimeInterventionError("E433", "loss needs the logits of every position")
    logits = ctx.full_logits[:, :-1]
    target = ctx.batch.input_ids[:, 1:].to(logits.device)
    mask = ctx.batch.attention_mask[:, 1:].to(logits.device) \
        * ctx.batch.attention_mask[:, :-1].to(logits.device)
    nll = -torch.log_softmax(logits, -1).gather(2, target[..., None])[..., 0]
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1)

