"""GPT-2: learned positions, LayerNorm, fused `c_attn` (a Conv1D: [q | k | v]), Conv1D weights
stored [in, out] (so W_O[h] is a block of rows of `c_proj.weight`), sequential blocks."""

from __future__ import annotations

from torch import Tensor, nn

from patchc.runtime.offload import param

from .base import Adapter
from .taps import Cols


class GPT2Adapter(Adapter):
    family = "gpt2"
    norm = "layernorm"

    def _d_mlp(self) -> int:
        return int(getattr(self.config, "n_inner", None) or 4 * self.d_model)

    def layers(self) -> nn.ModuleList:
        return self.base.h

    def attn(self, layer: int) -> nn.Module:
        return self.layer(layer).attn

    def mlp(self, layer: int) -> nn.Module:
        return self.layer(layer).mlp

    def ln1(self, layer: int) -> nn.Module:
        return self.layer(layer).ln_1

    def ln2(self, layer: int) -> nn.Module:
        return self.layer(layer).ln_2

    def ln_final(self) -> nn.Module:
        return self.base.ln_f

    def o_proj(self, layer: int) -> nn.Module:
        return self.attn(layer).c_proj

    def qkv(self, layer: int, which: str, head: int | None) -> tuple[nn.Module, Cols | None]:
        offset = "qkv".index(which) * self.d_model
        if head is None:
            return self.attn(layer).c_attn, Cols(offset, offset + self.d_model)
        start = offset + head * self.d_head
        return self.attn(layer).c_attn, Cols(start, start + self.d_head)

    def mlp_pre(self, layer: int) -> tuple[nn.Module, Cols | None]:
        return self.mlp(layer).c_fc, None

    def mlp_down(self, layer: int) -> nn.Module:
        return self.mlp(layer).c_proj

    def w_out(self, layer: int, head: int) -> Tensor:
        # Conv1D computes x @ weight + bias with weight [n_heads * d_head, d_model].
        return param(self.o_proj(layer))[head * self.d_head : (head + 1) * self.d_head]
