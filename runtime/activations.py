"""Fused backwards for GELU activation modules written as many elementwise ops.

GPT-2's `gelu_new` (transformers' NewGELUActivation) computes
0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) in pow/mul/add/tanh: autograd then
records and replays a backward of about a dozen elementwise kernels (a tenth of the bundled
4-layer GPT-2's forward+backward). The derivative is one ATen kernel,
`gelu_backward(grad, x, approximate="tanh")` (the exact GELU's with "none").

`fused_backwards(model)` gives every such module of the model that backward for as long as
its context is active: the module's forward is wrapped in an autograd Function that runs the
module's own forward (so the values are bit for bit the model's) with gradient recording off,
keeps only its input, and answers the backward with the one kernel. The modules are matched
by their class (transformers' classes, and Bloom's), never by what they compute: a class not
listed keeps autograd's backward. On exit (also after an error) every module is as it was.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

# transformers class name -> gelu_backward's `approximate`, for classes that compute that
# function with composite ops (the tanh form under three spellings; Bloom's has its own
# autograd Function whose backward is a dozen ops too).
_COMPOSITE = {
    "NewGELUActivation": "tanh",
    "FastGELUActivation": "tanh",
    "AccurateGELUActivation": "tanh",
    "BloomGelu": "tanh",
}
# Classes with a choice of implementation: only their Python one is composite (the default
# calls torch's fused gelu, whose backward is already the one kernel).
_PYTHON_CHOICE = {
    "GELUActivation": ("_gelu_python", "none"),
    "GELUTanh": ("_gelu_tanh_python", "tanh"),
}


def approximation(module: nn.Module) -> str | None:
    """gelu_backward's `approximate` for a module whose GELU autograd composes of many ops,
    or None (any other module: left alone)."""
    cls = type(module)
    if not cls.__module__.startswith("transformers."):
        return None
    name = cls.__name__
    if name in _COMPOSITE:
        return _COMPOSITE[name]
    if name in _PYTHON_CHOICE:
        python, approximate = _PYTHON_CHOICE[name]
        act = getattr(module, "act", None)
        return approximate if getattr(act, "__name__", None) == python else None
    return None


class _FusedGelu(torch.autograd.Function):
    """y = forward(x) (the module's own ops, no graph recorded), dy/dx by gelu_backward."""

    @staticmethod
    def forward(ctx, x: Tensor, forward: Callable[[Tensor], Tensor], approximate: str
                ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate=ctx.approximate), None, None


def _fused(forward: Callable[[Tensor], Tensor], approximate: str) -> Callable[..., Tensor]:
    def call(x: Tensor, *args, **kwargs) -> Tensor:
        if args or kwargs or not torch.is_grad_enabled():  # not a plain act(x): as it was
            return forward(x, *args, **kwargs)
        return _FusedGelu.apply(x, forward, approximate)
    return call


# model -> its composite GELU modules, found once: a walk over every module each pass costs
# more than the swap. A module added to the model later only misses the faster backward; one
# that no longer qualifies is checked again at every swap.
_FOUND: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()


def _candidates(model: nn.Module) -> list[nn.Module]:
    found = _FOUND.get(model)
    if found is None:
        found = _FOUND[model] = [m for m in model.modules() if approximation(m) is not None]
    return found


@contextlib.contextmanager
def fused_backwards(model: nn.Module) -> Iterator[int]:
    """Every composite GELU module of `model` with the fused backward for the duration
    (yields how many). A module whose `forward` is already replaced on the instance (an
    offloading wrapper, a user's patch) is left as it is."""
    swapped: list[nn.Module] = []
    try:
        for module in _candidates(model):
            approximate = approximation(module)
            if approximate is None or "forward" in module.__dict__:
                continue
            module.forward = _fused(module.forward, approximate)
            swapped.append(module)
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward  # the class's forward again
