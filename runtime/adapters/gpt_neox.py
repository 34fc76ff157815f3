"""GPT-NeoX / Pythia: LayerNorm, partial rotary, a fused `query_key_value` interleaved per head
([h0: q k v | h1: q k v | ...]), and (usually) parallel attention and MLP on the same residual
(`use_parallel_residual`), where resid_mid is undefined."""

from __future__ import annotations

from torch import nn

from .base import Adapter, head_cols_interleaved
from .taps import Cols


class GPTNeoXAdapter(Adapter):
    family = "gpt_neox"
    norm = "layernorm"

    def _parallel_attn(self) -> bool:
        return bool(getattr(self.config, "use_parallel_residual", True))

    def layers(self) -> nn.ModuleList:
        return self.base.layers

    def attn(self, layer: int) -> nn.Module:
        return self.layer(layer).attention

    def mlp(self, layer: int) -> nn.Module:
        return self.layer(layer).mlp

    def ln1(self, layer: int) -> nn.Module:
        return self.layer(layer).input_layernorm

    def ln2(self, layer: int) -> nn.Module:
        return self.layer(layer).post_attention_layernorm

    def ln_final(self) -> nn.Module:
        return self.base.final_layer_norm

    def o_proj(self, layer: int) -> nn.Module:
        return self.attn(layer).dense

    def qkv(self, layer: int, which: str, head: int | None) -> tuple[nn.Module, Cols | None]:
        cols = head_cols_interleaved(self.n_heads, self.d_head, "qkv".index(which), head)
        return self.attn(layer).query_key_value, cols

    def mlp_pre(self, layer: int) -> tuple[nn.Module, Cols | None]:
        return self.mlp(layer).dense_h_to_4h, None

    def mlp_down(self, layer: int) -> nn.Module:
        return self.mlp(layer).dense_4h_to_h
