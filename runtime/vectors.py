"""Vector expressions (docs/language.md §10) -> tensors; and the subspace projector of §11.

`mean(run.SITE @ POS)` terms get their values from Reads the lowering attached to the Vector
node, in the order the terms appear in the expression (depth first, left to right).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from patchc.compiler import ast as A
from patchc.compiler.errors import RuntimeInterventionError


def mean_terms(expr: A.VExpr) -> Iterator[A.VMean]:
    """The `mean(...)` terms of an expression, depth first, left to right."""
    if isinstance(expr, A.VMean):
        yield expr
    elif isinstance(expr, A.VBin):
        yield from mean_terms(expr.left)
        yield from mean_terms(expr.right)
    elif isinstance(expr, (A.VNeg,)):
        yield from mean_terms(expr.operand)
    elif isinstance(expr, A.VNormalize):
        yield from mean_terms(expr.arg)
    elif isinstance(expr, A.VScale):
        yield from mean_terms(expr.vec)


def evaluate(expr: A.VExpr, means: list[torch.Tensor], named: dict[str, torch.Tensor],
             base_dir: str, scale: float | None = None) -> torch.Tensor:
    """The vector [d] (float32, on the CPU; a write moves it to its site's device).
    `means` holds each mean(...) term's value in order; `named` the already evaluated
    `vector` declarations; `scale` the value of a scalar sweep `{...}` for this
    experiment."""
    it = iter(means)

    def ev(e: A.VExpr) -> torch.Tensor:
        if isinstance(e, A.VRef):
            return named[e.name]
        if isinstance(e, A.VMean):  # on the CPU: means of sites on different devices mix
            return next(it).float().cpu()
        if isinstance(e, A.VLoad):
            return _load(base_dir, e.path, e.key).float()
        if isinstance(e, A.VSae):
            w = _load(base_dir, e.path, "W_dec")
            return w[e.feature].float()
        if isinstance(e, A.VNormalize):
            v = ev(e.arg)
            return v / v.norm().clamp(min=1e-12)
        if isinstance(e, A.VNeg):
            return -ev(e.operand)
        if isinstance(e, A.VBin):
            a, b = ev(e.left), ev(e.right)
            return a + b if e.op == "+" else a - b
        if isinstance(e, A.VScale):
            if isinstance(e.factor, A.ScalarSweep):
                if scale is None:
                    raise RuntimeInterventionError("E440", "a scalar sweep needs its value")
                return scale * ev(e.vec)
            return e.factor.value * ev(e.vec)
        raise AssertionError(e)

    return ev(expr)


def _load(base_dir: str, path: str, key: str) -> torch.Tensor:
    from safetensors.torch import load_file

    full = Path(base_dir) / path
    try:
        tensors = load_file(str(full))
    except FileNotFoundError:
        raise RuntimeInterventionError("E441", f"vector file not found: {full}") from None
    if key not in tensors:
        raise RuntimeInterventionError("E442", f"{full} has no tensor {key!r}; it has "
                                       f"{', '.join(sorted(tensors))}")
    return tensors[key]


def projector(vectors: list[torch.Tensor]) -> torch.Tensor:
    """The orthogonal projector [d, d] onto span(vectors)."""
    basis = torch.stack([v.float().cpu() for v in vectors], dim=1)  # [d, k]
    q, r = torch.linalg.qr(basis)
    # Drop directions of (numerically) dependent vectors so P stays a projector.
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp(min=1e-30)
    q = q[:, keep]
    return q @ q.T
