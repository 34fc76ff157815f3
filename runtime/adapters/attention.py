"""The patchc attention function: exposes attention patterns without forcing eager globally.

It is registered in transformers' attention registry under two names, "patchc" (sdpa-style
masks: boolean or None) and "patchc_eager" (additive float masks, for models that run eager,
e.g. Gemma-2 with its logit soft-capping). An adapter switches a model to it only while a
pattern hook is installed (`acquire`/`release`, reference counted on the model) and restores the
model's own implementation afterwards.

Per attention module, with no pattern hook on that module the call goes to the model's original
function (sdpa, or the family's eager function), so unhooked layers are unchanged. With one, the
pattern is computed explicitly with exactly the operations of the families' eager functions
(scores * scaling, soft-cap, mask, float32 softmax), so logits under an identity pattern hook are
bit-identical to the eager model's; the hooks then read or replace the pattern before it
multiplies the values.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

try:  # 4.53+: masks are built per attention implementation, from a registry
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
except ImportError:  # before: the model builds an additive float mask for any other name
    AttentionMaskInterface = None  # type: ignore[assignment,misc]

from ..compat import legacy_scores
from .taps import HookFn, conform

SDPA_NAME = "patchc"
EAGER_NAME = "patchc_eager"
_HOOKS = "_patchc_pattern_hooks"  # list[(head | None, fn)] on an attention module
_FALLBACK = "_patchc_fallback"  # the function the module used before
_SWITCH = "_patchc_attn_switch"  # on the model: [users, its own implementation]


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    if n_rep == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


def _apply_pattern_hooks(p: Tensor, hooks: list[tuple[int | None, HookFn]]
                         ) -> tuple[Tensor, bool]:
    """The pattern after the hooks, and whether any of them replaced it."""
    changed = False
    for head, fn in list(hooks):
        act = p if head is None else p[:, head]
        what = "attn.pattern" if head is None else f"H{head}.pattern"
        res = fn(act)
        if res is None:
            continue
        res = conform(res, act, what)
        changed = True
        if head is None:
            p = res
        else:
            p = p.clone()
            p[:, head] = res
    return p, changed


def explicit_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    hooks: list[tuple[int | None, HookFn]],
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    own: Callable[[], tuple[Tensor, Tensor | None]] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T * scaling [softcap] + mask) v with the pattern exposed to `hooks`.

    query [b, h, q, d]; key/value [b, kv, k, d]; returns ([b, q, h, d], pattern [b, h, q, k]).
    `own()` is the model's own attention: where the hooks only read the pattern, it computes
    the output, so that reading a pattern changes no other value of the forward."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    q_len = query.shape[2]
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if attention_mask is None and is_causal and q_len > 1 and key.shape[2] > q_len:
        # What sdpa does with no mask (a prefill into an empty static cache): keep q_len keys.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)

    weights = legacy_scores(module, query, key, value)
    if weights is None:
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    sinks = kwargs.get("s_aux")
    if sinks is not None:  # attention sinks (GPT-OSS): a learned logit per head, dropped after
        return _with_sinks(module, weights, attention_mask, sinks, value, hooks, dropout, own)
    if softcap is not None:
        weights = weights / softcap
        weights = torch.tanh(weights)
        weights = weights * softcap
    if attention_mask is None:
        if is_causal and q_len > 1:
            allowed = torch.ones(q_len, key.shape[2], dtype=torch.bool, device=query.device).tril()
            weights = weights.masked_fill(~allowed, torch.finfo(weights.dtype).min)
    elif attention_mask.dtype == torch.bool:
        weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
    else:
        weights = weights + attention_mask[..., : key.shape[2]]
    pattern = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern, changed = _apply_pattern_hooks(pattern, hooks)
    if not changed and own is not None:
        return own()
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def _with_sinks(module: nn.Module, weights: Tensor, attention_mask: Tensor | None, sinks: Tensor,
                value: Tensor, hooks: list, dropout: float,
                own: Callable[[], tuple[Tensor, Tensor | None]] | None = None
                ) -> tuple[Tensor, Tensor | None]:
    """The GPT-OSS eager attention: each row's softmax also covers the head's sink logit, which
    is then dropped (so a row of the pattern sums to less than 1)."""
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask[..., : value.shape[2]]
    b, _, q_len, _ = weights.shape
    sink = sinks.reshape(1, -1, 1, 1).expand(b, -1, q_len, -1)
    combined = torch.cat([weights, sink], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    pattern = nn.functional.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]
    pattern, changed = _apply_pattern_hooks(pattern, hooks)
    if not changed and own is not None:  # reads only: the model's own attention (see above)
        return own()
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    out = torch.matmul(pattern.to(value.dtype), value).transpose(1, 2).contiguous()
    return out, pattern


def patchc_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """The registered attention function: explicit where a pattern hook is on, else fallback."""
    hooks = getattr(module, _HOOKS, None)
    fallback: Callable = getattr(module, _FALLBACK, None) or ALL_ATTENTION_FUNCTIONS["sdpa"]

    def own() -> tuple[Tensor, Tensor | None]:
        return fallback(module, query, key, value, attention_mask, *args, **kwargs)

    if not hooks:
        return own()
    explicit = kwargs
    if args:  # the transformers convention passes everything after the mask by keyword
        explicit = {**dict(zip(("scaling", "dropout"), args)), **kwargs}
    if explicit.get("softcap") is not None and _ignores_softcap(fallback):
        # (the model's own function leaves the soft-cap out, as transformers 4.x's sdpa does
        # for Gemma-2: the pattern it uses, read or written, is the one without it)
        explicit = {k: v for k, v in explicit.items() if k != "softcap"}
    return explicit_attention(module, query, key, value, attention_mask, hooks, own=own,
                              **explicit)


_SOFTCAP_IGNORED: dict[Callable, bool] = {}


def _ignores_softcap(fn: Callable) -> bool:
    """Whether an attention function computes the same with a soft-cap as without (asked
    once per function, of a small random attention)."""
    if fn not in _SOFTCAP_IGNORED:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, 3, 4, generator=g) * 4 for _ in range(3))
        probe = nn.Module()
        probe.is_causal = True
        probe.training = False
        try:
            with torch.no_grad():
                plain = fn(probe, q, k, v, None, scaling=1.0)[0]
                capped = fn(probe, q, k, v, None, scaling=1.0, softcap=0.5)[0]
            _SOFTCAP_IGNORED[fn] = bool(torch.equal(plain, capped))
        except Exception:  # noqa: BLE001 (a function that needs more: assume it applies it)
            _SOFTCAP_IGNORED[fn] = False
    return _SOFTCAP_IGNORED[fn]


def _register() -> None:
    AttentionInterface.register(SDPA_NAME, patchc_attention)
    AttentionInterface.register(EAGER_NAME, patchc_attention)
    if AttentionMaskInterface is not None:
        AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
        AttentionMaskInterface.register(EAGER_NAME, eager_mask)


_register()


def _eager_function(module: nn.Module) -> Callable:
    """The family's own eager attention function (module-level in its modeling file)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    return fn if fn is not None else ALL_ATTENTION_FUNCTIONS["sdpa"]


