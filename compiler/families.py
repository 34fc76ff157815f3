"""The one family table: what the config and the module tree alone do not say, per model_type.

Both sides of patchc read it. `modelspec.spec_from_config` turns a config dict and its row into
the ModelSpec that `check` validates sites against (no torch); the runtime adapter
(runtime/adapters/structure.py) finds the modules of a loaded model by their conventional names
and takes the rest (norm kind, head layout of a fused projection, residual arrangement, logit
scaling, which sites are unavailable and why) from the same row. A family absent from the table
is refused by both with the same message, and `UNSUPPORTED` says why for the common kinds of
model that are not decoder-only transformers.

Most rows are short: the defaults describe a Llama-like block (RMSNorm, rotary positions,
separate q/k/v projections, a gated MLP, sequential residual adds).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .family_refusals import UNSUPPORTED  # why other model types are refused

# Config field names, in priority order (the first is the name an E211 error reports).
NAMES: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "n_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "d_mlp": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"),
    "n_ctx": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"),
}
_GPT2_NAMES = (("n_layers", ("n_layer",)), ("n_heads", ("n_head",)), ("d_model", ("n_embd",)),
               ("d_mlp", ("n_inner",)), ("n_ctx", ("n_positions", "n_ctx")))

MLP_SITES = ("mlp.pre", "mlp.post")
MOE_SITES = ("router", "expert.out", "expert.post")
_NO_PATTERN = ("pattern", "attn.pattern")


@dataclass(frozen=True, slots=True)
class Family:
    """One model_type's exceptions to the defaults."""

    norm: str = "rmsnorm"  # "layernorm" (centered) or "rmsnorm"
    positional: str = "rotary"  # rotary | learned | alibi | sinusoidal
    gated: bool = True  # the MLP is act(gate(x)) * up(x)
    parallel: bool = False  # attention and MLP read the same residual (no resid_mid)
    parallel_key: str | None = None  # a config flag that decides `parallel` (default above)
    names: tuple[tuple[str, tuple[str, ...]], ...] = ()  # config field names, overriding NAMES
    mlp_default_4x: bool = False  # a missing/null MLP width means 4 * d_model
    n_ctx_default: int = 0  # for models without a maximum length (ALiBi)
    kv: str = "gqa"  # gqa (num_key_value_heads) | multi_query | falcon
    # Runtime facts: how q/k/v sit in a fused projection ("blocked" [q|k|v], "grouped" per kv
    # group [q.. k v]; NeoX and Bloom are groups of one head), the norm weight offset (1 + w),
    # norms after the sub-blocks, a block-level MLP on [batch*pos, d] (OPT), a fixed epsilon.
    qkv: str = "blocked"
    rms_offset: float = 0.0
    post_norms: bool = False  # post_attention_layernorm normalizes the attention output
    flat_mlp: bool = False
    eps: float | None = None
    residual_multiplier: bool = False  # Granite: residual + out * m
    residual_inside: tuple[str, ...] = ()  # "attn"/"mlp": the sub-block adds the residual itself
    single_norm: bool = False  # one norm feeds attention and MLP (no ln2.scale of its own)
    tuple_blocks: bool = False  # blocks return a tuple (hidden, ...) rather than a tensor
    logit_scale: str | None = None  # config key: logits * value (Cohere)
    logit_div: str | None = None  # config key: logits / value (Granite)
    moe: str | None = None  # a mixture-of-experts MLP: its routing rule (runtime/adapters/moe.py)
    moe_names: tuple[str, str] = ("num_local_experts", "intermediate_size")  # count, width
    shared_expert: bool = False
    unavailable: tuple[tuple[str, str], ...] = ()  # site kind -> why the model lacks it
    mlp_on_block: bool = False  # the MLP's layers sit on the block (no mlp.in receiver)
    inferred: bool = False  # not a row of the table: read from the config (family_inference.py)
    note: str = ""

    def names_for(self, what: str) -> tuple[str, ...]:
        return dict(self.names).get(what, NAMES[what])

    def missing(self) -> dict[str, str]:
        """The site kinds this family never has, each with why (config-dependent ones are
        added by modelspec.spec_from_config)."""
        out = dict(self.unavailable)
        if self.moe:
            for kind in MLP_SITES:
                out.setdefault(kind, "the MLP is a mixture of experts: use Ll.Ee.post (one "
                                     "expert's neurons) or Ll.router")
        else:
            for kind in MOE_SITES:
                out.setdefault(kind, "the model has no mixture-of-experts MLP")
        if not self.shared_expert:
            out.setdefault("shared.out", "the model has no shared expert")
        if self.single_norm:
            out.setdefault(*SINGLE_NORM)
        if self.flat_mlp or self.mlp_on_block:  # an edge receiver needs the MLP as one module
            out.setdefault("mlp.in", "the MLP's layers sit on the block, not in one module")
        return out


