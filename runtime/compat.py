"""What differs between the transformers releases patchc supports (pyproject's range).

The runtime speaks to transformers through these few functions wherever an API moved:

- the key/value cache argument and output: `past_key_values` up to 5.x, then `cache` (the old
  name warns that it will be removed);
- building a DynamicCache from per-layer keys/values, and reading them back (its layers
  became objects with `.keys`/`.values` in 4.56; before, two lists);
- whether a config's cache is made of plain, cuttable layers (no sliding window);
- the dtype argument of `from_pretrained` (`torch_dtype` before 4.56, then `dtype`).
"""

from __future__ import annotations

import inspect
from typing import Any

import transformers
from torch import Tensor, nn
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

