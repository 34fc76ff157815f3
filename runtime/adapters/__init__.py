"""Architecture adapters: canonical sites -> modules and hooks, for every family in the family
table (compiler/families.py).

`adapter_for(model)` builds the one `Adapter` class for any supported model: the module map is
found from the model's module tree (structure.py, parts.py) with the family row's exceptions,
and `base.Adapter` builds the hooks. There is no per-family code. A model_type the table does
not list gets a row inferred from its config, checked on its weights first (inferred.py).
"""

from __future__ import annotations

from torch import nn

from patchc.compiler.families import FAMILIES

from .base import EXPERT, HEADED, KINDS, LAYERED, UNLAYERED, Adapter

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(FAMILIES))


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of a loaded HF causal LM (E401 if its family is not supported)."""
    ad = Adapter(model)
    if ad.fam.inferred:
        from .inferred import verified

        return verified(model)
    return ad


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