def _no_pattern(module: str, how: str = "ALiBi or its own kernel"
                ) -> tuple[tuple[str, str], ...]:
    why = (f"{module} computes attention itself ({how}), not through transformers' attention "
           "functions, so the pattern cannot be exposed")
    return tuple((k, why) for k in _NO_PATTERN)


_LN = dict(norm="layernorm")
_PLAIN = dict(gated=False)
SINGLE_NORM = ("ln2.scale", "one norm feeds both attention and MLP: its scale is ln1.scale")
_POST_ONLY = (("ln1.scale", "the block has no pre-attention norm (norms come after each "
               "sub-block)"),
              ("ln2.scale", "the block has no pre-MLP norm (norms come after each sub-block)"))
_GEMMA = dict(rms_offset=1.0)

FAMILIES: dict[str, Family] = {
    # -- the Llama-like block: defaults ---------------------------------------------------
    "llama": Family(),
    "mistral": Family(note="sliding window lives in the masks"),
    "ministral": Family(),
    "ministral3": Family(),
    "qwen2": Family(note="q/k/v biases"),
    "qwen3": Family(note="QK-norm"),
    "helium": Family(),
    "seed_oss": Family(),
    "ernie4_5": Family(),
    "cwm": Family(),
    "smollm3": Family(note="no rotary on some layers"),
    "hunyuan_v1_dense": Family(note="QK-norm"),
    "glm": Family(note="fused gate_up, partial rotary"),
    "glm4": Family(note="fused gate_up, post-norms after attention and MLP"),
    "olmo": Family(norm="layernorm", eps=1e-5, note="non-parametric LayerNorm"),
    "olmo2": Family(post_norms=True, unavailable=_POST_ONLY, note="post-norms only, QK-norm"),
    "olmo3": Family(post_norms=True, unavailable=_POST_ONLY,
                    note="post-norms only, QK-norm, sliding layers"),
    "exaone4": Family(post_norms=True, unavailable=_POST_ONLY, note="post-norms, QK-norm"),
    "granite": Family(residual_multiplier=True, logit_div="logits_scaling",
                      note="embedding/residual/attention multipliers, scaled logits"),
    "gemma": Family(**_GEMMA, note="embedding scaled by sqrt(d), (1 + w) RMSNorm"),
    "gemma2": Family(**_GEMMA, post_norms=True, note="post-norms, soft-capped logits"),
    "gemma3_text": Family(**_GEMMA, post_norms=True,
                          note="post-norms, QK-norm, sliding/global layers"),
    "vaultgemma": Family(**_GEMMA),
    "phi3": Family(note="fused qkv_proj and gate_up_proj"),
    "bitnet": Family(note="sub-norms inside attention and MLP"),
    "cohere": Family(**_LN, parallel=True, single_norm=True, logit_scale="logit_scale",
                     note="parallel block, one LayerNorm, scaled logits"),
    "cohere2": Family(**_LN, parallel=True, single_norm=True, logit_scale="logit_scale",
                      note="parallel block, sliding/global layers"),
    "cohere_compass_text": Family(**_LN, parallel=True, single_norm=True,
                                  logit_scale="logit_scale",
                                  note="parallel block, one LayerNorm, sliding/global layers"),
    "stablelm": Family(**_LN, parallel_key="use_parallel_residual",
                       note="partial rotary, optional parallel block"),
    "starcoder2": Family(**_LN, **_PLAIN),
    "nemotron": Family(**_LN, **_PLAIN, rms_offset=1.0, note="LayerNorm1P, relu^2 MLP"),
    "arcee": Family(**_PLAIN, note="relu^2 MLP"),
    "apertus": Family(**_PLAIN, note="xIELU MLP, QK-norm"),
    "jais2": Family(**_LN, **_PLAIN),
    "persimmon": Family(**_LN, **_PLAIN, qkv="grouped", note="fused grouped qkv, QK LayerNorm"),
    "internlm3": Family(),
    "exaone": Family(),
    "iquestcoder": Family(),
    "apertus1p5_text": Family(**_PLAIN, note="xIELU MLP, QK-norm"),
    "nanochat": Family(**_PLAIN, note="relu^2 MLP, QK-norm, soft-capped logits"),
    "diffllama": Family(unavailable=tuple(
        (k, "differential attention: each head's output is the difference of two softmax "
            "patterns, combined after the attention function, so no one pattern per head "
            "exists") for k in _NO_PATTERN), note="differential attention"),
    "granite_swa": Family(residual_multiplier=True, logit_div="logits_scaling", unavailable=tuple(
        (k, "its attention sink rescales each head's output after the softmax, inside its own "
            "attention function, so the pattern cannot be exposed exactly") for k in _NO_PATTERN),
        note="multipliers, sliding/global layers, attention sinks"),
    "hyperclovax": Family(residual_multiplier=True, logit_scale="logits_scaling",
                          note="multipliers, optional norms after attention and MLP"),
    # -- learned positions, Conv1D or fused projections -----------------------------------
    "gpt2": Family(**_LN, **_PLAIN, positional="learned", names=_GPT2_NAMES, mlp_default_4x=True),
    "gpt_neo": Family(**_LN, **_PLAIN, positional="learned", mlp_default_4x=True,
                      names=(("n_layers", ("num_layers",)), ("n_heads", ("num_heads",))),
                      unavailable=_no_pattern("GPTNeoSelfAttention", "in its own `_attn`"),
                      note="local (sliding) and global layers, unscaled attention scores"),
    "gpt_bigcode": Family(**_LN, **_PLAIN, positional="learned", names=_GPT2_NAMES,
                          mlp_default_4x=True, kv="multi_query", note="multi-query attention"),
    "gptj": Family(**_LN, **_PLAIN, parallel=True, single_norm=True, names=_GPT2_NAMES,
                   mlp_default_4x=True, note="parallel block, partial rotary"),
    "gpt_neox": Family(**_LN, **_PLAIN, parallel=True, parallel_key="use_parallel_residual",
                       qkv="grouped", note="fused grouped qkv, partial rotary"),
    "phi": Family(**_LN, **_PLAIN, parallel=True, single_norm=True,
                  note="parallel block, partial rotary"),
    "opt": Family(**_LN, **_PLAIN, positional="learned", flat_mlp=True,
                  names=(("d_mlp", ("ffn_dim",)),), note="MLP on the block, [batch*pos, d]"),
    "biogpt": Family(**_LN, **_PLAIN, positional="learned", mlp_on_block=True),
    "xglm": Family(**_LN, **_PLAIN, positional="sinusoidal", mlp_on_block=True,
                   names=(("d_mlp", ("ffn_dim",)), ("n_heads", ("attention_heads",)),
                          ("n_layers", ("num_layers",))), unavailable=_no_pattern("XGLMAttention")),
    # -- ALiBi and multi-query ------------------------------------------------------------
    "bloom": Family(**_LN, **_PLAIN, positional="alibi", qkv="grouped", mlp_default_4x=True,
                    residual_inside=("attn", "mlp"), tuple_blocks=True,
                    n_ctx_default=2048, names=(("n_layers", ("n_layer",)),
                                               ("n_heads", ("n_head",))),
                    unavailable=_no_pattern("BloomAttention")),
    "falcon": Family(**_LN, **_PLAIN, parallel=True, parallel_key="parallel_attn", kv="falcon",
                     qkv="grouped", mlp_default_4x=True, n_ctx_default=2048,
                     unavailable=_no_pattern("FalconAttention"), tuple_blocks=True,
                     note="multi-query or grouped attention, rotary or ALiBi"),
    "mpt": Family(**_LN, **_PLAIN, positional="alibi", n_ctx_default=2048, mlp_default_4x=True,
                  names=(("d_mlp", ()),), residual_inside=("mlp",), tuple_blocks=True,
                  unavailable=_no_pattern("MptAttention")),
    # -- mixtures of experts --------------------------------------------------------------
    "mixtral": Family(moe="softmax_topk"),
    "qwen2_moe": Family(moe="softmax_topk", shared_expert=True,
                        moe_names=("num_experts", "moe_intermediate_size")),
    "qwen3_moe": Family(moe="softmax_topk", moe_names=("num_experts", "moe_intermediate_size")),
    "olmoe": Family(moe="softmax_topk", moe_names=("num_experts", "intermediate_size")),
    "gpt_oss": Family(moe="topk_softmax", note="attention sinks"),
    "mellum": Family(moe="softmax_topk", moe_names=("num_local_experts",
                                                     "moe_intermediate_size"),
                     note="QK-norm, sliding/global layers"),
    "minimax_m2": Family(moe="sigmoid_topk", note="sigmoid router with correction bias"),
    "aria_text": Family(moe="topk_softmax", shared_expert=True,
                        moe_names=("moe_num_experts", "intermediate_size"),
                        note="ungated shared experts"),
    "ernie4_5_moe": Family(moe="softmax_bias_topk", shared_expert=True,
                           moe_names=("moe_num_experts", "moe_intermediate_size"),
                           note="softmax router with correction bias, ungated shared experts"),
    "flint": Family(moe="sigmoid_topk", shared_expert=True,
                    moe_names=("num_experts", "moe_intermediate_size"),
                    note="sigmoid router, ungated shared expert, attention sinks, QK-norm, "
                         "rotary on sliding layers only"),
    "hy_v3": Family(moe="sigmoid_topk_scaled", shared_expert=True,
                    moe_names=("num_experts", "moe_intermediate_size"),
                    note="QK-norm, sigmoid router with correction bias and scaling factor, "
                         "ungated shared experts"),
    "hunyuan_v1_moe": Family(moe="softmax_topk", shared_expert=True,
                             moe_names=("num_experts", "intermediate_size"),
                             note="QK-norm, ungated shared MLP"),
}


