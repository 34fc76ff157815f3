"""Granite's residual multiplier: its blocks add `out * m` to the residual, not `out`.

`attn.out` and `mlp.out` are what the block adds, so while either is hooked on a layer the
multiplication moves into the sub-blocks' outputs (a hook that multiplies by m, registered
before any site hook) and the layer's own multiplier becomes 1.0: `residual + (out * m) * 1.0`
is bit for bit `residual + out * m`. Reference counted on the layer, restored by the last one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from . import taps

if TYPE_CHECKING:
    from .base import Adapter

_STATE = "_patchc_multiplier"  # on the layer: [users, the original multiplier, handles]


def neutralize(ad: "Adapter", layer: int) -> Callable[[], None]:
    """Move layer `layer`'s residual multiplier into its sub-blocks' outputs; the remover."""
    block = ad.layer(layer)
    state = block.__dict__.get(_STATE)
    if state is None:
        m = float(block.residual_multiplier)
        scale = lambda act: act * m  # noqa: E731
        handles = [taps.tap_output(ad.attn_out_module(layer), scale, "attn.out"),
                   taps.tap_output(ad.mlp_out_module(layer), scale, "mlp.out")]
        state = block.__dict__[_STATE] = [0, m, handles]
        block.residual_multiplier = 1.0
    state[0] += 1

    def remove() -> None:
        state[0] -= 1
        if state[0] == 0:
            for h in state[2]:
                h.remove()
            block.residual_multiplier = state[1]
            block.__dict__.pop(_STATE, None)

    return remove
