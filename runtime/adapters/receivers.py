"""Receiver inputs: the residual stream as one component alone reads it (edges).

A hook on `q.in`/`k.in`/`v.in` of head h (layer l), `mlp.in` (layer l) or `logits.in` sees the
residual stream that component reads, [batch, pos, d_model], before its normalizer; what it
returns reaches that component only:

- `logits.in`: the final norm's input (only the unembedding reads it).
- `mlp.in`: the input of the MLP's normalizer (ln2; ln1 where one norm feeds both, none in
  post-norm-only blocks) is recorded; a pre-hook on the MLP replaces its input by
  y + norm(x') - norm(x) (y: the MLP's own input; norm: the receiver's own normalizer, see
  `_normed`). The block's own residual is untouched.
- `q.in`/`k.in`/`v.in`: the attention normalizer's input x is recorded; the projection's output
  columns of that head (its kv head for k/v) become out + P(norm(x')) - P(norm(x)), with
  P the head's slice of the projection and norm the receiver's own normalizer: only this head
  sees x', the other heads read the shared stream, and a write of x' = x changes nothing
  (bit-exact). The gradient of the head's columns with respect to x' is the head's own.

Grouped-query k/v: the hook of query head h acts on kv head h // (heads / kv_heads).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import Tensor, nn

from patchc.compiler.errors import RuntimeInterventionError
from patchc.runtime.offload import param, weight_io

from . import taps
from .taps import Cols, HookFn

if TYPE_CHECKING:
    from .base import Adapter

KINDS = frozenset({"q.in", "k.in", "v.in", "mlp.in", "logits.in"})
_busy: list[bool] = [False]  # set while a hook recomputes a norm: its recorders stand aside


@contextlib.contextmanager
def _recomputing() -> Iterator[None]:
    _busy[0] = True
    try:
        yield
    finally:
        _busy[0] = False


def _recorder(box: dict) -> Callable:
    def pre(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if not _busy[0]:
            box["x"] = taps._first(args, kwargs)
    return pre


def _normed(ad: "Adapter", norm: nn.Module | None, x: Tensor) -> Tensor:
    """norm(x) for one receiver alone: the module's own computation, without the hooks of
    the shared normalizer (its input taps see the shared stream; its scale site, read or
    written, is the shared stream's). Under RelP's rules its scale is detached (the LN rule)."""
    if norm is None:
        return x
    with _recomputing():
        out = norm.forward(x)
    if not LN_RULE[0]:
        return out
    xf = x.float()
    xc = xf - xf.mean(-1, keepdim=True) if ad.norm == "layernorm" else xf
    scale = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + ad.norm_eps(norm))
    delta = xc * (scale.detach() - scale)
    w = ad.norm_weight(norm)
    if w is not None:
        delta = delta * w.float().to(delta.device)
    return out + delta.to(out.dtype)


LN_RULE: list[bool] = [False]  # RelP's rules are on (runtime/lrp.py sets it)


@contextlib.contextmanager
def ln_rule() -> Iterator[None]:
    """Receivers' own normalizers divide by a detached scale while active (RelP)."""
    LN_RULE[0] = True
    try:
        yield
    finally:
        LN_RULE[0] = False


def install(ad: "Adapter", kind: str, layer: int | None, head: int | None, fn: HookFn,
            what: str, add: Callable) -> None:
    """Hooks of one receiver input. Several hooks on one receiver are one chain (each sees
    what the previous wrote), as the adapter's computed sites are."""
    if kind == "logits.in":
        add(taps.tap_input(ad.ln_final(), fn, what))
        return
    assert layer is not None
    if kind == "mlp.in":
        add(ad._chained(what, fn, lambda f: _install_mlp(ad, layer, f, what)))
    else:
        assert head is not None
        add(ad._chained(what, fn, lambda f: _install_head(ad, kind[0], layer, head, f, what)))


def _install_mlp(ad: "Adapter", layer: int, fn: HookFn, what: str) -> taps.Handles:
    if ad.flat_mlp or ad.s.mlp is None:
        raise RuntimeInterventionError("E403", f"{ad.family}: the MLP is not one module, so "
                                       "mlp.in receivers are not available")
    norm = ad.ln2(layer) if ad.s.ln2 else None
    mlp = ad.mlp(layer)
    box: dict = {}
    rec = norm.register_forward_pre_hook(_recorder(box), with_kwargs=True) if norm else None

    def pre(_mod: nn.Module, args: tuple, kwargs: dict):
        y = taps._first(args, kwargs)
        got = _written(box, norm is not None, y, fn, what)
        if got is None:
            return None
        x, x_new, rows = got
        # y + (own norm of x' - own norm of x): rows whose input is unchanged keep y exactly,
        # whatever hooks of the shared normalizer made it (and cost nothing).
        new = _add_rows(y, rows, lambda a: _normed(ad, norm, a), x_new, x)
        return taps._replace_first(args, kwargs, new)

    return taps.Handles(rec, mlp.register_forward_pre_hook(pre, with_kwargs=True))


def _written(box: dict, recorded: bool, y: Tensor, fn: HookFn, what: str
             ) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """What both receiver hooks start with: the receiver's input x (the normalizer's input
    `box` recorded, taken out so that a later call cannot reuse it; else y, the hooked
    module's own input), x' as the receiver's hooks write it, and the rows they change
    (_changed). None when there is nothing to do: no input seen, no write, no row changed."""
    x = box.pop("x", None) if recorded else y
    if x is None:
        return None
    res = fn(x)
    if res is None:
        return None
    x_new = taps.conform(res, x, what)
    rows = _changed(x_new, x)
    if rows is not None and not len(rows):
        return None
    return x, x_new, rows


def _changed(x_new: Tensor, x: Tensor) -> Tensor | None:
    """The batch rows a receiver's write changes (None: every row; a gradient leaf added to
    the input makes every row count, so that its gradient flows)."""
    if x_new.requires_grad:
        return None
    return (x_new != x).flatten(1).any(1).nonzero().flatten()


def _add_rows(base: Tensor, rows: Tensor | None, value: Callable[[Tensor], Tensor],
              x_new: Tensor, x: Tensor) -> Tensor:
    """base + value(x_new) - value(x), computed on `rows` only (None: all). A gradient leaf
    (x_new equal to x in value) needs one value: base + (v - v.detach()) with
    v = value(x.detach() + (x_new - x)) is base exactly, with the gradient of value at the
    leaf only (upstream of x, base already carries the receiver's path)."""
    if rows is None:
        if x_new.requires_grad and torch.equal(x_new.detach(), x.detach()):
            v = value(x.detach() + (x_new - x))
            return base + (v - v.detach()).to(base.dtype)
        return base + (value(x_new) - value(x)).to(base.dtype)
    if len(rows) == base.shape[0]:
        return base + (value(x_new) - value(x)).to(base.dtype)
    out = base.clone()
    out[rows] = base[rows] + (value(x_new[rows]) - value(x[rows])).to(base.dtype)
    return out


def _slice(proj: nn.Module, cols: Cols | None, y: Tensor) -> Tensor:
    """The head's columns of the projection applied to y (P of the module docstring)."""
    b = param(proj, "bias") if getattr(proj, "bias", None) is not None else None
    w_io = weight_io(proj)
    if cols is not None:
        w_io = cols.read(w_io)
        b = cols.read(b) if b is not None else None
    out = y @ w_io.to(y.device, y.dtype)
    return out + b.to(out.device, out.dtype) if b is not None else out


def _install_head(ad: "Adapter", which: str, layer: int, head: int, fn: HookFn, what: str
                  ) -> taps.Handles:
    idx = head if which == "q" else ad.kv_head(head)
    proj, cols = ad.qkv(layer, which, idx)
    norm = ad.ln1(layer) if ad.s.ln1 else None
    box: dict = {}
    rec = norm.register_forward_pre_hook(_recorder(box), with_kwargs=True) if norm else None

    def post(_mod: nn.Module, args: tuple, out):
        y = taps._first(args, {})
        got = _written(box, norm is not None, y, fn, what)
        if got is None:
            return None
        x, x_new, rows = got

        def value(a: Tensor) -> Tensor:
            return _slice(proj, cols, _normed(ad, norm, a).to(y.dtype))

        o = taps._output_tensor(out)
        old = o if cols is None else cols.read(o)
        # old + (P(own norm of x') - P(own norm of x)): an unchanged row keeps its value
        # exactly, whatever hooks of the shared normalizer made the projection's input.
        new = _add_rows(old, rows, value, x_new, x)
        if cols is None:
            return taps._replace_output(out, new)
        if torch.is_grad_enabled() and o.requires_grad:
            return taps._replace_output(out, cols.write(o, new))
        # Without gradients the projection's fresh output takes the head's columns in place:
        # a copy of the whole fused output per head receiver was most of an edge chunk's
        # overhead on small models (the hooks before this one kept copies of what they read).
        cols.write_(o, new)
        return out

    return taps.Handles(rec, proj.register_forward_hook(post))
