"""ModelSpec: the shape of a model, read from its HF config alone (no weights, no torch).

`check.py` validates sites against it before anything is loaded; the runtime adapters build
the same ModelSpec from a loaded model's config, so the two can never disagree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import CheckError


@dataclass(frozen=True, slots=True)
class ModelSpec:
    family: str  # normalized model_type: gpt2, gpt_neox, llama, qwen2, mistral, gemma, ...
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads without grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int  # maximum positions
    parallel_attn: bool  # attention and MLP read the same residual (NeoX, Phi-2): no resid_mid
    gated_mlp: bool  # act(gate(x)) * up(x)
    norm: str  # "layernorm" or "rmsnorm"
    positional: str  # "learned" or "rotary"
    exposes_pattern: bool = True  # False under a fused kernel forced by the config

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.d_head

    @property
    def d_kv(self) -> int:
        return self.n_kv_heads * self.d_head

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    def kv_head(self, head: int) -> int:
        """The kv head that query head `head` reads under grouped-query attention."""
        return head // (self.n_heads // self.n_kv_heads)

    def dim_of(self, attr: str) -> int:
        """Size of a site kind's feature axis, by the `SiteKind.dim` attribute name."""
        if attr == "1":
            return 1
        return int(getattr(self, attr))


# ---------------------------------------------------------------------------------------------
# Building a ModelSpec from an HF config dict (config.json, or `SomeConfig(...).to_dict()`)
# ---------------------------------------------------------------------------------------------

# Field names in priority order; the first one is the name an E211 error reports.
_GPT2_NAMES = {
    "n_layers": ("n_layer", "num_hidden_layers"),
    "n_heads": ("n_head", "num_attention_heads"),
    "d_model": ("n_embd", "hidden_size"),
    "d_mlp": ("n_inner", "intermediate_size"),
    "n_ctx": ("n_positions", "n_ctx", "max_position_embeddings"),
}
_HF_NAMES = {
    "n_layers": ("num_hidden_layers", "n_layer"),
    "n_heads": ("num_attention_heads", "n_head"),
    "d_model": ("hidden_size", "n_embd"),
    "d_mlp": ("intermediate_size",),
    "n_ctx": ("max_position_embeddings", "n_positions"),
}
# OPT calls its MLP width `ffn_dim`.
_OPT_NAMES = {**_HF_NAMES, "d_mlp": ("ffn_dim", "intermediate_size")}


@dataclass(frozen=True, slots=True)
class _Family:
    names: dict[str, tuple[str, ...]]
    norm: str
    positional: str
    gated_mlp: bool
    parallel_attn: bool
    mlp_default_4x: bool = False  # GPT-2 and GPT-J write `n_inner: null` for 4 * d_model


_RMS_GATED = _Family(_HF_NAMES, "rmsnorm", "rotary", gated_mlp=True, parallel_attn=False)

FAMILIES: dict[str, _Family] = {
    "gpt2": _Family(_GPT2_NAMES, "layernorm", "learned", False, False, mlp_default_4x=True),
    # GPT-J: one ln_1 feeds both attention and MLP (parallel block), rotary on part of each head.
    "gptj": _Family(_GPT2_NAMES, "layernorm", "rotary", False, True, mlp_default_4x=True),
    # Pythia: parallel unless `use_parallel_residual` is false (read per config below).
    "gpt_neox": _Family(_HF_NAMES, "layernorm", "rotary", False, True),
    "llama": _RMS_GATED,
    # Qwen2: no `head_dim` key (d_model // n_heads); q/k/v carry biases (runtime concern only).
    "qwen2": _RMS_GATED,
    # Mistral: `head_dim` may be present but null in config.json; sliding window is shape-neutral.
    "mistral": _RMS_GATED,
    # Gemma: explicit `head_dim` (256) so n_heads * d_head can differ from d_model (Gemma-7B:
    # 16 * 256 = 4096 vs 3072); norm scales are (1 + w) but still RMSNorm.
    "gemma": _RMS_GATED,
    # Gemma 2: as Gemma, plus sandwich norms and logit soft-capping (eager still gives a pattern).
    "gemma2": _RMS_GATED,
    # Phi-3: fused qkv_proj and gate_up_proj; gated SiLU MLP like Llama.
    "phi3": _RMS_GATED,
    # OPT: learned positions (offset by 2 inside the embedding, invisible here); some sizes
    # (opt-350m) project embeddings from word_embed_proj_dim and use post-LN.
    "opt": _Family(_OPT_NAMES, "layernorm", "learned", False, False),
    # Phi-1/Phi-2: one input_layernorm feeds attention and MLP (parallel), partial rotary.
    "phi": _Family(_HF_NAMES, "layernorm", "rotary", False, True),
}

# Attention implementations whose kernels never materialize the pattern. "sdpa" and "eager"
# are fine: the runtime registers its own attention function in their place.
_FUSED_PREFIX = "flash_attention"


