"""What a forward leaves for the nodes after it (ForwardOutput), and a Metric node's
per-example values computed from it: from the forward's logits (or a lens of a Read), with kl
references, noise samples averaged, rows without the position set to NaN, and the terms
computed while the forward ran (generate(...), seqlogprob(...), loss)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from patchc.compiler import ast as A
from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.ir import Forward, IRGraph, Metric, Positions, Read

from . import metrics as M
from .inputs import Batch, position_valid
from .reading import lens_logits

if TYPE_CHECKING:
    from .context import RunContext


@dataclass
class ForwardOutput:
    """What later nodes need from one forward: logits at metric positions, per-example
    loss and generation results."""

    batch: Batch
    samples: int
    logits: dict[Positions, torch.Tensor] = field(default_factory=dict)  # [N, V] float32
    loss: torch.Tensor | None = None
    valid: torch.Tensor | None = None  # [N] bool: rows that have every written position
    contains: dict[tuple[int, str, str], torch.Tensor] = field(default_factory=dict)
    texts: dict[int, list[str]] = field(default_factory=dict)  # text(N): N -> [N rows]
    seqlogprob: dict[str, torch.Tensor] = field(default_factory=dict)  # printed TOK -> [N]


def metric_values(interp: "RunContext", ir: IRGraph, node: Metric) -> Any:
    """Per-example values [n] (noise samples averaged); for text(N), a list of n
    strings (each example's first noise sample; None where the row is invalid)."""
    out: ForwardOutput = interp.values[node.forward]
    fwd: Forward = ir.node(node.forward)  # type: ignore[assignment]
    if isinstance(node.expr, A.MText):
        texts = out.texts[node.expr.n][::out.samples]
        valid = out.valid[::out.samples] if out.valid is not None else None
        return [t if valid is None or bool(valid[i]) else None
                for i, t in enumerate(texts)]
    logits = out.logits.get(node.pos)
    valid_rows = out.valid
    if node.lens is not None:
        rv = interp.values[node.lens]
        read: Read = ir.node(node.lens)  # type: ignore[assignment]
        logits = lens_logits(interp.adapter, rv, read.site)
        have = position_valid(rv.batch, rv.pos)
        valid_rows = have if valid_rows is None else valid_rows & have
    ref = None
    if node.reference is not None:
        ref_out: ForwardOutput = interp.values[node.reference]
        ref = ref_out.logits.get(node.pos)
        if ref is None:
            raise RuntimeInterventionError("E434", "kl reference has no logits there")
        if ref.shape[0] < out.batch.n:
            ref = ref.repeat_interleave(out.batch.n // ref.shape[0], 0)
    if ref is not None and ref.shape[0] > out.batch.n:
        # kl(RUN) against a run with noise samples, from one without: the KL from each
        # sample's distribution, averaged over the samples.
        if out.samples != 1 or ref.shape[0] % out.batch.n:
            raise RuntimeInterventionError(
                "E435", f"kl: cannot align {ref.shape[0]} reference rows with "
                f"{out.batch.n}")
        return _sampled_reference(interp, node, fwd, out, ref)
    contains = _continued(node.expr, out)
    ctx = M.MetricContext(logits, None, out.batch,
                          interp.token_ids(fwd.run, out.batch.n), ref, contains)
    if out.loss is not None:
        ctx.full_logits = None
    values = _evaluate_with_loss(node.expr, ctx, out.loss)
    if valid_rows is not None:
        values = torch.where(valid_rows.to(values.device), values, torch.nan)
    if out.samples > 1:
        values = values.view(-1, out.samples).mean(1)
    return values.cpu()


def _sampled_reference(interp: "RunContext", node: Metric, fwd: Forward,
                       out: ForwardOutput, ref: torch.Tensor) -> torch.Tensor:
    """A metric whose kl(RUN) reference has k noise samples per example: evaluated once
    per sample (this run's values repeated k times), then averaged over the samples."""
    k = ref.shape[0] // out.batch.n
    batch = out.batch.repeat(k)
    contains = {key: c.repeat_interleave(k, 0)
                for key, c in _continued(node.expr, out).items()}
    ctx = M.MetricContext(out.logits[node.pos].repeat_interleave(k, 0), None, batch,
                          interp.token_ids(fwd.run, batch.n), ref, contains)
    loss = out.loss.repeat_interleave(k, 0) if out.loss is not None else None
    values = _evaluate_with_loss(node.expr, ctx, loss)
    if out.valid is not None:
        values = torch.where(out.valid.repeat_interleave(k, 0).to(values.device), values,
                             torch.nan)
    return values.view(-1, k).mean(1).cpu()


def _continued(expr: A.MExpr, out: ForwardOutput) -> dict[int, torch.Tensor]:
    """The per-row values of the expression's generate(...) and seqlogprob(...) terms,
    computed when the forward ran, by id of the term."""
    from patchc.compiler import printer

    found = {}
    for e in A.metric_nodes(expr):
        if isinstance(e, A.MGenerate):
            found[id(e)] = out.contains[(e.n, e.answer.data, e.answer.column)]
        elif isinstance(e, A.MSeqLogProb):
            found[id(e)] = out.seqlogprob[printer.tok(e.tok)]
    return found


def _evaluate_with_loss(expr: A.MExpr, ctx: M.MetricContext, loss: torch.Tensor | None
                        ) -> torch.Tensor:
    if loss is None:
        return M.evaluate(expr, ctx)
    if isinstance(expr, A.MLoss):
        return loss
    if isinstance(expr, A.MBin):
        a = _evaluate_with_loss(expr.left, ctx, loss)
        b = _evaluate_with_loss(expr.right, ctx, loss)
        return M.binary(expr.op, a, b)
    if isinstance(expr, A.MNeg):
        return -_evaluate_with_loss(expr.operand, ctx, loss)
    return M.evaluate(expr, ctx)
