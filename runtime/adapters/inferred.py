"""The layout of a model whose family the table does not list, checked on its own weights.

compiler/family_inference.py reads a row from the config; what the config cannot say (whether
the block is parallel, whether `post_attention_layernorm` normalizes the attention's output
or the MLP's input, the norm's exact formula) is settled here, on the loaded model: each
candidate row is tried in one small forward, reading its sites through the adapter itself,
and kept only if every identity its sites rely on holds:

- reading every site leaves the logits bit for bit;
- each block's output is resid_pre + attn.out + mlp.out, and the next block's input;
- the MLP side reads resid_pre + attn.out (a sequential block) or resid_pre (a parallel one);
- attn.out is the output projection of attn.z (heads decompose it);
- the norms compute what the ln*.scale sites assume (centered or not, the weight's offset);
- the logits are the final norm and unembedding of the last block's output.

Attention patterns are checked apart: the pattern, times the values, must give attn.z; if it
does not (attention sinks, or a mechanism of the model's own), the pattern sites are made
unavailable with that reason while every other site stays. If no candidate holds, the model
is refused (E401) with the first identity that failed: a site that does not mean what its
name says would give wrong numbers.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.families import SINGLE_NORM, Family

from . import moe
from .base import Adapter

_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, tuple[Family, dict[str, str]]]" = \
    weakref.WeakKeyDictionary()
_PATTERN_KINDS = ("pattern", "attn.pattern")
_TOKENS = 8


def verified(model: nn.Module) -> Adapter:
    """The adapter of a model whose family row was inferred, with the row that holds on
    its weights (found once per model object); E401 if none does."""
    got = _VERIFIED.get(model)
    if got is None:
        got = _VERIFIED[model] = _settle(model)
    fam, problems = got
    ad = Adapter(model, fam)
    if problems:
        ad.s = replace(ad.s, problems={**ad.s.problems, **problems})
    return ad


def layout_of(model: nn.Module) -> dict[str, Any] | None:
    """The layout settled for a model whose family was inferred (None: a table row, or not
    settled in this process), for the manifest."""
    got = _VERIFIED.get(model)
    if got is None:
        return None
    fam, problems = got
    out: dict[str, Any] = {"model_type": getattr(model.config, "model_type", None),
                           "norm": fam.norm, "rms_offset": fam.rms_offset,
                           "parallel": fam.parallel, "post_norms": fam.post_norms,
                           "gated_mlp": fam.gated, "fused_qkv": fam.qkv}
    if fam.moe:
        out["routing"] = fam.moe
    out["unavailable"] = dict(sorted(problems.items()))
    return out


def _settle(model: nn.Module) -> tuple[Family, dict[str, str]]:
    was = model.training  # (dropout would make two forwards differ: settle as it evaluates)
    model.eval()
    try:
        return _settle_eval(model)
    finally:
        model.train(was)


def _settle_eval(model: nn.Module) -> tuple[Family, dict[str, str]]:
    first = Adapter(model)
    if first.fam.moe:  # (a shared expert the config did not count is found in the tree)
        first = Adapter(model, replace(first.fam, shared_expert=True))
        with torch.no_grad():
            first = Adapter(model, replace(first.fam, moe=_routing_rule(first)))
    failures: list[tuple[int, str]] = []
    for fam in _candidates(first):
        try:
            ad = Adapter(model, fam)
            with torch.no_grad():
                why = _layout_fails(ad)
        except RuntimeInterventionError as e:
            why = (0, e.message)
        except Exception as e:  # noqa: BLE001 (a layout its hooks do not fit: the next one)
            why = (0, f"its blocks do not run with hooks placed as this layout expects "
                      f"({type(e).__name__}: {e})")
        if why is None:
            with torch.no_grad():
                return fam, {**_norm_problems(ad), **_pattern_problems(ad)}
        failures.append(why)
    # The candidate that held longest is the nearest: its failure says what is different.
    stage, why = max(failures, key=lambda f: f[0])
    raise RuntimeInterventionError(
        "E401", f"model_type '{first.family}' is not in patchc's family table, and the layout "
                f"inferred from its config does not hold on the loaded model: {why}. Its "
                "sites would not mean what their names say, so nothing was run")


def _candidates(ad: Adapter) -> list[Family]:
    """The config's row with the norm the modules show, then the variants the config cannot
    rule out: norms after the sub-blocks (a `post_attention_layernorm` beside a
    `pre_feedforward_layernorm`, or no pre-attention norm), a parallel block, and the head
    layout of a fused q/k/v projection ([q | k | v], or per kv group)."""
    gated = bool(ad.s.gate or ad.s.gate_up) if not ad.fam.moe else ad.fam.gated
    fam = replace(ad.fam, gated=gated, **_norm_kind(ad))
    block = ad.layer(0)
    names = {n for n, _ in block.named_children()}
    post_first = "post_attention_layernorm" in names and (
        "pre_feedforward_layernorm" in names or "input_layernorm" not in names)
    layouts = ("blocked", "grouped") if ad.s.qkv else ("blocked",)
    out = []
    for post in (post_first, not post_first):
        if post and "post_attention_layernorm" not in names:
            continue
        for parallel in (fam.parallel, not fam.parallel):
            out += [replace(fam, post_norms=post, parallel=parallel, qkv=q) for q in layouts]
    return out


def _routing_rule(ad: Adapter) -> str:
    """The routing rule (moe.RULES) that gives every router's own weights and chosen experts
    from its logits, in one forward; E401 if none does."""
    calls: list[tuple[nn.Module, tuple, tuple]] = []
    with contextlib.ExitStack() as stack:
        for layer in range(ad.n_layers):
            router = ad._at(layer, ad.s.router)
            hook = router.register_forward_hook(
                lambda m, args, out: calls.append((m, args, out)))  # noqa: B023
            stack.callback(hook.remove)
        ad.model(_ids(ad))
    for exact in (True, False):  # (two rules can agree up to rounding: the exact one first)
        for rule in moe.RULES:
            if calls and all(_same_choice(rule, *call, exact=exact) for call in calls):
                return rule
    raise RuntimeInterventionError(
        "E401", f"model_type '{ad.family}' is not in patchc's family table, and its experts are "
                "not chosen by any routing rule patchc knows (" + ", ".join(moe.RULES) + "): a "
                "router site could not be re-routed as the model routes, so nothing was run")


def _same_choice(rule: str, router: nn.Module, args: tuple, out: Any, exact: bool) -> bool:
    """Whether `rule` turns the router's logits into its own weights and experts (bit for
    bit, or up to rounding)."""
    if not isinstance(out, tuple) or len(out) < 3:
        return False
    logits, weights, index = out[0], out[1], out[2]
    try:
        w, i = moe.reroute(router, rule, logits, weights.dtype, args)
    except Exception:  # noqa: BLE001 (a rule that needs what this router lacks)
        return False
    if i.shape != index.shape:
        return False
    # (the same experts, each with the same weight, in whatever order)
    mine, theirs = i.sort(-1), index.sort(-1)
    if not torch.equal(mine.values, theirs.values):
        return False
    w, weights = w.gather(-1, mine.indices), weights.gather(-1, theirs.indices)
    return torch.equal(w, weights) if exact else _close(w, weights, weights.dtype)


def _norm_kind(ad: Adapter) -> dict[str, Any]:
    """The final norm's formula, found by trying it: LayerNorm or RMSNorm, weight w or 1 + w."""
    norm = ad.ln_final()
    weight = getattr(norm, "weight", None)
    if weight is None or not isinstance(weight, Tensor):
        return {}
    # (a mean far from 0: centering then changes the output by far more than rounding, also
    # in 16-bit types; the formula that fits best, if it fits)
    x = torch.randn(3, ad.d_model, generator=torch.Generator().manual_seed(0)) + 3.0
    x = x.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        try:
            want = _output(norm(x)).float()
        except Exception:  # noqa: BLE001 (offloaded weights, another input shape: as read)
            return {}
        fits = []
        for kind in ("rmsnorm", "layernorm"):
            for offset in (0.0, 1.0):
                got = _formula(x, kind, weight.float() + offset, getattr(norm, "bias", None),
                               ad.norm_eps(norm))
                fits.append((float((got - want).abs().max()), kind, offset, got))
        err, kind, offset, got = min(fits, key=lambda f: f[0])
        if _close(got, want, weight.dtype):
            return {"norm": kind, "rms_offset": offset}
    return {}


