"""Llama and the llama-like families (Qwen2, Mistral, Gemma, Phi-3 subclass this): RMSNorm,
rotary, separate q/k/v projections with grouped-query attention, a gated MLP
down(act(gate(x)) * up(x)), sequential blocks."""

from __future__ import annotations

from torch import nn

from .base import Adapter
from .taps import Cols


class LlamaLikeAdapter(Adapter):
    """Module map shared by the llama-like families: `model.layers[l].self_attn.{q,k,v,o}_proj`,
    `mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`, `model.norm`."""

    norm = "rmsnorm"

    def layers(self) -> nn.ModuleList:
        return self.base.layers

    def attn(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn

    def mlp(self, layer: int) -> nn.Module:
        return self.layer(layer).mlp

    def ln1(self, layer: int) -> nn.Module:
        return self.layer(layer).input_layernorm

    def ln2(self, layer: int) -> nn.Module:
        return self.layer(layer).post_attention_layernorm

    def ln_final(self) -> nn.Module:
        return self.base.norm

    def o_proj(self, layer: int) -> nn.Module:
        return self.attn(layer).o_proj

    def qkv(self, layer: int, which: str, head: int | None) -> tuple[nn.Module, Cols | None]:
        proj = getattr(self.attn(layer), f"{which}_proj")
        if head is None:
            return proj, None
        return proj, Cols(head * self.d_head, (head + 1) * self.d_head)

    def mlp_pre(self, layer: int) -> tuple[nn.Module, Cols | None]:
        # Gated MLP: mlp.pre is the gate's pre-activation (TransformerLens' hook_pre).
        return self.mlp(layer).gate_proj, None

    def mlp_down(self, layer: int) -> nn.Module:
        return self.mlp(layer).down_proj

    def act_fn(self, layer: int) -> nn.Module:
        return self.mlp(layer).act_fn

    def gate_up(self, layer: int) -> tuple[nn.Module, Cols | None] | None:
        return self.mlp(layer).up_proj, None


class LlamaAdapter(LlamaLikeAdapter):
    family = "llama"
