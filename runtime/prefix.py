"""The runtime tricks behind the optimizer's passes, as context managers around one model call:

- `skip_layers`: share_prefix. Decoder blocks below the start layer are replaced by stubs;
  the first returns the cached residual stream, the others hand it on. The model's own
  forward still runs, so masks, position ids and rotary embeddings are built as usual
  (calling a block directly would skip them: a GPT-2 block alone attends bidirectionally).
- `prefix_cache`: narrow_positions. A DynamicCache holding the twin's keys/values for the
  first p0 positions, copied once per batched forward; the model is then fed positions p0..
- `trimmed_logits`: trim_logits. A pre-hook on the LM head gathers only the positions that
  metrics read; with token ids given, the head's matrix product is skipped and only those
  rows of the unembedding are applied (family extras such as soft-capping still run after).
- `skip_above`: a pass that computes no logits stops after the last block it reads or
  writes (runtime/pass_plan.top_block): the blocks above hand the state on unchanged.
- `live_positions`: dead_positions. The last block's MLP runs only at the positions metrics
  read (its other rows are zeros: nothing reads them).
- `widen`: hook functions written for full-width activations run on a narrowed one.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache

from .compat import DynamicLayer, layer_kv, make_cache, plain_cache
from .offload import param


class _Stub(nn.Module):
    """Stands in for a skipped block. Attributes the model's forward reads of its blocks
    (`attention_type`, `self_attn.attention_type` to choose a mask) are the real block's:
    it is kept outside the module tree, so its weights are not the stub's."""

    def __init__(self, block: nn.Module, as_tuple: bool) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
        self.as_tuple = as_tuple

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)

    def _out(self, hidden: Tensor) -> Tensor | tuple:
        return (hidden,) if self.as_tuple else hidden


class _Start(_Stub):
    """Stands in for block 0: returns the cached residual stream at the start layer (as a
    1-tuple where the model's blocks return tuples)."""

    def __init__(self, block: nn.Module, state: Tensor, as_tuple: bool = False) -> None:
        super().__init__(block, as_tuple)
        self.state = state

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor | tuple:
        return self._out(self.state.to(hidden_states.dtype))


class _Pass(_Stub):
    """Stands in for a skipped block after the first: hands the state on unchanged."""

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor | tuple:
        return self._out(hidden_states)


@contextlib.contextmanager
def skip_layers(layers: nn.ModuleList, start_layer: int, state: Tensor | None,
                as_tuple: bool = False) -> Iterator[None]:
    """Blocks [0, start_layer) return `state` (the input of block start_layer) instead of
    computing; `as_tuple`: the model's blocks return tuples (compat.blocks_return_tuples).
    Enter it after the adapter's hooks: installing hooks looks modules up."""
    if not start_layer:
        yield
        return
    assert state is not None
    saved = [layers[i] for i in range(start_layer)]
    try:
        layers[0] = _Start(saved[0], state, as_tuple)
        for i in range(1, start_layer):
            layers[i] = _Pass(saved[i], as_tuple)
        yield
    finally:
        for i, block in enumerate(saved):
            layers[i] = block


@contextlib.contextmanager
def skip_above(layers: nn.ModuleList, top: int | None, as_tuple: bool = False
               ) -> Iterator[None]:
    """Blocks after `top` hand their input on unchanged (a pass that computes no logits
    stops after the last block it reads or writes; None: every block runs). Enter it after
    the adapter's hooks, as skip_layers."""
    if top is None or top >= len(layers) - 1:
        yield
        return
    saved = {i: layers[i] for i in range(top + 1, len(layers))}
    try:
        for i, block in saved.items():
            layers[i] = _Pass(block, as_tuple)
        yield
    finally:
        for i, block in saved.items():
            layers[i] = block


def narrowable(config) -> bool:
    """Can keys/values be cut at a position? Only for caches of plain (full) layers: a
    sliding-window layer keeps the last window, not a prefix."""
    return plain_cache(config)


def prefix_cache(cache: DynamicCache, p0: int, repeats: int, start_layer: int) -> DynamicCache:
    """A new cache with the first p0 positions of `cache`, each row block repeated `repeats`
    times (member-major: rows [i*N, (i+1)*N) are forward i). Layers below start_layer are
    stubbed: they only need a length (the mask is sized from layer 0). The repeats are not
    copied: each layer's first update writes prefix and new positions in one concatenation
    (a copied prefix would be copied twice more, into the cache and by that update)."""
    data = []
    for i, (k, v) in enumerate(layer_kv(cache)):
        if i < start_layer:
            k, v = k[:1, :1, :p0, :1], v[:1, :1, :p0, :1]
        else:
            k, v = k[:, :, :p0], v[:, :, :p0]
        data.append((k, v, 1 if i < start_layer else repeats))
    if DynamicLayer is None:  # pragma: no cover - older releases: copied
        return make_cache([(k.repeat(r, 1, 1, 1), v.repeat(r, 1, 1, 1)) for k, v, r in data])
    cache = DynamicCache()
    cache.layers = [_Repeated(k, v, r) for k, v, r in data]
    return cache


