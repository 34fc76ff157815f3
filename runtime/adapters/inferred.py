"""The layout of a model whose family the table does not list, checked on its own weights.

compiler/family_inference.py reads a row from the config; what the config cannot say (whether
the block is parallel, whether `post_attention_layernorm` normalizes the attention's output
or the MLP's input, the norm's exact formula, a fused projection's head layout, a mixture of
experts' routing rule) is settled here, on the loaded model: each candidate row is tried in
one small forward, reading its sites through the adapter itself, and kept only if every
identity its sites rely on holds (layout_checks.py lists them).

Some parts are checked apart, and only their sites go when they fail: the pattern, times the
values, must give attn.z (not with attention sinks, or a mechanism of the model's own), and
the attention must read its input through q, k and v alone (edges into q, k and v patch
only those; a gate reading the same input would not see the patch). If no candidate holds,
the model is refused (E401) with the identity that failed: a site that does not mean what
its name says would give wrong numbers.
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
from .layout_checks import close, formula, head_values, keep, layout_fails, output, probe_ids

_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, tuple[Family, dict[str, str]]]" = \
    weakref.WeakKeyDictionary()
_PATTERN_KINDS = ("pattern", "attn.pattern")


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
                why = layout_fails(ad)
        except RuntimeInterventionError as e:
            why = (0, e.message)
        except Exception as e:  # noqa: BLE001 (a layout its hooks do not fit: the next one)
            why = (0, f"its blocks do not run with hooks placed as this layout expects "
                      f"({type(e).__name__}: {e})")
        if why is None:
            try:
                with torch.no_grad():
                    return fam, {**_norm_problems(ad), **_pattern_problems(ad),
                                 **_receiver_problems(ad)}
            except Exception as e:  # noqa: BLE001 (sizes the config gives wrongly, say)
                why = (0, f"its attention does not run as its sizes say ({type(e).__name__}: "
                          f"{e})")
        failures.append(why)
    # The config's own reading first; and the variant that held longest, if another, is the
    # nearest: its failure says what else is different.
    why = failures[0][1]
    deepest = max(failures, key=lambda f: f[0])[1]
    if deepest != why:
        why += f" (as another layout: {deepest})"
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
        ad.model(probe_ids(ad, rows=4, tokens=32))  # (more tokens: a rule that
        # agrees on a few could still route others differently)
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
    return torch.equal(w, weights) if exact else close(w, weights, weights.dtype)


def _norm_kind(ad: Adapter) -> dict[str, Any]:
    """The final norm's formula, found by trying it: LayerNorm or RMSNorm, weight w or 1 + w."""
    norm = ad.ln_final()
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, Tensor):  # (a norm without a weight: OLMo's)
        param = next(ad.model.parameters())
        weight = torch.ones(ad.d_model, dtype=param.dtype, device=param.device)
    # (a mean far from 0: centering then changes the output by far more than rounding, also
    # in 16-bit types; the formula that fits best, if it fits)
    x = torch.randn(3, ad.d_model, generator=torch.Generator().manual_seed(0)) + 3.0
    x = x.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        try:
            want = output(norm(x)).float()
        except Exception:  # noqa: BLE001 (offloaded weights, another input shape: as read)
            return {}
        fits = []
        for kind in ("rmsnorm", "layernorm"):
            for offset in (0.0, 1.0):
                got = formula(x, kind, weight.float() + offset, getattr(norm, "bias", None),
                               ad.norm_eps(norm))
                fits.append((float((got - want).abs().max()), kind, offset, got))
        err, kind, offset, got = min(fits, key=lambda f: f[0])
        if close(got, want, weight.dtype):
            return {"norm": kind, "rms_offset": offset}
    return {}


def _receiver_problems(ad: Adapter) -> dict[str, str]:
    """Edges into q, k and v unavailable when the attention reads its input through another
    projection too (a gate): an edge patches q, k and v's input alone."""
    attn, proj = ad.attn(0), {ad.s.q, ad.s.k, ad.s.v, ad.s.qkv, ad.s.o_proj}
    mine = {id(ad._at(0, p)) for p in proj if p}
    others = [name for name, m in attn.named_modules() if id(m) not in mine and
              _in_width(m) == ad.d_model]
    if not others:
        return {}
    why = (f"the attention also reads its input through {others[0]}, which an edge into q, k "
           "or v does not patch")
    return {k: why for k in ("q.in", "k.in", "v.in")}


def _in_width(m: nn.Module) -> int | None:
    """The input width of a linear layer (nn.Linear, or GPT-2's Conv1D [in, out])."""
    w = getattr(m, "weight", None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        return None
    return int(w.shape[0] if type(m).__name__ == "Conv1D" else w.shape[1])


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
    ids = probe_ids(ad)
    got: dict[tuple[str, int], Tensor] = {}
    sites = [(k, layer, None, keep(got, (k, layer)))
             for k in ("attn.pattern", "attn.v", "attn.z") for layer in range(ad.n_layers)]
    try:
        with ad.hooks(sites):
            ad.model(ids)
    except RuntimeInterventionError as e:
        return {k: e.message for k in _PATTERN_KINDS}
    if any(("attn.pattern", layer) not in got for layer in range(ad.n_layers)):
        why = ("its attention does not go through transformers' attention functions, so the "
               "pattern cannot be exposed")
        return {k: why for k in _PATTERN_KINDS}
    for layer in range(ad.n_layers):
        p = got["attn.pattern", layer].float()  # [b, heads, q, k]
        v = head_values(ad, got["attn.v", layer].float())
        z = (p @ v).transpose(1, 2).reshape(p.shape[0], p.shape[2], -1)
        if not close(z, got["attn.z", layer], got["attn.z", layer].dtype):
            why = ("this model's attention output is not its pattern times its values (an "
                   "attention sink or a mechanism of its own), so the pattern it would expose "
                   "is not the one it uses")
            return {k: why for k in _PATTERN_KINDS}
    return {}


__all__ = ["layout_of", "verified"]