def _set_implementation(model: nn.Module, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except Exception:  # an old or unusual model: set the config field the modules read
        model.config._attn_implementation = name
    if model.config._attn_implementation != name:
        model.config._attn_implementation = name


def acquire(model: nn.Module, attn_modules: list[nn.Module]) -> None:
    """Switch `model` to the patchc attention function (reference counted on the model, so
    that several adapters of one model share one switch)."""
    state = model.__dict__.get(_SWITCH)
    if state is None:
        orig = model.config._attn_implementation
        if orig in (SDPA_NAME, EAGER_NAME):  # left over from an interrupted session
            orig = "eager" if orig == EAGER_NAME else "sdpa"
        eager = orig == "eager"
        for mod in attn_modules:
            setattr(mod, _FALLBACK, _eager_function(mod) if eager else None)
        _set_implementation(model, EAGER_NAME if eager else SDPA_NAME)
        state = model.__dict__[_SWITCH] = [0, orig]
    state[0] += 1


def release(model: nn.Module, attn_modules: list[nn.Module]) -> None:
    """Undo one `acquire`; the last one restores the model's own implementation."""
    state = model.__dict__.get(_SWITCH)
    if state is None:
        return
    state[0] -= 1
    if state[0] == 0:
        del model.__dict__[_SWITCH]
        _set_implementation(model, state[1] or "sdpa")
        for mod in attn_modules:
            mod.__dict__.pop(_FALLBACK, None)


def add_pattern_hook(module: nn.Module, head: int | None, fn: HookFn) -> Callable[[], None]:
    """Attach a pattern hook to one attention module; returns its remover."""
    hooks: list = module.__dict__.setdefault(_HOOKS, [])
    entry = (head, fn)
    hooks.append(entry)

    def remove() -> None:
        lst = module.__dict__.get(_HOOKS, [])
        if entry in lst:
            lst.remove(entry)
        if not lst and _HOOKS in module.__dict__:
            del module.__dict__[_HOOKS]

    return remove
