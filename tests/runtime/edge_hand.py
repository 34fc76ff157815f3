"""Path patching by hand, for the edge tests: plain torch hooks on the HF modules of the tiny
GPT-2, Llama (grouped-query) and NeoX (parallel) models of conftest.py, written without
runtime/adapters or runtime/edges.

A receiver's input is recomputed here with the model's own modules: the head's query/key/value
as the whole projection applied to norm(x + delta), then the head's columns taken; the MLP as
mlp(norm2(x + delta)); the logits as final_norm(x + delta). Every sender's current value is read
live in the patched forward (the definition), so a joint patch needs no reasoning about which
senders a write can change.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from conftest import D_HEAD, Fam, _get

# layers, ln1, ln2, qkv (one fused module or three), mlp, o_proj, final norm
PARTS = {
    "gpt2": ("transformer.h", "ln_1", "ln_2", "attn.c_attn", "mlp", "attn.c_proj",
             "transformer.ln_f"),
    "llama": ("model.layers", "input_layernorm", "post_attention_layernorm",
              ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "mlp",
              "self_attn.o_proj", "model.norm"),
    "qwen2": ("model.layers", "input_layernorm", "post_attention_layernorm",
              ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "mlp",
              "self_attn.o_proj", "model.norm"),
    "neox": ("gpt_neox.layers", "input_layernorm", "post_attention_layernorm",
             "attention.query_key_value", "mlp", "attention.dense",
             "gpt_neox.final_layer_norm"),
}
_END = re.compile(r"^(?:L(\d+)\.)?(?:H(\d+)\.)?([a-z_.]+)$")


def _parse(text: str) -> tuple[int | None, int | None, str]:
    m = _END.match(text)
    assert m, text
    layer, head, kind = m.groups()
    return (None if layer is None else int(layer), None if head is None else int(head), kind)


PARTS["gemma"] = PARTS["mistral"] = PARTS["qwen2"]


class Hand:
    def __init__(self, fam: Fam) -> None:
        self.fam = fam
        self.m = fam.model
        self.parts = PARTS[fam.name]
        cfg = self.m.config
        self.heads = cfg.num_attention_heads
        self.kv = getattr(cfg, "num_key_value_heads", self.heads) or self.heads

    def block(self, layer: int):
        return _get(self.m, self.parts[0])[layer]

    def _cols(self, which: str, head: int) -> tuple[torch.nn.Module, slice]:
        """The module and output columns of a head's q/k/v (k/v: its kv head's)."""
        qkv = self.parts[3]
        dh = D_HEAD
        kvh = head // (self.heads // self.kv)
        if isinstance(qkv, tuple):
            mod = _get(self.block_l, qkv["qkv".index(which)])
            h = head if which == "q" else kvh
            return mod, slice(h * dh, (h + 1) * dh)
        mod = _get(self.block_l, qkv)
        if self.fam.name == "gpt2":  # [q heads | k heads | v heads]
            off = "qkv".index(which) * self.heads * dh
            return mod, slice(off + head * dh, off + (head + 1) * dh)
        # NeoX: per head [q, k, v]
        off = head * 3 * dh + "qkv".index(which) * dh
        return mod, slice(off, off + dh)

    # -- sender values --------------------------------------------------------------------
    def _sender_hook(self, text: str, store: Callable[[torch.Tensor], None]):
        layer, head, kind = _parse(text)
        if kind == "embed":
            mod = self.block(0)
            return mod.register_forward_pre_hook(
                lambda m, a, k: store(a[0] if a else k["hidden_states"]), with_kwargs=True)
        block = self.block(layer)  # type: ignore[arg-type]
        if kind == "mlp.out":
            return _get(block, self.parts[4]).register_forward_hook(
                lambda m, a, o: store(o[0] if isinstance(o, tuple) else o))
        o_proj = _get(block, self.parts[5])
        if kind == "attn.out":
            return o_proj.register_forward_hook(lambda m, a, o: store(o))
        w = o_proj.weight  # Linear [out, in]; GPT-2 Conv1D [in, out]
        cols = slice(head * D_HEAD, (head + 1) * D_HEAD)  # type: ignore[operator]
        w_h = w[cols] if self.fam.name == "gpt2" else w[:, cols].T
        return o_proj.register_forward_pre_hook(lambda m, a: store(a[0][..., cols] @ w_h))

    def senders(self, ids: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}
        hs = [self._sender_hook(t, lambda v, t=t: got.__setitem__(t, v.detach().clone()))
              for t in texts]
        with torch.no_grad():
            self.m(ids)
        for h in hs:
            h.remove()
        return got

    # -- a patched forward ----------------------------------------------------------------
    def patched(self, ids: torch.Tensor, edges: list[tuple[str, str]],
                new: dict[str, torch.Tensor], pos: int | None = None) -> torch.Tensor:
        """Logits of a forward of `ids` in which each receiver's input gets the sum of
        (new[s] - live s) over its senders s (at position `pos`, or every position)."""
        live: dict[str, torch.Tensor] = {}
        hs = [self._sender_hook(s, lambda v, s=s: live.__setitem__(s, v))
              for s in dict.fromkeys(s for s, _ in edges)]
        by_r: dict[str, list[str]] = {}
        for s, r in edges:
            by_r.setdefault(r, []).append(s)

        def delta(r: str, like: torch.Tensor) -> torch.Tensor:
            d = sum(new[s] - live[s] for s in by_r[r])
            if pos is not None:
                mask = torch.zeros_like(like)
                mask[:, pos] = 1
                d = d * mask
            return d

        for r in by_r:
            hs += self._receiver(r, delta)
        with torch.no_grad():
            logits = self.m(ids).logits.float()
        for h in hs:
            h.remove()
        return logits

    def _receiver(self, r: str, delta) -> list:
        layer, head, kind = _parse(r)
        if kind == "logits":
            norm = _get(self.m, self.parts[6])
            return [norm.register_forward_pre_hook(lambda m, a: (a[0] + delta(r, a[0]),))]
        block = self.block_l = self.block(layer)  # type: ignore[arg-type]
        box: dict = {}
        if kind == "mlp.in":
            ln2 = _get(block, self.parts[2])
            mlp = _get(block, self.parts[4])
            h1 = ln2.register_forward_pre_hook(lambda m, a: box.__setitem__("x", a[0]))

            def pre(m, a):
                x = box["x"]
                return (ln2.forward(x + delta(r, x)),)
            return [h1, mlp.register_forward_pre_hook(pre)]
        ln1 = _get(block, self.parts[1])
        mod, cols = self._cols(kind, head)  # type: ignore[arg-type]
        h1 = ln1.register_forward_pre_hook(lambda m, a, k: box.__setitem__(
            "x", a[0] if a else k["hidden_states"]), with_kwargs=True)

        def post(m, a, out):
            x = box["x"]
            full = m.forward(ln1.forward(x + delta(r, x)))
            out = out.clone()
            out[..., cols] = full[..., cols]
            return out
        return [h1, mod.register_forward_hook(post)]

    # -- gradients at receiver inputs -----------------------------------------------------
    def receiver_grads(self, ids: torch.Tensor, receivers: list[str],
                       metric: Callable[[torch.Tensor], torch.Tensor],
                       embed: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-example metric [n] and d(sum of metric)/d(receiver input) [n, T, d] of each
        receiver, by autograd through a zero added to that receiver's own input; `embed`
        replaces the input of block 0 (EAP-IG's interpolated inputs)."""
        leaves: dict[str, torch.Tensor] = {}

        def delta(r: str, like: torch.Tensor) -> torch.Tensor:
            if r not in leaves:
                leaves[r] = torch.zeros_like(like, requires_grad=True)
            return leaves[r]

        hs = []
        for r in receivers:
            hs += self._receiver(r, delta)
        if embed is not None:
            hs.append(self.block(0).register_forward_pre_hook(
                lambda m, a, k: ((embed,) + tuple(a[1:]), k) if a else
                (a, {**k, "hidden_states": embed}), with_kwargs=True))
        try:
            for p in self.m.parameters():
                p.requires_grad_(False)
            values = metric(self.m(ids).logits.float())
            grads = torch.autograd.grad(values.sum(), [leaves[r] for r in receivers])
        finally:
            for h in hs:
                h.remove()
        return values.detach(), dict(zip(receivers, grads))
