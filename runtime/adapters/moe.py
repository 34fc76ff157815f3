"""Mixture-of-experts sites: `router`, `expert.out` / `expert.post` of expert e, `shared.out`.

transformers (5.x) keeps a sparse MLP as a router module returning (logits, weights, indices),
an experts module holding every expert's weights as 3-D tensors, and optionally a shared
expert. The sites:

- `router`: the router's logits, [batch, pos, experts]. A write re-routes: the weights and the
  chosen experts are recomputed from the written logits with the family's routing rule
  (`softmax_topk`: softmax, top-k, optional renormalization; `topk_softmax`: top-k logits,
  softmax over them; `sigmoid_topk`: sigmoid scores, top-k of score plus correction bias
  (where the router is given one), renormalized; `sigmoid_topk_scaled`: the same with a bias,
  then scaled by the router's factor; `softmax_bias_topk`: softmax, top-k of
  probability plus correction bias, renormalized), so gradients flow from the metric into the
  router logits.
- `expert.post` (Ll.Ee.post): expert e's neurons, [batch, pos, d_expert], zero at tokens not
  routed to e (a write there has no effect: the routing weight is zero).
- `expert.out` (Ll.Ee.out): expert e's weighted contribution to mlp.out, [batch, pos, d_model],
  zero at tokens not routed to e; a write adds what it returns instead (so a swap from a run
  where e was chosen brings e's contribution along).
- `shared.out`: the shared expert's contribution: gated (Qwen2-MoE), or its plain output where
  the block adds it ungated (ERNIE 4.5 MoE, HunYuan MoE).

While an expert site is hooked, that layer's experts run an explicit per-expert loop with the
operations of transformers' eager experts function (bit-exact with `experts_implementation=
"eager"`; within float noise of the fused grouped kernels that are the default); unhooked layers
run the model's own function.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from patchc.compiler.errors import RuntimeInterventionError

from ..compat import router_first, router_logits
from . import taps
from .taps import HookFn

if TYPE_CHECKING:
    from .base import Adapter

_HOOKS = "_patchc_expert_hooks"  # on an experts module: {(what, e): [fn, ...]}
_LEAD = "_patchc_expert_lead"  # on an experts module: () -> (batch, pos)


def install(ad: "Adapter", kind: str, layer: int, e: int | None, fn: HookFn, what: str,
            add: Callable) -> None:
    mlp = ad.mlp(layer)
    lead, handle = taps.tap_lead(ad.layer(layer))
    add(handle)
    if kind == "router":
        router = ad._at(layer, ad.s.router)
        add(router.register_forward_hook(_router_hook(ad, router, fn, what, lead)))
    elif kind == "shared.out" and ad.s.shared_gate is None:
        # An ungated shared expert's output is what the block adds: tap it where it is made.
        add(ad._at(layer, ad.s.shared).register_forward_hook(
            lambda _m, _a, out: taps._apply(out, fn, None, lead, what)))
    elif kind == "shared.out":
        add(_hook_shared(mlp, fn, what, lead))
    else:
        assert e is not None
        experts = ad._at(layer, ad.s.experts)
        add(_hook_expert(experts, kind.split(".")[1], e, fn, lead))


# ---- the router ------------------------------------------------------------------------------


def _router_hook(ad: "Adapter", router: nn.Module, fn: HookFn, what: str, lead) -> Callable:
    scheme = ad.fam.moe

    def post(_mod: nn.Module, args: tuple, out: tuple) -> tuple | None:
        logits = router_logits(router, scheme, args, out)
        new = taps._apply(logits, fn, None, lead, what)
        if new is None:
            return None
        weights, index = reroute(router, scheme, new, out[1].dtype, args)
        return (router_first(scheme, new), weights, index, *out[3:])

    return post


# Every routing rule `reroute` knows (families.py names one per mixture-of-experts family).
RULES = ("softmax_topk", "topk_softmax", "sigmoid_topk", "softmax_bias_topk",
         "sigmoid_topk_scaled")


def reroute(router: nn.Module, scheme: str | None, logits: Tensor,
            dtype: torch.dtype, args: tuple = ()) -> tuple[Tensor, Tensor]:
    """The routing weights and chosen experts for `logits`, by the family's rule (`args`: what
    the router was called with; a sigmoid router's second argument is its correction bias)."""
    k = int(router.top_k)
    if scheme == "softmax_topk":
        probs = F.softmax(logits, dtype=torch.float, dim=-1)
        top, index = torch.topk(probs, k, dim=-1)
        if getattr(router, "norm_topk_prob", True):
            top = top / top.sum(dim=-1, keepdim=True)
        return top.to(dtype), index
    if scheme == "topk_softmax":
        top, index = torch.topk(logits, k, dim=-1)
        return F.softmax(top, dim=-1, dtype=top.dtype).to(dtype), index
    if scheme == "sigmoid_topk":
        # Experts are chosen by sigmoid score plus a per-expert correction bias (which only
        # chooses), weighted by their sigmoid scores renormalized over the chosen ones.
        scores = torch.sigmoid(logits.float())
        if len(args) < 2:  # no correction bias (Flint): the top scores themselves
            top, index = torch.topk(scores, k, dim=-1)
        else:
            top, index = _chosen_with_bias(scores, args[1], k)
        if getattr(router, "norm_topk_prob", True):
            top = top / top.sum(dim=-1, keepdim=True)
        return top.to(dtype), index
    if scheme == "sigmoid_topk_scaled":
        # Hunyuan V3: as sigmoid_topk with a bias, over the sum plus 1e-20, then times the
        # router's scaling factor (inside the router, so the experts' outputs carry it).
        top, index = _chosen_with_bias(torch.sigmoid(logits.float()), args[1], k)
        top = top / (top.sum(dim=-1, keepdim=True) + 1e-20)
        return (top * router.router_scaling_factor).to(dtype), index
    if scheme == "softmax_bias_topk":
        # ERNIE 4.5: experts are chosen by probability plus the router's correction bias (which
        # only chooses), weighted by their probabilities over a clamped sum.
        probs = F.softmax(logits, dim=-1, dtype=torch.float)
        _, index = torch.topk(probs + _correction_bias(router), k, dim=-1)
        top = torch.gather(probs, dim=-1, index=index)
        top = top / torch.clamp(top.sum(dim=-1, keepdim=True), min=router.norm_min)
        return top.to(dtype), index
    raise RuntimeInterventionError("E403", f"cannot re-route a '{scheme}' router")


