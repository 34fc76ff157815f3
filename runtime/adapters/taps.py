"""Taps: the few kinds of torch hook that every canonical site is built from.

An adapter maps a site to a module and one of these taps; the taps know nothing about sites.
Each installer registers torch hooks and returns their handles. A hook function `fn` gets the
site's activation and returns a replacement tensor or None (read only):

- `tap_input` / `tap_output`: a module's first input or first output, optionally a column
  selection of its last axis (one head's slice of a fused projection, say);
- `tap_inplace`: a tensor that the model also keeps as its residual (`resid_mid`): a write
  must change the tensor object itself, so it is copied in place;
- `tap_norm_scale`: a normalizer's 1/sigma per token; a write adds the difference it makes;
- `tap_head_out`: one head's z_h @ W_O[h]; a write adds the difference to the projection output.

"Add the difference" writes (`out + (new - old)`) keep a written value that equals the read one
bit-exactly neutral, and their gradient is that of the written function.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from patchc.compiler.errors import RuntimeInterventionError

HookFn = Callable[[Tensor], Optional[Tensor]]
Lead = Optional[Callable[[], tuple[int, ...]]]  # leading [batch, pos] shape of a flattened input


class Cols:
    """A selection of the last axis: a contiguous range, or a list of indices."""

    __slots__ = ("start", "stop", "index", "_cache")

    def __init__(self, start: int = 0, stop: int = 0, index: list[int] | None = None) -> None:
        self.start, self.stop, self.index = start, stop, index
        self._cache: dict[torch.device, Tensor] = {}

    def _idx(self, device: torch.device) -> Tensor:
        if device not in self._cache:
            self._cache[device] = torch.tensor(self.index, dtype=torch.long, device=device)
        return self._cache[device]

    def read(self, x: Tensor) -> Tensor:
        if self.index is None:
            return x[..., self.start : self.stop]
        return x.index_select(-1, self._idx(x.device))

    def write(self, x: Tensor, new: Tensor) -> Tensor:
        if self.index is None:
            y = x.clone()
            y[..., self.start : self.stop] = new
            return y
        return x.index_copy(-1, self._idx(x.device), new)

    def write_(self, x: Tensor, new: Tensor) -> None:
        """`write`, in place (for a tensor no one else holds and no gradient needs)."""
        if self.index is None:
            x[..., self.start : self.stop] = new
        else:
            x.index_copy_(-1, self._idx(x.device), new)

    def __repr__(self) -> str:
        return f"Cols({self.start}:{self.stop})" if self.index is None else f"Cols({self.index})"


def conform(new: Any, like: Tensor, what: str) -> Tensor:
    """Check a hook's return value against the activation it replaces; broadcast and cast it."""
    if not isinstance(new, Tensor):
        raise RuntimeInterventionError(
            "E404", f"a hook on {what} returned {type(new).__name__}, expected a tensor or None"
        )
    if new.shape != like.shape:
        try:
            new = torch.broadcast_to(new, like.shape)
        except RuntimeError:
            raise RuntimeInterventionError(
                "E404",
                f"a hook on {what} returned shape {tuple(new.shape)}, expected {tuple(like.shape)}",
            ) from None
    new = new.to(device=like.device, dtype=like.dtype)
    # The model may `.view` what we hand back, so it must be contiguous (a no-op when it is).
    return new.contiguous()