def _formula(x: Tensor, kind: str, w: Tensor, bias: Any, eps: float) -> Tensor:
    xf = x.float()
    xc = xf - xf.mean(-1, keepdim=True) if kind == "layernorm" else xf
    out = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps) * w
    return out + bias.float() if isinstance(bias, Tensor) else out


def _layout_fails(ad: Adapter) -> tuple[int, str] | None:
    """The first identity the adapter's sites break on this model, with how far the checks
    got (None: all hold)."""
    ids = _ids(ad)
    plain = ad.model(ids).logits
    kinds = ["resid_pre", "attn.out", "mlp.out", "resid_post", "attn.z", "attn.v"]
    if not ad.parallel_attn:
        kinds.append("resid_mid")
    got: dict[tuple[str, int], Tensor] = {}
    seen: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
    sites = [(k, layer, None, _keep(got, (k, layer))) for k in kinds
             for layer in range(ad.n_layers)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(ad.hooks(sites))
        for layer in range(ad.n_layers):
            if ad.s.ln1:
                _watch(stack, ad.ln1(layer), seen, ("ln1", layer))
            if ad.parallel_attn and ad.s.ln2:
                _watch(stack, ad.resid_mid_module(layer), seen, ("mid", layer))
        logits = ad.model(ids).logits
    if not torch.equal(logits, plain):
        return 1, "reading its sites changes its logits"
    dtype = plain.dtype
    for layer in range(ad.n_layers):
        pre, attn, mlp = got["resid_pre", layer], got["attn.out", layer], got["mlp.out", layer]
        post = got["resid_post", layer]
        where = f"in block {layer}"
        if not _adds_up([pre, attn, mlp], post, dtype):
            return 2, (f"{where}, resid_pre + attn.out + mlp.out is not the block's output (it "
                       "adds something else: norms after the sub-blocks, or a scaled residual)")
        if layer + 1 < ad.n_layers and not torch.equal(got["resid_pre", layer + 1], post):
            return 3, f"block {layer + 1} does not read block {layer}'s output"
        if not ad.parallel_attn and not _adds_up([pre, attn], got["resid_mid", layer], dtype):
            return 4, f"{where}, the MLP does not read resid_pre + attn.out (a parallel block?)"
        if ad.parallel_attn and ("mid", layer) in seen and \
                not _close(seen["mid", layer][0], pre, dtype):
            return 4, f"{where}, the MLP does not read resid_pre (a sequential block?)"
        if not (ad.s.post_attn or ad.s.attn_out) and \
                not _close(_output(ad.o_proj(layer)(got["attn.z", layer])), attn, dtype):
            return 5, f"{where}, attn.out is not the output projection of the heads' z"
        if ad.s.qkv and not _close(_first_values(ad, got["attn.v", layer]),
                                   got["attn.z", layer][:, :1], dtype):
            return 6, (f"{where}, the first token's attention output is not its value: the "
                       f"columns of {ad.s.qkv} are not laid out as this layout reads them")
        if ("ln1", layer) in seen:
            x, out = seen["ln1", layer]
            norm = ad.ln1(layer)
            want = _formula(x, ad.norm, ad.norm_weight(norm).float()  # type: ignore[union-attr]
                            if ad.norm_weight(norm) is not None else torch.ones(()),
                            getattr(norm, "bias", None), ad.norm_eps(norm))
            if not _close(want, out, dtype):
                return 7, (f"{where}, {ad.s.ln1} does not compute a {ad.norm} with its weight, "
                           "so ln1.scale would be wrong")
    if ad.n_experts:
        why = _experts_fail(ad, ids)
        if why is not None:
            return 8, why
    last = got["resid_post", ad.n_layers - 1]
    if not _close(ad.unembed(last), plain, dtype):
        return 9, ("the logits are not the final norm and unembedding of the last block's "
                   "output (a logit scale, soft-cap or extra layer the family table would name)")
    return None


def _experts_fail(ad: Adapter, ids: Tensor) -> str | None:
    """Whether the experts' contributions (and the shared expert's) add up to mlp.out."""
    got: dict[tuple, Tensor] = {}
    kinds = [("expert.out", e) for e in range(ad.n_experts)]
    if not ad.missing("shared.out"):
        kinds.append(("shared.out", None))
    sites = [(k, layer, e, _keep(got, (k, layer, e))) for k, e in kinds
             for layer in range(ad.n_layers)]
    sites += [("mlp.out", layer, None, _keep(got, ("mlp.out", layer, None)))
              for layer in range(ad.n_layers)]
    with ad.hooks(sites):
        ad.model(ids)
    for layer in range(ad.n_layers):
        parts = [got[k, layer, e] for k, e in kinds]
        if not _adds_up(parts, got["mlp.out", layer, None], got["mlp.out", layer, None].dtype):
            return (f"in block {layer}, the experts' contributions"
                    f"{'' if ad.missing('shared.out') else ' and the shared expert'} do not "
                    "add up to mlp.out")
    return None


def _first_values(ad: Adapter, v: Tensor) -> Tensor:
    """What each head's z is at the first position, where causal attention has one key:
    its kv head's value there, [b, 1, heads * d_head]."""
    b = v.shape[0]
    first = v[:, :1].reshape(b, 1, ad.n_kv_heads, ad.d_head)
    r = ad.n_heads // ad.n_kv_heads
    return first.repeat_interleave(r, dim=2).reshape(b, 1, -1)


def _norm_problems(ad: Adapter) -> dict[str, str]:
    out = {}
    if not ad.s.ln1:
        out["ln1.scale"] = "the block has no pre-attention norm (norms come after each sub-block)"
    if not ad.s.ln2:
        out["ln2.scale"] = "the block has no pre-MLP norm (norms come after each sub-block)"
    elif ad.s.ln2 == ad.s.ln1:
        out[SINGLE_NORM[0]] = SINGLE_NORM[1]
    return out


def _pattern_problems(ad: Adapter) -> dict[str, str]:
    """Pattern sites made unavailable, with why, when the pattern patchc computes does not
    give this model's attention output."""
    if ad.missing("pattern"):
        return {}
    ids = _ids(ad)
    got: dict[tuple[str, int], Tensor] = {}
    sites = [(k, layer, None, _keep(got, (k, layer)))
             for k in ("attn.pattern", "attn.v", "attn.z") for layer in range(ad.n_layers)]
    try:
        with ad.hooks(sites):
            ad.model(ids)
    except RuntimeInterventionError as e:
        return {k: e.message for k in _PATTERN_KINDS}
    r = ad.n_heads // ad.n_kv_heads
    if any(("attn.pattern", layer) not in got for layer in range(ad.n_layers)):
        why = ("its attention does not go through transformers' attention functions, so the "
               "pattern cannot be exposed")
        return {k: why for k in _PATTERN_KINDS}
    for layer in range(ad.n_layers):
        p = got["attn.pattern", layer].float()  # [b, heads, q, k]
        b, s = p.shape[0], p.shape[2]
        v = got["attn.v", layer].float().view(b, s, ad.n_kv_heads, ad.d_head).transpose(1, 2)
        z = (p @ v.repeat_interleave(r, dim=1)).transpose(1, 2).reshape(b, s, -1)
        if not _close(z, got["attn.z", layer], got["attn.z", layer].dtype):
            why = ("this model's attention output is not its pattern times its values (an "
                   "attention sink or a mechanism of its own), so the pattern it would expose "
                   "is not the one it uses")
            return {k: why for k in _PATTERN_KINDS}
    return {}


def _ids(ad: Adapter) -> Tensor:
    from patchc.runtime.loading import input_device

    n = min(_TOKENS, ad.n_ctx)
    ids = (torch.arange(2 * n).view(2, n) * 7 + 3) % ad.vocab_size
    return ids.to(input_device(ad.model))


def _keep(got: dict, key: tuple):
    def fn(act: Tensor) -> None:
        got[key] = act.detach().clone()
    return fn


def _watch(stack: contextlib.ExitStack, module: nn.Module, seen: dict, key: tuple) -> None:
    """Record the module's first input and its output."""
    def post(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        seen[key] = (x.detach().float(), _output(out).detach().float())
    stack.callback(module.register_forward_hook(post, with_kwargs=True).remove)


def _output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _close(got: Tensor, want: Tensor, dtype: torch.dtype) -> bool:
    """Equal up to rounding, token by token: relative to the largest value of each row (a
    token's vector), 1e-4 in float32, 3e-2 in 16-bit types. (Per row: a token with huge
    activations must not set the tolerance of the others.)"""
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    got, want = got.float(), want.float().to(got.device)
    if got.shape != want.shape:
        return False
    return bool(((got - want).abs().amax(-1) <= tol * (want.abs().amax(-1) + 1e-6)).all())


def _adds_up(parts: list[Tensor], total: Tensor, dtype: torch.dtype) -> bool:
    """Whether the parts sum to `total` feature by feature, up to the rounding of adding
    them in `dtype` (a few units in the last place of the terms' magnitudes). Element by
    element: one feature of huge magnitude (a "massive activation") must not hide a part
    that is scaled, or missing, in all the others."""
    if any(p.shape != total.shape for p in parts):
        return False
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    total = total.float()
    ps = [p.float().to(total.device) for p in parts]
    room = 8 * eps * (sum(p.abs() for p in ps) + total.abs()) + 1e-6
    return bool(((sum(ps) - total).abs() <= room).all())


__all__ = ["layout_of", "verified"]