class _Repeated(DynamicLayer or object):  # type: ignore[misc]
    """A cache layer holding keys/values [N, H, p0, d] that stand for `repeats` copies of
    their rows, as a [repeats, N, H, p0, d] view (nothing copied). The first update appends
    the new positions of all R*N rows with one concatenation; from then on it is a plain
    layer of [R*N, H, p0 + s, d]."""

    def __init__(self, keys: Tensor, values: Tensor, repeats: int) -> None:
        super().__init__()
        try:
            self.lazy_initialization(keys, values)
        except TypeError:  # pragma: no cover - releases whose lazy_initialization takes keys
            self.lazy_initialization(keys)
        self.keys = keys.unsqueeze(0).expand(repeats, *keys.shape)
        self.values = values.unsqueeze(0).expand(repeats, *values.shape)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs
               ) -> tuple[Tensor, Tensor]:
        if self.keys.dim() != 5:
            return super().update(key_states, value_states, *args, **kwargs)
        r = self.keys.shape[0]
        self.keys = torch.cat([self.keys, key_states.unflatten(0, (r, -1))], -2).flatten(0, 1)
        self.values = torch.cat([self.values, value_states.unflatten(0, (r, -1))],
                                -2).flatten(0, 1)
        return self.keys, self.values


def widen(fn: Callable[[Tensor], Tensor | None], p0: int, width: int
          ) -> Callable[[Tensor], Tensor | None]:
    """A hook for full-width activations [B, width, ...] that runs on positions p0.. only:
    the missing positions are zero-filled for it and cut off its result (nothing it reads or
    writes lies before p0: narrow_positions chose p0 so)."""
    if not p0:
        return fn

    def wide(act: Tensor) -> Tensor | None:
        pad = act.new_zeros((act.shape[0], width - act.shape[1]) + tuple(act.shape[2:]))
        out = fn(torch.cat([pad, act], 1))
        return None if out is None else out[:, p0:]

    return wide


@contextlib.contextmanager
def trimmed_logits(head: nn.Module, index: Tensor | None, tokens: Tensor | None
                   ) -> Iterator[None]:
    """The LM head computes logits only at `index` ([B, K] positions of its input; None:
    all) and, given `tokens` ([U] ids), only for those ids: logits come out [B, K, U]."""
    if index is None and tokens is None:
        yield
        return
    kept: list[Tensor] = []

    def pre(_mod: nn.Module, args: tuple) -> tuple:
        h = args[0]
        if index is not None:
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]).to(h.device))
        if tokens is None:
            return (h, *args[1:])
        kept.append(h)
        return (h[:, :0], *args[1:])  # the full product is skipped

    def post(_mod: nn.Module, _args: tuple, out: Tensor) -> Tensor | None:
        if tokens is None:
            return None
        h = kept.pop()
        # With a device map, `h` is where the final norm ran and the head's weight may be
        # elsewhere (tied to the embedding, or offloaded): compute where the weight is.
        w, bias = param(head), param(head, "bias")
        ids = tokens.to(w.device)
        return nn.functional.linear(h.to(w.device), w[ids],
                                    bias[ids] if bias is not None else None)

    handles = [head.register_forward_pre_hook(pre), head.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def live_positions(mlp: nn.Module | None, index: Tensor | None) -> Iterator[None]:
    """`mlp` (a block's MLP, called with the hidden states first) computes only at `index`
    ([B, K] positions of its input); its output is zero elsewhere. None: as it is.
    Enter it after the site hooks: their pre-hooks on the MLP see its whole input before the
    gather, and the output is widened before any of their hooks on it runs (a gradient-only
    read of `mlp.out`, and its gradient leaf, see every position: dead_positions)."""
    if mlp is None or index is None:
        yield
        return

    def pre(_mod: nn.Module, args: tuple) -> tuple:
        h = args[0]
        at = index[..., None].expand(-1, -1, h.shape[-1]).to(h.device)
        widths.append(h.shape[1])
        return (h.gather(1, at), *args[1:])

    def wide(out: Tensor, width: int) -> Tensor:
        full = out.new_zeros((out.shape[0], width, out.shape[-1]))
        return full.scatter(1, index[..., None].expand_as(out).to(out.device), out)

    def post(_mod: nn.Module, _args: tuple, out: Tensor | tuple) -> Tensor | tuple:
        width = widths.pop()
        if isinstance(out, tuple):  # an MLP that returns (output, extras)
            return (wide(out[0], width), *out[1:])
        return wide(out, width)

    widths: list[int] = []
    handles = [mlp.register_forward_pre_hook(pre),
               mlp.register_forward_hook(post, prepend=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
