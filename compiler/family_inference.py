"""A family row for a model_type the table does not list: a decoder-only causal LM released
after this version of patchc (or added to transformers since).

Most new decoder-only models reuse a known block: pre-norms, attention with separate or fused
q/k/v projections, a plain or gated MLP, the two residual adds. `infer_family` reads what the
config says of it (the norm's epsilon name, rotary settings, a parallel-block flag) and returns
a row marked `inferred`. That row is a guess until the weights are loaded: the runtime then
tries it, and the variants the config cannot rule out (a parallel block, norms after the
sub-blocks), on the loaded model and keeps the first whose every site adds up
(runtime/adapters/inferred.py); if none does, the run is refused before any value is computed.

A mixture of experts gets the expert count and width from the config and a placeholder
routing rule: the runtime keeps the rule (of those patchc knows, runtime/adapters/moe.py) that
reproduces the router's own weights and choices from its logits, and refuses the model if
none does. This needs transformers 5.6 or later, whose routers return their logits.

Not inferred (refused with a reason): models whose config does not name a `...ForCausalLM`
architecture, and the kinds `why_unsupported` already names.
"""

from __future__ import annotations

from typing import Any

from .families import NAMES, Family, installed_transformers, lookup, refused, why_unsupported

# Config fields that mark a mixture of experts (any non-zero value).
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts",
            "num_experts_per_tok", "moe_intermediate_size", "moe_k", "moe_topk")
_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "moe_k", "moe_topk", "top_k")
_SHARED = ("shared_expert_intermediate_size", "num_shared_experts", "n_shared_experts",
           "moe_num_shared_experts", "num_shared_expert")
_ROUTER_LOGITS = (5, 6)  # from this release on, every router returns its logits first
_LAYERNORM_EPS = ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")
_PARALLEL_KEYS = ("use_parallel_residual", "parallel_attn", "parallel_residual", "parallel_block")
NOTE = "not in the family table: layout inferred from the config, verified on the weights"


def causal_lm(config: dict[str, Any]) -> bool:
    """Whether the config names a decoder-only causal LM class (`...ForCausalLM`, or
    `...LMHeadModel` as GPT-2's lineage calls it)."""
    archs = config.get("architectures") or ()
    return not config.get("is_encoder_decoder") and \
        any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def why_not_inferred(config: dict[str, Any]) -> str | None:
    """Why a config outside the table cannot get an inferred row (None: it can)."""
    if not causal_lm(config):
        return "its config names no `...ForCausalLM` architecture"
    if _moe(config):
        if installed_transformers() < _ROUTER_LOGITS:
            return ("a mixture of experts outside the family table is inferred from "
                    "transformers 5.6 on (its routers return their logits)")
        for what, keys in (("expert count", _EXPERT_COUNTS), ("experts per token", _TOP_K)):
            if not any(config.get(k) for k in keys):
                return f"a mixture of experts whose config gives no {what} ({', '.join(keys)})"
    for what in ("n_layers", "n_heads", "d_model"):
        if not any(config.get(k) for k in NAMES[what]):
            return f"its config has none of {', '.join(NAMES[what])}"
    return None


def infer_family(config: dict[str, Any]) -> Family | None:
    """The inferred row of a config outside the table (None: see why_not_inferred)."""
    if why_not_inferred(config) is not None:
        return None
    norm = "layernorm" if "rms_norm_eps" not in config and \
        any(k in config for k in _LAYERNORM_EPS) else "rmsnorm"
    rotary = any(k.startswith(("rope", "rotary")) or k == "partial_rotary_factor"
                 for k in config)
    parallel = any(bool(config.get(k)) for k in _PARALLEL_KEYS)
    # (no maximum length: ALiBi-style positions; no prompt is then too long for `check`)
    n_ctx = 0 if any(config.get(k) for k in NAMES["n_ctx"]) else 1 << 20
    moe: dict[str, Any] = {}
    if _moe(config):  # (the rule is settled on the weights)
        count = next(k for k in _EXPERT_COUNTS if config.get(k))
        width = "moe_intermediate_size" if config.get("moe_intermediate_size") else \
            "intermediate_size"
        moe = dict(moe="softmax_topk", moe_names=(count, width),
                   shared_expert=any(bool(config.get(k)) for k in _SHARED))
    return Family(norm=norm, positional="rotary" if rotary else "learned", parallel=parallel,
                  mlp_default_4x=not any(config.get(k) for k in NAMES["d_mlp"]),
                  n_ctx_default=n_ctx, inferred=True, note=NOTE, **moe)


def _moe(config: dict[str, Any]) -> bool:
    """A mixture of experts: an expert field set, unless the config switches experts off
    (`is_moe: false` beside a default expert count)."""
    return config.get("is_moe") is not False and any(config.get(k) for k in MOE_KEYS)


def family_for(model_type: str, config: dict[str, Any] | None = None) -> Family | None:
    """The table's row of a model_type; else, given its config, an inferred row when the
    type is neither listed nor refused for a reason (None: not supported)."""
    fam = lookup(model_type)
    if fam is not None or config is None or refused(model_type):
        return fam
    return infer_family(config)


def why_refused(model_type: str, config: dict[str, Any] | None = None) -> str:
    """why_unsupported, with why no row could be inferred from the config (if given)."""
    return why_unsupported(model_type, config,
                           why_not_inferred(config) if config is not None else None)


__all__ = ["MOE_KEYS", "NOTE", "causal_lm", "family_for", "infer_family", "why_not_inferred",
           "why_refused"]
