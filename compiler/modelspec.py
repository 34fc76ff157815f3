"""ModelSpec: the shape of a model, read from its HF config alone (no weights, no torch).

`check.py` validates sites against it before anything is loaded; the runtime adapters build
the same ModelSpec from a loaded model's config, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSpec:
    family: str  # normalized model_type: gpt2, gpt_neox, llama, qwen2, mistral, gemma, ...
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads without grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int  # maximum positions
    parallel_attn: bool  # attention and MLP read the same residual (NeoX, Phi-2): no resid_mid
    gated_mlp: bool  # act(gate(x)) * up(x)
    norm: str  # "layernorm" or "rmsnorm"
    positional: str  # "learned" or "rotary"
    exposes_pattern: bool = True  # False under a fused kernel forced by the config

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.d_head

    @property
    def d_kv(self) -> int:
        return self.n_kv_heads * self.d_head

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    def kv_head(self, head: int) -> int:
        """The kv head that query head `head` reads under grouped-query attention."""
        return head // (self.n_heads // self.n_kv_heads)

    def dim_of(self, attr: str) -> int:
        """Size of a site kind's feature axis, by the `SiteKind.dim` attribute name."""
        if attr == "1":
            return 1
        return int(getattr(self, attr))