def normalize(model_type: str) -> str:
    return str(model_type).lower().replace("-", "_")


# Families patchc maps only from a transformers release on: before it, the module computes
# attention its own way and no head can be tapped. (model_type: (release, why))
_SEPARATE_EXPERTS = ("before transformers 5.0, each expert is a module of its own and the "
                     "router a plain linear layer, which patchc's expert and router sites do "
                     "not map; upgrade transformers")
_ADDED_IN_5 = "this model type came with transformers 5.0; upgrade transformers"
_SEPARATE_EXPERTS_5_24 = ("in transformers 4.x, each expert is a module of its own and the MLP "
                         "routes the router's logits itself, which patchc's expert and router "
                         "sites do not map; patchc has verified its module layout from "
                         "transformers 5.24 on; upgrade transformers")
_VERIFIED_FROM_5_24 = ("this model type is not in transformers 4.x, and patchc has verified its "
                       "module layout from transformers 5.24 on; upgrade transformers")
SINCE: dict[str, tuple[tuple[int, int], str]] = {
    **{t: ((5, 0), _SEPARATE_EXPERTS) for t in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                                                "gpt_oss")},
    **{t: ((5, 0), _ADDED_IN_5) for t in ("ministral3", "cwm", "jais2")},
    **{t: ((5, 24), _VERIFIED_FROM_5_24) for t in (
        "internlm3", "exaone", "iquestcoder", "apertus1p5_text", "nanochat", "granite_swa",
        "hyperclovax", "mellum", "minimax_m2", "flint", "hy_v3", "cohere_compass_text")},
    **{t: ((5, 24), _SEPARATE_EXPERTS_5_24) for t in ("ernie4_5_moe", "hunyuan_v1_moe")},
    "aria_text": ((5, 24), "in transformers 4.x, Aria's experts run as one grouped matrix "
                           "product and its router is a plain linear layer, which patchc's "
                           "expert and router sites do not map; patchc has verified its module "
                           "layout from transformers 5.24 on; upgrade transformers"),
    "stablelm": ((5, 0), "before transformers 5.0, StableLM's attention classes compute "
                         "attention themselves, not through transformers' attention "
                         "functions, so its heads cannot be tapped; upgrade transformers"),
    "xglm": ((5, 3), "before transformers 5.3, XGLM adds its position offset into the position "
                     "ids it is given, in place, so reusing them shifts every later pass; "
                     "upgrade transformers"),
    "nemotron": ((5, 13), "before transformers 5.13, Nemotron's attention classes compute "
                          "attention themselves, not through transformers' attention "
                          "functions, so its heads cannot be tapped; upgrade transformers"),
    "gptj": ((5, 24), "before transformers 5.24, GPT-J computes attention in its own `_attn`, "
                      "not through transformers' attention functions, so its heads cannot be "
                      "tapped; upgrade transformers"),
}


