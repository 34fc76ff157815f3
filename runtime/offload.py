"""Reading a weight of a model that accelerate may have offloaded.

With `set device_map`, accelerate can offload modules to CPU memory or disk: their parameters
sit on the meta device between calls and its hook loads them only for the module's own
forward. patchc also reads weights outside that forward (W_O for a head's output, the
unembedding for trimmed logits and direct attribution, a normalizer's weight), so every such
read goes through `param`, which fetches an offloaded tensor from the hook's weights map onto
the module's execution device.
"""

from __future__ import annotations

from torch import Tensor, nn


def param(module: nn.Module, name: str = "weight") -> Tensor | None:
    """`module.<name>` (None if it has none), loaded if accelerate offloaded it."""
    t = getattr(module, name, None)
    if t is None or t.device.type != "meta":
        return t
    hook = getattr(module, "_hf_hook", None)
    weights = getattr(hook, "weights_map", None)
    if weights is None:
        raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and no "
                           "accelerate hook holds its value")
    return weights[name].to(hook.execution_device)  # type: ignore[union-attr]


def weight_io(module: nn.Module) -> Tensor:
    """A linear layer's weight as [in, out], so that x @ it (+ bias) is the layer: nn.Linear
    keeps [out, in], GPT-2's Conv1D [in, out]; loaded if offloaded."""
    w = param(module)
    assert w is not None, type(module).__name__
    return w if type(module).__name__ == "Conv1D" else w.T
