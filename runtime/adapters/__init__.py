"""Architecture adapters: canonical sites -> modules and hooks, for every family in the family
table (compiler/families.py).

`adapter_for(model)` builds the one `Adapter` class for any supported model: the module map is
found from the model's module tree (structure.py, parts.py) with the family row's exceptions,
and `base.Adapter` builds the hooks. There is no per-family code.
"""

from __future__ import annotations

from torch import nn

from patchc.compiler.families import FAMILIES

from .base import EXPERT, HEADED, KINDS, LAYERED, UNLAYERED, Adapter

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(FAMILIES))


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of a loaded HF causal LM (E401 if its family is not supported)."""
    return Adapter(model)


__all__ = [
    "EXPERT",
    "HEADED",
    "KINDS",
    "LAYERED",
    "SUPPORTED_FAMILIES",
    "UNLAYERED",
    "Adapter",
    "adapter_for",
]
