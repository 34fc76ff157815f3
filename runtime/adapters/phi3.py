"""Phi-3: llama-like with a fused `qkv_proj` ([q (n_heads*d_head) | k | v (n_kv_heads*d_head)])
and a fused `gate_up_proj` ([gate | up]); mlp.pre is the gate half."""

from __future__ import annotations

from torch import nn

from .llama import LlamaLikeAdapter
from .taps import Cols


class Phi3Adapter(LlamaLikeAdapter):
    family = "phi3"

    def qkv(self, layer: int, which: str, head: int | None) -> tuple[nn.Module, Cols | None]:
        dq, dkv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        offset, width = {"q": (0, dq), "k": (dq, dkv), "v": (dq + dkv, dkv)}[which]
        proj = self.attn(layer).qkv_proj
        if head is None:
            return proj, Cols(offset, offset + width)
        start = offset + head * self.d_head
        return proj, Cols(start, start + self.d_head)

    def mlp_pre(self, layer: int) -> tuple[nn.Module, Cols | None]:
        return self.mlp(layer).gate_up_proj, Cols(0, self.d_mlp)

    def act_fn(self, layer: int) -> nn.Module:
        return self.mlp(layer).activation_fn

    def gate_up(self, layer: int) -> tuple[nn.Module, Cols | None] | None:
        return self.mlp(layer).gate_up_proj, Cols(self.d_mlp, 2 * self.d_mlp)
