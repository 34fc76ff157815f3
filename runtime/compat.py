"""What differs between the transformers releases patchc supports (pyproject's range).

The runtime speaks to transformers through these few functions wherever an API moved:

- the key/value cache argument and output: `past_key_values` up to 5.x, then `cache` (the old
  name warns that it will be removed);
- building a DynamicCache from per-layer keys/values, and reading them back (its layers
  became objects with `.keys`/`.values` in 4.56; before, two lists);
- whether a config's cache is made of plain, cuttable layers (no sliding window);
- a config saved by a newer release that an older one misreads: GPT-NeoX's partial rotary
  factor (before 5.9 taken from `rotary_pct` alone, else 0.25);
- a tied unembedding offloaded to disk (by a device map) that this release left out of
  accelerate's offload index (5.0 and later 5.x: its first forward fails);
- a causal LM's decoder stack: `base_model`, except where a release names a prefix the
  class does not have (4.57's Gemma-3 text model says `language_model`, keeps `model`);
- the dtype argument of `from_pretrained` (`torch_dtype` before 4.56, then `dtype`);
- GPT-2's attention scores before 5.4: it divided them itself (by sqrt(d_head), and by the
  layer index + 1 where configured) and passed no `scaling` to the attention function;
- what a softmax-top-k MoE router returns first: its logits from 5.6, before that their
  softmax;
- whether decoder blocks return a tuple (`(hidden_states, ...)`, which the model reads as
  `outputs[0]`) or the hidden states alone: it changed family by family during 5.x, so it is
  asked of the model itself.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from torch.nn import functional as F
from transformers.cache_utils import DynamicCache

try:  # 4.56+: a cache is a list of layer objects
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover - older releases
    DynamicLayer = None  # type: ignore[assignment,misc]

_CACHE_ARG: dict[type, str] = {}
VERSION = tuple(int(p) for p in transformers.__version__.split(".")[:2])
DTYPE_ARG = "dtype" if VERSION >= (4, 56) else "torch_dtype"


def cache_arg(model: nn.Module) -> str:
    """The keyword a model's forward takes its key/value cache by."""
    cls = type(model)
    if cls not in _CACHE_ARG:
        params = inspect.signature(cls.forward).parameters
        _CACHE_ARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_ARG[cls]


def with_cache(model: nn.Module, kwargs: dict[str, Any], cache: Any) -> dict[str, Any]:
    """`kwargs` for model(...) with `cache` passed under the name this release uses."""
    return {**kwargs, cache_arg(model): cache}