def _first(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _replace_first(args: tuple, kwargs: dict, x: Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def _output_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple):
        return out[0]
    return out["logits"] if "logits" in out else out[0]  # a ModelOutput


def _replace_output(out: Any, x: Tensor) -> Any:
    if isinstance(out, Tensor):
        return x
    if isinstance(out, tuple):
        return (x, *out[1:])
    if "logits" in out:
        out.logits = x
    else:
        out[next(iter(out.keys()))] = x
    return out


def _apply(x: Tensor, fn: HookFn, cols: Cols | None, lead: Lead, what: str) -> Tensor | None:
    """Run fn on the (selected, un-flattened) activation; return the new whole tensor or None."""
    flat = lead is not None and x.dim() == 2
    xv = x.view(*lead(), x.shape[-1]) if flat else x  # type: ignore[misc]
    act = xv if cols is None else cols.read(xv)
    res = fn(act)
    if res is None:
        return None
    res = conform(res, act, what)
    full = res if cols is None else cols.write(xv, res)
    return full.reshape(x.shape) if flat else full


def tap_input(
    module: nn.Module,
    fn: HookFn,
    what: str,
    cols: Cols | None = None,
    lead: Lead = None,
    prepend: bool = False,
) -> RemovableHandle:
    """The module's first input (positional, or the `hidden_states` keyword)."""

    def pre(_mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        new = _apply(_first(args, kwargs), fn, cols, lead, what)
        return None if new is None else _replace_first(args, kwargs, new)

    return module.register_forward_pre_hook(pre, with_kwargs=True, prepend=prepend)


def tap_output(
    module: nn.Module, fn: HookFn, what: str, cols: Cols | None = None, lead: Lead = None
) -> RemovableHandle:
    """The module's output (its first element for tuples; `logits` for a ModelOutput)."""

    def post(_mod: nn.Module, _args: tuple, out: Any) -> Any:
        new = _apply(_output_tensor(out), fn, cols, lead, what)
        return None if new is None else _replace_output(out, new)

    return module.register_forward_hook(post)


def tap_inplace(module: nn.Module, fn: HookFn, what: str, lead: Lead = None) -> RemovableHandle:
    """The module's first input, written in place: the caller keeps the same tensor object
    (the residual of a sequential block is both the ln2 input and the summand of the MLP add).
    A hook that keeps the tensor it read must clone it if a later hook writes this site."""

    def pre(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _first(args, kwargs)
        xv = x.view(*lead(), x.shape[-1]) if lead is not None and x.dim() == 2 else x
        res = fn(xv)
        if res is None or res is xv:
            return None
        res = conform(res, xv, what)
        if res.untyped_storage().data_ptr() == xv.untyped_storage().data_ptr():
            res = res.clone()  # copy_ from an overlapping view is undefined
        xv.copy_(res)
        return None

    return module.register_forward_pre_hook(pre, with_kwargs=True)


def tap_norm_scale(
    module: nn.Module,
    fn: HookFn,
    what: str,
    centered: bool,
    eps: float,
    weight: Callable[[], Tensor | None],
    lead: Lead = None,
    prepend: bool = False,
) -> RemovableHandle:
    """A normalizer's 1/sigma per token, shape [..., 1], float32: rsqrt(var + eps) for
    LayerNorm (centered), rsqrt(mean(x^2) + eps) for RMSNorm. A write s' turns the output into
    centered(x) * s' * w (+ b), computed as out + centered(x) * (s' - s) * w."""

    def post(_mod: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        # The input as the hook sees it is where it came from; with a device map the norm
        # (its weight, its output) may compute elsewhere.
        x = _first(args, {}).to(out.device)
        xf = x.float()
        xc = xf - xf.mean(-1, keepdim=True) if centered else xf
        scale = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
        flat = lead is not None and x.dim() == 2
        act = scale.view(*lead(), 1) if flat else scale  # type: ignore[misc]
        res = fn(act)
        if res is None:
            return None
        res = conform(res, act.float(), what).reshape(scale.shape)
        delta = xc * (res - scale)
        w = weight()
        if w is not None:
            delta = delta * w.float().to(delta.device)
        return out + delta.to(out.dtype)

    return module.register_forward_hook(post, prepend=prepend)


def tap_head_out(
    o_proj: nn.Module, fn: HookFn, what: str, cols: Cols, w_head: Callable[[], Tensor]
) -> RemovableHandle:
    """Head h's contribution z_h @ W_O[h] (no bias), w_head() giving W_O[h] as [d_head, d_model]."""

    def post(_mod: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        z = _first(args, {}).to(out.device)  # where o_proj computes (see tap_norm_scale)
        contrib = cols.read(z) @ w_head().to(out.device)
        res = fn(contrib)
        if res is None:
            return None
        return out + (conform(res, contrib, what) - contrib)

    return o_proj.register_forward_hook(post)


class Handles:
    """Several torch hook handles removed together (None entries are skipped)."""

    def __init__(self, *handles: RemovableHandle | None) -> None:
        self.handles = [h for h in handles if h is not None]

    def remove(self) -> None:
        for h in reversed(self.handles):
            h.remove()


def tap_lead(layer: nn.Module) -> tuple[Callable[[], tuple[int, ...]], RemovableHandle]:
    """Record the [batch, pos] shape of a block's input, for modules that see [batch*pos, d]."""
    box: list[tuple[int, ...]] = [()]

    def pre(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        box[0] = tuple(_first(args, kwargs).shape[:-1])

    return (lambda: box[0]), layer.register_forward_pre_hook(pre, with_kwargs=True)