@lru_cache(maxsize=1)
def installed_transformers() -> tuple[int, int]:
    """(major, minor) of the installed transformers, read from its metadata (no import), once
    per process: every family lookup asks."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (version("transformers").split(".") + ["0"])[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except (PackageNotFoundError, ValueError):
        return (0, 0)


def _too_old(model_type: str) -> str | None:
    since = SINCE.get(normalize(model_type))
    return since[1] if since and installed_transformers() < since[0] else None


def lookup(model_type: str) -> Family | None:
    """The family row of a model_type; None if it is not supported (here, or with the
    installed transformers)."""
    if _too_old(model_type):
        return None
    return FAMILIES.get(normalize(model_type))


def refused(model_type: str) -> str | None:
    """Why the table refuses a model_type outright (None: it does not name it, or lists it)."""
    raw = str(model_type)
    return UNSUPPORTED.get(raw) or UNSUPPORTED.get(normalize(raw)) or _too_old(raw)


def why_unsupported(model_type: str, config: dict | None = None,
                    not_inferred: str | None = None) -> str:
    """The reason a model_type is refused, for E210/E401: one message for check and runtime.
    `not_inferred`: why no row could be inferred from its config (family_inference.py)."""
    raw = str(model_type)
    reason = refused(raw)
    cfg = config or {}
    if reason is None and cfg.get("is_encoder_decoder"):
        reason = "an encoder-decoder model, not a decoder-only causal LM"
    if reason is None and any(k in cfg for k in ("state_size", "ssm_cfg", "d_state")):
        reason = "a state-space model: it has no attention heads"
    what = f"model_type '{raw}' is not supported"
    if reason:
        what += f": {reason}"
    elif not_inferred:
        what += f" (not in patchc's family table, and its layout cannot be inferred: " \
                f"{not_inferred})"
    else:
        what += " (not in patchc's family table: its module layout has not been verified)"
    here = sorted(f for f in FAMILIES if not _too_old(f))
    return f"{what}; supported families: {', '.join(here)}"


__all__ = ["FAMILIES", "NAMES", "SINCE", "UNSUPPORTED", "Family", "installed_transformers",
           "lookup", "normalize", "refused", "why_unsupported"]