def output_cache(out: Any) -> Any:
    """The cache a forward returned (`use_cache=True`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out["past_key_values"]


def layer_kv(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """(keys, values) [batch, kv_heads, positions, d_head] of each layer."""
    if isinstance(cache, (tuple, list)):  # the legacy format some 4.x models still return
        return [(layer[0], layer[1]) for layer in cache]
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def make_cache(data: list[tuple[Tensor, Tensor]]) -> DynamicCache:
    """A DynamicCache holding these (keys, values) per layer."""
    if DynamicLayer is not None:
        return DynamicCache(ddp_cache_data=data)
    cache = DynamicCache()
    for i, (k, v) in enumerate(data):
        cache.update(k, v, i)
    return cache


def plain_cache(config: Any) -> bool:
    """Are all of a config's cache layers full (cuttable at a position)? A sliding-window
    layer keeps only its last window."""
    if DynamicLayer is None:
        text = getattr(config, "get_text_config", lambda: config)()
        return not (getattr(text, "sliding_window", None) and
                    getattr(text, "use_sliding_window", True))
    try:
        cache = DynamicCache(config=config)
    except Exception:
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)



_TUPLES: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def blocks_return_tuples(model: nn.Module, block0: nn.Module) -> bool:
    """Do the model's decoder blocks return tuples? Asked once per model, of a one-token
    forward (run only before the first forward that stubs blocks, the only kind that needs
    to know: a stub must return what the model reads)."""
    if model not in _TUPLES:
        seen: list[bool] = []
        handle = block0.register_forward_hook(
            lambda _m, _a, out: seen.append(isinstance(out, tuple)))
        try:
            device = model.get_input_embeddings().weight.device
            if device.type == "meta":  # offloaded: accelerate's hooks move the input
                device = torch.device("cpu")
            ids = torch.zeros(1, 1, dtype=torch.long, device=device)
            with torch.no_grad():
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        finally:
            handle.remove()
        _TUPLES[model] = bool(seen and seen[0])
    return _TUPLES[model]


def legacy_scores(module: nn.Module, query: Tensor, key: Tensor, value: Tensor) -> Tensor | None:
    """q k^T scaled exactly as GPT-2's attention did before 5.4 (a division, then the
    layer-wise one), where the module computes its own scale and passes none; else None."""
    if hasattr(module, "scaling") or not hasattr(module, "scale_attn_weights"):
        return None
    weights = torch.matmul(query, key.transpose(-1, -2))
    if module.scale_attn_weights:
        weights = weights / torch.full([], value.size(-1) ** 0.5, dtype=weights.dtype,
                                       device=weights.device)
    if getattr(module, "scale_attn_by_inverse_layer_idx", False):
        weights = weights / float(module.layer_idx + 1)
    return weights


ROUTER_RETURNS_PROBS = VERSION < (5, 6)  # softmax-top-k routers: (softmax, weights, experts)


def router_logits(router: nn.Module, scheme: str | None, args: tuple, out: tuple) -> Tensor:
    """The logits [tokens, experts] a router computed: its first output, except before 5.6,
    where a softmax-top-k router returned their softmax there; they are then recomputed as
    the router computes them (its linear map of the input)."""
    if scheme != "softmax_topk" or not ROUTER_RETURNS_PROBS:
        return out[0]
    hidden = args[0].reshape(-1, router.weight.shape[-1])
    return F.linear(hidden, router.weight)


def router_first(scheme: str | None, logits: Tensor) -> Tensor:
    """What a router returns first for these logits (router_logits' inverse)."""
    if scheme != "softmax_topk" or not ROUTER_RETURNS_PROBS:
        return logits
    return F.softmax(logits, dtype=torch.float, dim=-1)


def load_config(where: str, **kwargs: Any) -> Any:
    """The model's config as from_pretrained would read it, with what this release misreads of
    a config saved by a newer one put back (nothing from 5.9 on)."""
    from transformers import AutoConfig, PretrainedConfig

    config = AutoConfig.from_pretrained(where, **kwargs)
    if VERSION >= (5, 9):
        return config
    raw, _ = PretrainedConfig.get_config_dict(where, **kwargs)
    if VERSION < (5, 0):
        _rope_for_4x(config, raw)
    if config.model_type != "gpt_neox":
        return config
    factor = (raw.get("rope_parameters") or {}).get("partial_rotary_factor")
    if "rotary_pct" not in raw and factor is not None:
        if VERSION < (5, 0):  # 4.x: the attention reads rotary_pct, the rotary embedding this
            config.partial_rotary_factor = factor
        elif isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters["partial_rotary_factor"] = factor
        config.rotary_pct = factor
    return config


def _rope_for_4x(config: Any, raw: dict[str, Any]) -> None:
    """4.x reads the rotary base and scaling from `rope_theta` and `rope_scaling`; a config
    saved by 5.x keeps both in `rope_parameters` only, and 4.x would silently use its default
    base (10000) and no scaling."""
    params = raw.get("rope_parameters")
    if not isinstance(params, dict):
        return
    if "rope_theta" not in raw and "rope_theta" in params:
        config.rope_theta = params["rope_theta"]
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if raw.get("rope_scaling") is None and scaling.get("rope_type", "default") != "default":
        config.rope_scaling = scaling


def tie_offloaded(model: nn.Module) -> None:
    """Where the unembedding shares the embedding's weight and both are offloaded, let the
    unembedding's offload entry be the embedding's (some releases leave it out of the index,
    so the unembedding could not be loaded for its forward)."""
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or emb is None or out.weight is not emb.weight:
        return
    maps = [getattr(getattr(m, "_hf_hook", None), "weights_map", None) for m in (out, emb)]
    if any(not hasattr(w, "dataset") or not hasattr(w, "prefix") for w in maps):
        return
    (out_map, emb_map) = maps
    out_index = getattr(out_map.dataset, "index", None)
    emb_entry = getattr(emb_map.dataset, "index", {}).get(emb_map.prefix + "weight")
    key = out_map.prefix + "weight"
    if isinstance(out_index, dict) and key not in out_index and emb_entry is not None \
            and "safetensors_file" in emb_entry:
        out_index[key] = {**emb_entry, "weight_name": emb_entry.get(
            "weight_name", emb_map.prefix + "weight")}


def decoder_stack(model: nn.Module) -> nn.Module:
    """The model's decoder stack (what holds the embedding and the blocks)."""
    base = getattr(model, "base_model", model)
    if base is model and isinstance(getattr(model, "model", None), nn.Module):
        return model.model  # a base_model_prefix the class does not have
    return base