def _supported() -> str:
    return ", ".join(sorted(FAMILIES))


def _get(config: dict[str, Any], names: tuple[str, ...], family: str) -> int:
    for name in names:
        value = config.get(name)
        if value is not None:
            return _valid_size(value, name, family)
    raise CheckError("E211", f"{family} config has no '{names[0]}' field, which patchc needs")


def _opt_int(config: dict[str, Any], name: str, family: str = "model") -> int | None:
    value = config.get(name)
    return None if value is None else _valid_size(value, name, family)


# Far above any real model; a config beyond it is corrupt (and would make check's tables huge).
_MAX_SIZE = 1 << 24


def _valid_size(value: Any, name: str, family: str) -> int:
    """A count or size from the config: a whole number from 1 up. `"four"`, `0`, `-2`, `1.5`
    or `true` is a corrupt config (E214), not a reason for check to crash later."""
    ok = isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and value.is_integer())
    if not ok or not 1 <= value <= _MAX_SIZE:
        raise CheckError("E214", f"{family} config: '{name}' must be a whole number from 1 to "
                         f"{_MAX_SIZE}; got {json.dumps(value)[:40]}")
    return int(value)


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    """The ModelSpec of an HF config dict; CheckError E210 (unsupported) or E211 (missing)."""
    raw_type = config.get("model_type")
    if not raw_type:
        raise CheckError("E211", "config has no 'model_type' field, which patchc needs")
    family = str(raw_type).lower().replace("-", "_")
    fam = FAMILIES.get(family)
    if fam is None:
        raise CheckError(
            "E210",
            f"unsupported model_type '{raw_type}'; supported families: {_supported()}",
        )
    names = fam.names
    n_layers = _get(config, names["n_layers"], family)
    n_heads = _get(config, names["n_heads"], family)
    d_model = _get(config, names["d_model"], family)
    if fam.mlp_default_4x:
        d_mlp = _opt_int(config, names["d_mlp"][0], family) or 4 * d_model
    else:
        d_mlp = _get(config, names["d_mlp"], family)
    # Without `num_key_value_heads` (or with it null: older Phi/Llama configs) there is no GQA.
    n_kv_heads = _opt_int(config, "num_key_value_heads", family) or n_heads
    if n_heads % n_kv_heads:
        raise CheckError(
            "E211",
            f"{family} config: num_key_value_heads={n_kv_heads} does not divide "
            f"{names['n_heads'][0]}={n_heads}",
        )
    d_head = _opt_int(config, "head_dim", family) or d_model // n_heads
    if d_head < 1:
        raise CheckError("E214", f"{family} config: {n_heads} heads of a {d_model}-wide model "
                         "leave no width per head")
    parallel = fam.parallel_attn
    if family == "gpt_neox":
        # HF's GPTNeoXConfig defaults use_parallel_residual to True (all Pythia models).
        parallel = bool(config.get("use_parallel_residual", True))
    impl = config.get("_attn_implementation") or config.get("attn_implementation") or ""
    return ModelSpec(
        family=family,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=d_mlp,
        vocab_size=_get(config, ("vocab_size",), family),
        n_ctx=_get(config, names["n_ctx"], family),
        parallel_attn=parallel,
        gated_mlp=fam.gated_mlp,
        norm=fam.norm,
        positional=fam.positional,
        exposes_pattern=not str(impl).startswith(_FUSED_PREFIX),
    )


# ---------------------------------------------------------------------------------------------
# Finding the config: a local directory, or a hub id (config.json only, never weights)
# ---------------------------------------------------------------------------------------------


def _looks_local(model_id: str) -> bool:
    """A path, not a hub id: absolute, ./ or ~ prefixed, backslashes, or more than one '/'."""
    return (
        os.path.isabs(model_id)
        or model_id.startswith((".", "~"))
        or "\\" in model_id
        or model_id.count("/") > 1
    )


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckError("E212", f"could not read model config {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckError("E212", f"model config {path} is not a JSON object")
    return data


def load_config(model_id: str, revision: str | None = None, base_dir: str = ".") -> dict[str, Any]:
    """The config dict of a local model directory or (config.json only) of a hub model."""
    path = os.path.join(base_dir, os.path.expanduser(model_id))
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise CheckError("E212", f"model directory {path} has no config.json")
        return _read_json(config_path)
    if os.path.exists(path) or _looks_local(model_id):
        raise CheckError("E212", f"no model directory at {path} (looked for {path}/config.json)")
    # Lazy: huggingface_hub is only needed for hub ids, and `patchc check` must start fast.
    from .hub import fetch

    local = fetch(model_id, "config.json", revision)
    return _read_json(local)


def load_model_spec(
    model_id: str, revision: str | None = None, base_dir: str = "."
) -> ModelSpec:
    """The ModelSpec of a local model directory or hub id, from its config alone."""
    return spec_from_config(load_config(model_id, revision, base_dir))
