"""RelP's LRP backward rules (Jafari et al. 2025, arXiv 2508.21258) as forward hooks.

Every rule leaves the forward values bit-identical and changes only the local backward:

- LN-rule: LayerNorm/RMSNorm divide by a detached scale (their backward is then linear).
  Each normalizer's scale site (ln1/ln2/ln_final) is written with its own detached value,
  which the scale tap turns into `out + centered(x) * (s.detach() - s) * w`: a zero whose
  gradient cancels the scale's; normalizers without a scale site (Gemma-2's post-norms) get
  the same tap directly.
- identity rule: an elementwise activation y = act(x) passes gradient y/x, stabilized as
  y / (x + 1e-6 * sign(x)) with sign(0) = 1: `y.detach() + (x - x.detach()) * ratio`.
- half-rule: a gated product p = a * u (a = act(gate)) sends half of the relevance to each
  factor: `p.detach() + (h - h.detach())` with h = 0.5 * (a * u.detach() + a.detach() * u).
- AH-rule (`lrp_ah` only): every attention pattern is detached (gradient flows through the
  values only).
- linear layers, residual adds, embeddings and everything else: plain gradient.

The adapter says where each rule applies (`act_fn`, `gate_up`, `mlp_down`, `extra_norms`,
the scale sites, `attn.pattern`); `rules(adapter, ah)` installs them all for as long as its
context is active. Enter it before any site hook, so that the rules act on the model's own
values and a site's hooks (reads, writes, gradient leaves) see what they would without them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from patchc.compiler.errors import RuntimeInterventionError

from .adapters import Adapter, receivers, taps

STABILIZER = 1e-6
RULES = ("grad", "lrp", "lrp_ah")


def identity_rule(pre: Tensor, post: Tensor) -> Tensor:
    """post, with d(post)/d(pre) replaced by post / stabilized(pre) (elementwise)."""
    sign = torch.where(pre >= 0, 1.0, -1.0).to(pre.dtype)
    ratio = (post / (pre + STABILIZER * sign)).detach().to(post.dtype)
    return post.detach() + (pre - pre.detach()) * ratio


def half_rule(product: Tensor, a: Tensor, u: Tensor) -> Tensor:
    """product (= a * u), with the gradient split equally: 0.5 * u to a, 0.5 * a to u."""
    half = 0.5 * (a * u.detach() + a.detach() * u)
    return product.detach() + (half - half.detach())


def _detach(t: Tensor) -> Tensor:
    return t.detach()


def _norm_sites(ad: Adapter) -> list[tuple[str, int | None]]:
    # One shared norm per block (GPT-J, Phi): ln1 only; post-norm-only blocks: neither.
    kinds = tuple(k for k in ("ln1.scale", "ln2.scale") if ad.missing(k) is None)
    return [(k, layer) for layer in range(ad.n_layers) for k in kinds] + \
        [("ln_final.scale", None)]


def _install_activation(act: nn.Module, prepend: bool = True) -> torch.utils.hooks.RemovableHandle:
    def post(_mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return identity_rule(args[0], out)

    return act.register_forward_hook(post, prepend=prepend)


class _GateCapture:
    """Hooks on one gated MLP: keep act(gate) and up as they are made, apply the half-rule
    to the product where it enters the down projection."""

    def __init__(self, ad: Adapter, layer: int, up: tuple[nn.Module, taps.Cols | None]) -> None:
        self.a: Tensor | None = None
        self.u: Tensor | None = None
        self.cols = up[1]
        self.handles = [
            ad.act_fn(layer).register_forward_hook(self._act),  # after the identity rule
            up[0].register_forward_hook(self._up),
            ad.mlp_down(layer).register_forward_pre_hook(self._down, prepend=True),
        ]

    def _act(self, _mod: nn.Module, _args: tuple, out: Tensor) -> None:
        self.a = out

    def _up(self, _mod: nn.Module, _args: tuple, out: Tensor) -> None:
        self.u = out if self.cols is None else self.cols.read(out)

    def _down(self, _mod: nn.Module, args: tuple) -> tuple | None:
        a, u, self.a, self.u = self.a, self.u, None, None
        p = args[0]
        if a is None or u is None or a.shape != p.shape or u.shape != p.shape:
            raise RuntimeInterventionError(
                "E403", "RelP's half-rule needs the gated MLP's activation and up projection, "
                "and this model's MLP did not call them as modules (use atp, or ig)")
        return (half_rule(p, a, u), *args[1:])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def rules(ad: Adapter, ah: bool = False) -> Iterator[Adapter]:
    """Install RelP's rules on the adapter's model (AH-rule too with `ah`)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(receivers.ln_rule())  # edges: a receiver's own normalizer
        for kind, layer in _norm_sites(ad):
            stack.enter_context(ad.hook(kind, layer, None, _detach))
        for norm in ad.extra_norms():
            h = taps.tap_norm_scale(norm, _detach, "norm", centered=ad.norm == "layernorm",
                                    eps=ad.norm_eps(norm),
                                    weight=lambda n=norm: ad.norm_weight(n), prepend=True)
            stack.callback(h.remove)
        seen: set[int] = set()
        for layer in range(ad.n_layers):
            act = ad.act_fn(layer)
            if id(act) not in seen:  # a module shared by layers is hooked once
                seen.add(id(act))
                stack.callback(_install_activation(act).remove)
            up = ad.gate_up(layer)
            if up is not None:
                stack.callback(_GateCapture(ad, layer, up).remove)
        if ah:
            for layer in range(ad.n_layers):
                stack.enter_context(ad.hook("attn.pattern", layer, None, _detach))
        yield ad


def rules_for(ad: Adapter, name: str) -> contextlib.AbstractContextManager:
    """The context of a Backward's `rules`: nothing for `grad`."""
    if name == "grad":
        return contextlib.nullcontext(ad)
    if name in ("lrp", "lrp_ah"):
        return rules(ad, ah=name == "lrp_ah")
    raise RuntimeInterventionError("E460", f"unknown backward rules {name!r} "
                                   f"(known: {', '.join(RULES)})")
