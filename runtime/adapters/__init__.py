"""Architecture adapters: canonical sites -> modules and hooks, one module per family.

`adapter_for(model)` picks the adapter by `model.config.model_type`; see `base.Adapter` for
the hook interface and the shapes each site kind has.
"""

from __future__ import annotations

from torch import nn

from patchc.compiler.errors import RuntimeInterventionError

from .base import HEADED, KINDS, LAYERED, UNLAYERED, Adapter
from .gemma import GemmaAdapter
from .gemma2 import Gemma2Adapter
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter
from .llama import LlamaAdapter, LlamaLikeAdapter
from .mistral import MistralAdapter
from .opt import OPTAdapter
from .phi3 import Phi3Adapter
from .qwen2 import Qwen2Adapter

ADAPTERS: dict[str, type[Adapter]] = {
    "gpt2": GPT2Adapter,
    "gpt_neox": GPTNeoXAdapter,
    "llama": LlamaAdapter,
    "qwen2": Qwen2Adapter,
    "mistral": MistralAdapter,
    "gemma": GemmaAdapter,
    "gemma2": Gemma2Adapter,
    "phi3": Phi3Adapter,
    "opt": OPTAdapter,
}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(ADAPTERS)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a loaded HF causal LM, chosen by its config's model_type."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    cls = ADAPTERS.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        raise RuntimeInterventionError(
            "E401",
            f"unsupported model_type '{model_type}'; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}",
        )
    return cls(model)


__all__ = [
    "ADAPTERS",
    "HEADED",
    "KINDS",
    "LAYERED",
    "SUPPORTED_FAMILIES",
    "UNLAYERED",
    "Adapter",
    "GPT2Adapter",
    "GPTNeoXAdapter",
    "Gemma2Adapter",
    "GemmaAdapter",
    "LlamaAdapter",
    "LlamaLikeAdapter",
    "MistralAdapter",
    "OPTAdapter",
    "Phi3Adapter",
    "Qwen2Adapter",
    "adapter_for",
]
