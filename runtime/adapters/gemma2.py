"""Gemma-2: Gemma plus extra norms. Each block is

    mid  = x + post_attention_layernorm(attn(input_layernorm(x)))
    post = mid + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(mid)))

so attn.out / mlp.out are the post-normed outputs (what is added to the residual), ln2 is
`pre_feedforward_layernorm`, and the heads' `out` (z_h @ W_O[h]) sum to the o_proj output
*before* the post-attention norm. Attention logits and final logits are soft-capped (tanh); the
model runs eager attention by default (sdpa cannot soft-cap)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .gemma import GemmaAdapter


class Gemma2Adapter(GemmaAdapter):
    family = "gemma2"

    def ln2(self, layer: int) -> nn.Module:
        return self.layer(layer).pre_feedforward_layernorm

    def attn_out_module(self, layer: int) -> nn.Module:
        return self.layer(layer).post_attention_layernorm

    def mlp_out_module(self, layer: int) -> nn.Module:
        return self.layer(layer).post_feedforward_layernorm

    def extra_norms(self) -> list[nn.Module]:
        return [m for i in range(self.n_layers)
                for m in (self.attn_out_module(i), self.mlp_out_module(i))]

    def final_softcap(self) -> float | None:
        return getattr(self.config, "final_logit_softcapping", None)

    def unembed(self, resid: Tensor) -> Tensor:
        logits = super().unembed(resid)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
