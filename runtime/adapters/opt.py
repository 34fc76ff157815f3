"""OPT (pre-LayerNorm variants: 125m, 1.3b and up): learned positions (offset by 2 inside the
position embedding), q/k/v/out projections with biases, an un-gated MLP `fc1`/`fc2` that lives
directly on the block and runs on [batch*pos, d] (so those sites are reshaped), and an optional
`project_out` between the final norm and the unembedding. Post-LN OPT (350m,
`do_layer_norm_before=False`) has no pre-norm residual stream and is not supported."""

from __future__ import annotations

from torch import Tensor, nn

from patchc.compiler.errors import RuntimeInterventionError
from patchc.runtime.offload import param

from .base import Adapter
from .taps import Cols


class OPTAdapter(Adapter):
    family = "opt"
    norm = "layernorm"
    flat_mlp = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if not getattr(self.config, "do_layer_norm_before", True):
            raise RuntimeInterventionError(
                "E401",
                "OPT with do_layer_norm_before=False (post-LayerNorm, e.g. opt-350m) is not "
                "supported: its residual stream is normalized after each block",
            )

    def _d_mlp(self) -> int:
        return int(self.config.ffn_dim)

    def layers(self) -> nn.ModuleList:
        return self.base.decoder.layers

    def attn(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn

    def mlp(self, layer: int) -> nn.Module:
        return self.layer(layer).fc2  # no MLP module: fc2's output is the MLP's contribution

    def ln1(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn_layer_norm

    def ln2(self, layer: int) -> nn.Module:
        return self.layer(layer).final_layer_norm

    def ln_final(self) -> nn.Module:
        return self.base.decoder.final_layer_norm

    def o_proj(self, layer: int) -> nn.Module:
        return self.attn(layer).out_proj

    def qkv(self, layer: int, which: str, head: int | None) -> tuple[nn.Module, Cols | None]:
        # q is the q_proj output, before OPT multiplies it by 1/sqrt(d_head).
        proj = getattr(self.attn(layer), f"{which}_proj")
        if head is None:
            return proj, None
        return proj, Cols(head * self.d_head, (head + 1) * self.d_head)

    def mlp_pre(self, layer: int) -> tuple[nn.Module, Cols | None]:
        return self.layer(layer).fc1, None

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layer(layer).fc2

    def act_fn(self, layer: int) -> nn.Module:
        return self.layer(layer).activation_fn

    def unembed_rows(self, tokens: Tensor) -> Tensor:
        rows = super().unembed_rows(tokens)
        proj = self.base.decoder.project_out  # a linear map without bias (or None)
        return rows if proj is None else rows @ param(proj)

    def unembed(self, resid: Tensor) -> Tensor:
        x = self.ln_final()(resid)
        if self.base.decoder.project_out is not None:
            x = self.base.decoder.project_out(x)
        return self.model.get_output_embeddings()(x)
