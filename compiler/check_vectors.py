"""Vector expressions (docs/language.md §10): references, files, and sizes.

A vector's size must equal the size of the site it is added to or projects in, so every
vector expression gets a dimension here (None where it cannot be known because of an error
reported elsewhere). Files are only opened for their safetensors header (shapes and keys,
no tensor data, no torch).

Expected file layouts:
  load("FILE.safetensors", key="name")   a 1-D tensor [d] under `name`
  sae("FILE.safetensors", feature=i)     the SAE decoder `W_dec` of shape [n_features, d];
                                         the vector is row i (SAELens' layout)
"""

from __future__ import annotations

import os
from functools import lru_cache

from . import ast as A
from . import resolve
from .check_context import Context, did_you_mean
from .check_sites import check_pos, no_vector_on_pattern, site_width
from .errors import CheckError, Span
from .file_stamps import read_settled
from .paths import near

SAE_DECODER_KEY = "W_dec"


@lru_cache(maxsize=32)
def _shapes(path: str, stamp: tuple) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in a safetensors file, from its header alone (kept per
    file stamp: read_settled)."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@lru_cache(maxsize=256)
def _not_finite(path: str, key: str, stamp: tuple) -> int:
    """How many values of tensor `key` of a safetensors file are NaN or infinite (kept per
    file stamp: read_settled)."""
    import numpy as np
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return int((~np.isfinite(f.get_tensor(key))).sum())


def _full_path(ctx: Context, file: str) -> str:
    return os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(file)))


def tensor_shapes(ctx: Context, file: str, span: Span) -> dict[str, tuple[int, ...]]:
    path = _full_path(ctx, file)
    if not os.path.isfile(path):
        raise CheckError("E328", f"vector file not found: {path}", span,
                         hint=near(file, path, ctx.base_dir)
                         or "relative paths resolve against the spec file's directory")
    try:
        return read_settled(_shapes, path)
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise CheckError("E328", f"could not read {path} as safetensors: {e}", span) from None


