"""Dictionary sites on a model: a dictionary's latents (`dict:NAME`) and error term
(`dict:NAME.err`) as hooks like any other site's.

While at least one hook on a dictionary's sites is active, the dictionary is attached to its
host site by one hook there (and, for a transcoder, a read of the MLP's input). In each
forward that hook computes, from the host's value y (for an SAE x = y; for a transcoder x is
the MLP's input):

    f   = encode(x)            the latents            (hooks on `dict:NAME` see and edit f)
    r   = decode(f)            the reconstruction
    err = y - r                the error term         (hooks on `dict:NAME.err` see and edit it)

and, if a hook changed f to f' or err to err', puts y + (decode(f') - r) + (err' - err) in
the host's place: the reconstruction's change plus the error's change, added to y itself.
With nothing changed it returns nothing, so an attached dictionary without writes leaves
the run bit-exact; a write that restores a latent's own value changes nothing either (the
reconstruction's change is computed from the latents that differ: Dictionary.decode_change,
exactly 0 for none). In a compact sweep's pass, whose rows are copies of one run
(`repeated_blocks`), equal blocks are encoded once.

Gradients: the latents are computed from x detached, so a gradient taken at f (a zero leaf
added there by runtime/estimates.py) is d(metric)/d(latent) with the error term held
constant, and gradients further upstream flow through y exactly as without the dictionary
(attaching one never changes another site's gradient).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from patchc.compiler.dictionaries import is_scaled, split_kind
from patchc.compiler.errors import RuntimeInterventionError

from ..dictionaries import Normalized
from . import taps
from .taps import HookFn

# The adapter (base.Adapter, which imports this module) is typed loosely here.
Adapter = Any


class Attachment:
    """One dictionary attached to one adapter's model: its hooks, in the order entered."""

    def __init__(self, adapter: Adapter, name: str) -> None:
        self.adapter = adapter
        self.dictionary = adapter.dictionaries[name]
        self.fns: list[tuple[bool, HookFn]] = []  # (on the error term?, fn)
        self.stack: contextlib.ExitStack | None = None
        self.x_in: torch.Tensor | None = None
        self.norm: Any = None  # this forward's runtime.dictionaries.Normalized

    def add(self, err: bool, fn: HookFn) -> None:
        entry = (err, fn)
        self.fns.append(entry)
        if self.stack is None:
            self.stack = contextlib.ExitStack()
            try:
                self._install(self.stack)
            except BaseException:
                self.stack.close()
                self.stack = None
                self.fns.remove(entry)
                raise

    def remove(self, fn: HookFn) -> None:
        self.fns = [e for e in self.fns if e[1] is not fn]
        if not self.fns and self.stack is not None:
            stack, self.stack = self.stack, None
            stack.close()

    def _install(self, stack: contextlib.ExitStack) -> None:
        info = self.dictionary.info
        ad = self.adapter
        if info.reads_mlp_input:
            if ad.flat_mlp:
                raise RuntimeInterventionError(
                    "E482", f"transcoder `{info.name}`: {ad.family}'s MLP has no module "
                    "whose input is the MLP's input")
            assert info.host.layer is not None
            stack.callback(taps.tap_input(ad.mlp(info.host.layer), self._take_input,
                                          f"L{info.host.layer}.mlp input").remove)
        host = info.host
        layer, head = ad._validate(host.kind, host.layer, host.head)
        stack.enter_context(ad._hooked([(host.kind, layer, head, self._host)]))

    def _take_input(self, x: torch.Tensor) -> None:
        self.x_in = x
        return None

    def _host(self, y: torch.Tensor) -> torch.Tensor | None:
        d = self.dictionary
        if d.info.reads_mlp_input:
            x, self.x_in = self.x_in, None
            if x is None or x.shape[:-1] != y.shape[:-1]:
                raise RuntimeInterventionError(
                    "E482", f"transcoder `{d.info.name}`: the MLP's input was not seen in "
                    "this forward")
        else:
            x = y
        with torch.no_grad():
            x_det = x.detach()
            f, norm, recon = self._encode(x_det)
            err = y.detach().to(torch.float32) - recon
        new_f, new_err = f, err
        self.norm = norm  # for scaled-latent readers (hooked)
        for on_err, fn in list(self.fns):
            if on_err:
                out = fn(new_err)
                new_err = new_err if out is None else out
            else:
                out = fn(new_f)
                new_f = new_f if out is None else out
        if new_f is f and new_err is err:
            return None  # reads only: the host's own value, untouched
        delta = 0
        if new_f is not f and new_f.requires_grad:  # (a gradient leaf: every latent's path)
            delta = d.decode(new_f, norm, x_det) - recon
        elif new_f is not f:
            delta = d.decode_change(new_f, f, norm)
        if new_err is not err:
            delta = delta + (new_err - err)
        return y + delta.to(y.dtype)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Normalized, torch.Tensor]:
        """(latents, normalization, reconstruction) of x. In a pass whose rows are blocks of
        `block_rows` (a compact sweep's members, each a copy of the run: repeated_blocks),
        the latents of equal blocks are computed once (the blocks are compared first)."""
        d = self.dictionary
        n = getattr(self.adapter, "block_rows", None)
        if n and x.shape[0] > n and x.shape[0] % n == 0:
            k = x.shape[0] // n
            one = x[:n]
            if torch.equal(x.view(k, n, *x.shape[1:]), one.expand(k, *one.shape)):
                f, norm = d.encode(one)
                recon = d.decode(f, norm, one)
                norm = Normalized(*(None if t is None else _tile(t, k)
                                    for t in (norm.scale, norm.mu, norm.std)))
                return _tile(f, k), norm, _tile(recon, k)
        f, norm = d.encode(x)
        return f, norm, d.decode(f, norm, x)


def _tile(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.repeat(k, *([1] * (t.dim() - 1)))


@contextlib.contextmanager
def repeated_blocks(adapter: Adapter, n: int) -> Iterator[None]:
    """Within: the model's batch is blocks of n rows that are equal up to the dictionaries'
    hosts (a compact sweep's members; runtime/sweeps.py): each attachment then encodes one
    block where its input's blocks are indeed equal."""
    old = getattr(adapter, "block_rows", None)
    adapter.block_rows = n
    try:
        yield
    finally:
        adapter.block_rows = old


@contextlib.contextmanager
def hooked(adapter: Adapter, kind: str, fn: HookFn) -> Iterator[Adapter]:
    """`adapter.hook` for a dictionary site kind: fn sees the latents [N, T, d_sae] (or the
    error term [N, T, d_out], or the scaled latents of `dla`/`lens`: Dictionary.scaled) of
    every forward while the context is active."""
    name, err = split_kind(kind)
    if name not in adapter.dictionaries:
        raise RuntimeInterventionError(
            "E483", f"no dictionary `{name}` is loaded for this model")
    att = adapter._attachments.get(name)
    if att is None:
        att = adapter._attachments[name] = Attachment(adapter, name)
    if is_scaled(kind):  # read-only: the latents times this forward's output factor
        inner, d = fn, att.dictionary

        def fn(f: torch.Tensor) -> None:
            inner(d.scaled(f, att.norm))
            return None
    att.add(err, fn)
    try:
        yield adapter
    finally:
        att.remove(fn)
        if not att.fns:
            adapter._attachments.pop(name, None)