def _chosen_with_bias(scores: Tensor, bias: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k experts of highest score plus correction bias (the bias only chooses), with
    their unbiased scores."""
    _, index = torch.topk(scores + bias, k, dim=-1, sorted=False)
    return scores.gather(1, index), index


def _correction_bias(router: nn.Module) -> Tensor:
    """The per-expert correction bias a router holds (in a sub-module of its own in ERNIE)."""
    named = [*router.named_parameters(), *router.named_buffers()]
    return next(t for n, t in named if n.endswith("e_score_correction_bias")).squeeze()


# ---- experts -----------------------------------------------------------------------------------


def _hook_expert(experts: nn.Module, what: str, e: int, fn: HookFn, lead) -> Callable[[], None]:
    hooks: dict = experts.__dict__.setdefault(_HOOKS, {})
    if "forward" not in experts.__dict__:
        experts.forward = types.MethodType(_explicit_forward, experts)  # type: ignore[method-assign]
    experts.__dict__[_LEAD] = lead
    hooks.setdefault((what, e), []).append(fn)

    def remove() -> None:
        fns = hooks.get((what, e), [])
        if fn in fns:
            fns.remove(fn)
        if not fns:
            hooks.pop((what, e), None)
        if not hooks:
            for key in (_HOOKS, _LEAD, "forward"):
                experts.__dict__.pop(key, None)

    return remove


def _run(fns: list[HookFn], act: Tensor, what: str) -> Tensor | None:
    changed = None
    for f in list(fns):
        res = f(act)
        if res is not None:
            act = changed = taps.conform(res, act, what)
    return changed


def _dense(lead, rows: Tensor, index: Tensor, n: int) -> Tensor:
    """[batch, pos, w] with `rows` at token indices `index`, zero elsewhere."""
    full = rows.new_zeros((n, rows.shape[-1]))
    full[index] = rows
    return full.view(*lead(), rows.shape[-1])


def _linear(x: Tensor, w: Tensor, bias: Tensor | None, transposed: bool) -> Tensor:
    if transposed:
        out = x @ w
        return out if bias is None else out + bias
    return F.linear(x, w, bias)


def _explicit_forward(self: nn.Module, hidden: Tensor, top_k_index: Tensor,
                      top_k_weights: Tensor) -> Tensor:
    """transformers' eager experts loop, with expert e's neurons and weighted output exposed."""
    hooks: dict = self.__dict__.get(_HOOKS, {})
    lead = self.__dict__[_LEAD]
    n_exp = int(self.num_experts)
    up_w, down_w = self.gate_up_proj, self.down_proj
    transposed = bool(getattr(self, "is_transposed", False))  # set by transformers' decorator
    up_b = getattr(self, "gate_up_proj_bias", None)
    down_b = getattr(self, "down_proj_bias", None)
    final = torch.zeros_like(hidden)
    n = hidden.shape[0]
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=n_exp + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()[:, 0].tolist()
    hooked = {e for _, e in hooks}
    for e in sorted((set(hit) | hooked) - {n_exp}):
        top_k_pos, token_idx = torch.where(mask[e])
        x = hidden[token_idx]
        h = self._apply_gate(_linear(x, up_w[e], None if up_b is None else up_b[e], transposed))
        fns = hooks.get(("post", e))
        if fns:
            new = _run(fns, _dense(lead, h, token_idx, n), f"E{e}.post")
            if new is not None:
                h = new.reshape(n, -1)[token_idx]
        y = _linear(h, down_w[e], None if down_b is None else down_b[e], transposed)
        y = y * top_k_weights[token_idx, top_k_pos, None]
        fns = hooks.get(("out", e))
        dense = None
        if fns:
            new = _run(fns, _dense(lead, y.to(final.dtype), token_idx, n), f"E{e}.out")
            dense = None if new is None else new.reshape(n, -1)
        if dense is None:
            final.index_add_(0, token_idx, y.to(final.dtype))
        else:
            final = final + dense
    return final


# ---- the shared expert (Qwen2-MoE) ------------------------------------------------------------


def _hook_shared(block: nn.Module, fn: HookFn, what: str, lead) -> Callable[[], None]:
    """Run the sparse block's own forward, with the gated shared contribution exposed."""
    fns: list = block.__dict__.setdefault(_HOOKS, [])
    fns.append(fn)

    def forward(self: nn.Module, hidden_states: Tensor) -> Tensor:
        batch, seq, dim = hidden_states.shape
        flat = hidden_states.view(-1, dim)
        shared = self.shared_expert(flat)
        _, weights, chosen = self.gate(flat)
        out = self.experts(flat, chosen, weights)
        shared = F.sigmoid(self.shared_expert_gate(flat)) * shared
        new = _run(fns, shared.view(batch, seq, dim), what)
        out = out + (shared if new is None else new.reshape(shared.shape))
        return out.reshape(batch, seq, dim)

    block.forward = types.MethodType(forward, block)  # type: ignore[method-assign]

    def remove() -> None:
        if fn in fns:
            fns.remove(fn)
        if not fns:
            block.__dict__.pop(_HOOKS, None)
            block.__dict__.pop("forward", None)

    return remove