class VectorChecker:
    """Dimensions of vector expressions; declared vectors are memoized in ctx.vector_dims."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._visiting: set[str] = set()
        self._done: set[str] = set()

    def declared(self, decl: A.VectorDecl) -> int | None:
        """The dimension of a `vector` declaration (checked once)."""
        name = decl.name.value
        if name in self._done or name in self._visiting:
            return self.ctx.vector_dims.get(name)  # a cycle is reported by check.py
        self._visiting.add(name)
        dim = self.dim(decl.expr, sweeps_allowed=0)
        self._visiting.discard(name)
        self._done.add(name)
        if dim is not None:
            self.ctx.vector_dims[name] = dim
        return dim

    def dim(self, e: A.VExpr, sweeps_allowed: int) -> int | None:
        """The dimension of an expression; E349 for more scalar sweeps than allowed (steer
        allows one: it becomes the table's `scale` column)."""
        for sw in list(sweeps(e))[sweeps_allowed:]:
            if sweeps_allowed:
                self.ctx.error("E349", "only one scalar sweep {...} per statement", sw.span)
            else:
                self.ctx.error("E349", "a scalar sweep {...} is not allowed here", sw.span,
                               hint="sweep scalars in the `by` of a steer or scale operation")
        return self._dim(e)

    def _dim(self, e: A.VExpr) -> int | None:
        ctx = self.ctx
        if isinstance(e, A.VRef):
            decl = ctx.vector(e.name, e.span)
            return self.declared(decl) if decl is not None else None
        if isinstance(e, (A.VNeg, A.VNormalize, A.VScale)):
            inner = e.operand if isinstance(e, A.VNeg) else \
                e.arg if isinstance(e, A.VNormalize) else e.vec
            return self._dim(inner)
        if isinstance(e, A.VBin):
            left, right = self._dim(e.left), self._dim(e.right)
            if left is not None and right is not None and left != right:
                verb = "add" if e.op == "+" else "subtract"
                ctx.error("E333", f"cannot {verb} vectors of different sizes ({left} and "
                          f"{right} features)", e.span)
                return None
            return left if left is not None else right
        if isinstance(e, A.VLoad):
            return self._load(e)
        if isinstance(e, A.VSae):
            return self._sae(e)
        if isinstance(e, A.VMean):
            return self._mean(e)
        raise AssertionError(e)

    def _load(self, e: A.VLoad) -> int | None:
        with self.ctx.catch():
            shapes = tensor_shapes(self.ctx, e.path, e.span)
            if e.key not in shapes:
                hint = did_you_mean(e.key, shapes) or f"it has {', '.join(sorted(shapes))}"
                raise CheckError("E329", f"{e.path} has no tensor {e.key!r}", e.span, hint=hint)
            shape = shapes[e.key]
            if len(shape) != 1:
                raise CheckError("E330", f"tensor {e.key!r} of {e.path} has shape "
                                 f"{list(shape)}; a vector must be 1-D", e.span)
            bad = read_settled(_not_finite, _full_path(self.ctx, e.path), e.key)
            if bad:  # (a NaN steers every later value to NaN, silently)
                raise CheckError("E330", f"tensor {e.key!r} of {e.path} holds {bad} NaN or "
                                 "infinite value(s); a vector must be finite", e.span)
            return shape[0]
        return None

    def _sae(self, e: A.VSae) -> int | None:
        with self.ctx.catch():
            shapes = tensor_shapes(self.ctx, e.path, e.span)
            shape = shapes.get(SAE_DECODER_KEY)
            if shape is None:
                raise CheckError("E329", f"{e.path} has no SAE decoder {SAE_DECODER_KEY!r}",
                                 e.span, hint=f"expected {SAE_DECODER_KEY} of shape "
                                 "[n_features, d_model]")
            if len(shape) != 2:
                raise CheckError("E330", f"{SAE_DECODER_KEY} of {e.path} has shape "
                                 f"{list(shape)}; expected [n_features, d]", e.span)
            if not 0 <= e.feature < shape[0]:
                raise CheckError("E331", f"the SAE has {shape[0]} features "
                                 f"(0..{shape[0] - 1}); got feature={e.feature}", e.span)
            return shape[1]
        return None

    def _mean(self, e: A.VMean) -> int | None:
        ctx = self.ctx
        run = ctx.run(e.of.run, Span(e.of.span.line, e.of.span.col, e.of.span.line,
                                     e.of.span.col + len(e.of.run)))
        site = e.of.site
        if site.pos is None:
            # (a vector is one [d] direction: averaged at one position, it can be added at
            # any; a per-position mean would silently mean another position elsewhere)
            ctx.error("E332", "mean(...) makes one vector, so it averages at one position; "
                      f"{site.text} names none", site.span,
                      hint=f"e.g. mean({e.of.run}.{site.text} @ last)")
        elif not isinstance(site.pos, (A.PosLast, A.PosIndex, A.ColumnRef)):
            what = "`@ each` sweeps" if isinstance(site.pos, A.PosEach) else \
                "a range or set is several"
            ctx.error("E332", f"mean(...) averages at one position; {what}", site.pos.span,
                      hint="write one position: @ last, @ 9, or a data column")
        else:
            check_pos(ctx, site.pos, run)
        return one_site_width(ctx, site, "mean(...)")


def one_site_width(ctx: Context, site: A.SiteRef, what: str) -> int | None:
    """The width of a site that must resolve to exactly one concrete site (E332)."""
    if ctx.model is None:
        return None
    with ctx.catch():
        matches = resolve.expand_site(site, ctx.model)
        sites = [s for m in matches for s in m.sites]
        if len(sites) != 1:
            raise CheckError("E332", f"{what} needs exactly one site; {site.text} matches "
                             f"{len(sites)}", site.span, hint="write a concrete site, e.g. "
                             "L6.resid_post")
        no_vector_on_pattern(sites[0], site.span)
        return site_width(ctx.model, sites[0])
    return None


def sweeps(e: A.VExpr):
    """The scalar sweeps `{...}` of an expression, in order."""
    if isinstance(e, A.VScale):
        if isinstance(e.factor, A.ScalarSweep):
            yield e.factor
        yield from sweeps(e.vec)
    elif isinstance(e, A.VBin):
        yield from sweeps(e.left)
        yield from sweeps(e.right)
    elif isinstance(e, A.VNeg):
        yield from sweeps(e.operand)
    elif isinstance(e, A.VNormalize):
        yield from sweeps(e.arg)


def vector_deps(e: A.VExpr):
    """(kind, name) of the vectors and runs an expression reads (for cycle detection)."""
    if isinstance(e, A.VRef):
        yield ("vector", e.name)
    elif isinstance(e, A.VMean):
        yield ("run", e.of.run)
    elif isinstance(e, A.VBin):
        yield from vector_deps(e.left)
        yield from vector_deps(e.right)
    elif isinstance(e, (A.VNeg, A.VNormalize, A.VScale)):
        inner = e.operand if isinstance(e, A.VNeg) else \
            e.arg if isinstance(e, A.VNormalize) else e.vec
        yield from vector_deps(inner)
