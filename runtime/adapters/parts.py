"""The module map of one loaded model: which module (and which columns of its output) each
canonical site lives on, for every family in the family table.

`Parts` combines the model's ModelSpec (sizes, read from the config by the same code `check`
uses), its family row (compiler/families.py) and the structure found in its module tree
(structure.py). `base.Adapter` builds the hooks on top of it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from patchc.compiler.errors import CheckError, RuntimeInterventionError
from patchc.compiler.families import Family
from patchc.compiler.family_inference import family_for, why_refused
from patchc.compiler.modelspec import ModelSpec, spec_from_config
from patchc.runtime.compat import decoder_stack
from patchc.runtime.offload import param, weight_io

from .structure import Structure, find_structure, get
from .taps import Cols


def family_of(model: nn.Module, fam: Family | None = None) -> tuple[Family, ModelSpec]:
    """The family row and ModelSpec of a loaded model (E401 if the table does not have it
    and none can be inferred). `fam`: a row to read it with instead (an inferred variant)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    as_dict = config.to_dict() if hasattr(config, "to_dict") else {}  # type: ignore[union-attr]
    if not as_dict.get("architectures"):  # (a config made in memory: the model says what it is)
        as_dict["architectures"] = [type(model).__name__]
    if fam is None and isinstance(model_type, str):
        fam = family_for(model_type, as_dict)
    if fam is None:
        raise RuntimeInterventionError("E401", why_refused(str(model_type), as_dict))
    try:
        spec = spec_from_config(as_dict, fam)
    except CheckError as e:
        raise RuntimeInterventionError("E401", e.message) from None
    if model_type == "opt" and not getattr(config, "do_layer_norm_before", True):
        raise RuntimeInterventionError(
            "E401", "OPT with do_layer_norm_before=False (post-LayerNorm, e.g. opt-350m) is not "
                    "supported: its residual stream is normalized after each block")
    return fam, spec


class Parts:
    """Where each part of a model is; sizes come from the model's ModelSpec."""

    def __init__(self, model: nn.Module, fam: Family | None = None) -> None:
        self.model = model
        self.config = model.config
        self.fam, spec = family_of(model, fam)
        self._spec = spec
        self.family: str = spec.family
        self.norm: str = self.fam.norm
        self.rms_offset: float = self.fam.rms_offset
        self.flat_mlp: bool = self.fam.flat_mlp
        self.base: nn.Module = decoder_stack(model)
        self.n_layers, self.n_heads = spec.n_layers, spec.n_heads
        self.n_kv_heads, self.d_model, self.d_head = spec.n_kv_heads, spec.d_model, spec.d_head
        self.d_mlp, self.vocab_size, self.n_ctx = spec.d_mlp, spec.vocab_size, spec.n_ctx
        self.n_experts, self.top_k = spec.n_experts, spec.top_k
        self.parallel_attn: bool = spec.parallel_attn
        self.s: Structure = find_structure(self.base, self.fam, self.n_layers,
                                          self.parallel_attn)

    def spec(self) -> ModelSpec:
        """The compiler's ModelSpec of this model, from the same config (`check` agrees); a
        part the module tree lacks makes its sites unavailable here too."""
        if not self.s.problems:
            return self._spec
        merged = {**dict(self.s.problems), **dict(self._spec.unavailable)}
        return replace(self._spec, unavailable=tuple(sorted(merged.items())))

    def missing(self, kind: str) -> str | None:
        """Why this model lacks a site kind (the table's reason, or a part not found)."""
        return self._spec.missing(kind) or self.s.problems.get(kind)

    # ---- modules ------------------------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        return get(self.base, self.s.layers)  # type: ignore[return-value]

    def layer(self, layer: int) -> nn.Module:
        return self.layers()[layer]

    def _at(self, layer: int, path: str | None) -> nn.Module:
        mod = get(self.layer(layer), path)
        if mod is None:
            raise RuntimeInterventionError(
                "E403", f"{self.family} has no module at L{layer}.{path}")
        return mod

    def attn(self, layer: int) -> nn.Module:
        return self._at(layer, self.s.attn)

    def mlp(self, layer: int) -> nn.Module:
        return self._at(layer, self.s.mlp or self.s.mlp_out)

    def ln1(self, layer: int) -> nn.Module:
        return self._at(layer, self.s.ln1)

    def ln2(self, layer: int) -> nn.Module:
        return self._at(layer, self.s.ln2)

    def ln_final(self) -> nn.Module:
        return get(self.base, self.s.final_norm)  # type: ignore[return-value]

    def o_proj(self, layer: int) -> nn.Module:
        """The attention output projection; its input is attn.z."""
        return self._at(layer, self.s.o_proj)

    def qkv(self, layer: int, which: str, head: int | None) -> tuple[nn.Module, Cols | None]:
        """The projection whose output holds q/k/v ('q','k','v') of `head` (a query head for
        q, a kv head for k/v; None: all heads), and the columns of its output to select."""
        dh = self.d_head
        if self.s.qkv is None:
            proj = self._at(layer, getattr(self.s, which))
            return proj, None if head is None else Cols(head * dh, (head + 1) * dh)
        proj = self._at(layer, self.s.qkv)
        if self.fam.qkv == "grouped":
            return proj, self._grouped_cols(which, head)
        dq, dkv = self.n_heads * dh, self.n_kv_heads * dh
        offset, width = {"q": (0, dq), "k": (dq, dkv), "v": (dq + dkv, dkv)}[which]
        if head is None:
            return proj, Cols(offset, offset + width)
        return proj, Cols(offset + head * dh, offset + (head + 1) * dh)

    def _grouped_cols(self, which: str, head: int | None) -> Cols:
        """Columns in a projection laid out per kv group: [q of the group's heads, k, v]."""
        dh, r = self.d_head, self.n_heads // self.n_kv_heads
        width = (r + 2) * dh

        def start(h: int) -> int:
            if which == "q":
                return (h // r) * width + (h % r) * dh
            return h * width + (r if which == "k" else r + 1) * dh

        count = self.n_heads if which == "q" else self.n_kv_heads
        heads = range(count) if head is None else [head]
        index = [start(h) + i for h in heads for i in range(dh)]
        if head is not None:
            return Cols(index[0], index[-1] + 1)
        return Cols(index=index)

    def mlp_pre(self, layer: int) -> tuple[nn.Module, Cols | None]:
        """The module whose output (or these columns of it) is mlp.pre (a gate's
        pre-activation in a gated MLP)."""
        if self.s.gate_up:
            return self._at(layer, self.s.gate_up), Cols(0, self.d_mlp)
        return self._at(layer, self.s.gate or self.s.up), None

    def mlp_down(self, layer: int) -> nn.Module:
        """The MLP output projection; its input is mlp.post."""
        return self._at(layer, self.s.down)

    def attn_out_module(self, layer: int) -> nn.Module:
        """The module whose output the block adds as the attention's contribution."""
        return self._at(layer, self.s.post_attn or self.s.attn_out or self.s.attn)

    def mlp_out_module(self, layer: int) -> nn.Module:
        """The module whose output the block adds as the MLP's contribution."""
        return self._at(layer, self.s.post_mlp or self.s.mlp_out)

    def resid_mid_module(self, layer: int) -> nn.Module:
        """The module whose input is resid_mid (the residual kept for the MLP add)."""
        return self.ln2(layer) if self.s.ln2 else self.mlp(layer)

    def act_fn(self, layer: int) -> nn.Module:
        """The MLP's elementwise activation: input mlp.pre, output act(mlp.pre)."""
        if self.s.act is None:
            what = "a mixture of experts" if self.n_experts else "no activation module"
            raise RuntimeInterventionError(
                "E403", f"{self.family}: the MLP has {what}, so RelP's MLP rules have no "
                        "activation to apply to")
        return self._at(layer, self.s.act)

    def gate_up(self, layer: int) -> tuple[nn.Module, Cols | None] | None:
        """Gated MLPs, act(gate) * up: the module whose output (these columns) is `up`."""
        if self.s.gate_up:
            return self._at(layer, self.s.gate_up), Cols(self.d_mlp, 2 * self.d_mlp)
        if self.s.gate:
            return self._at(layer, self.s.up), None
        return None

    def extra_norms(self) -> list[nn.Module]:
        """Normalizers without a scale site, which RelP's LN-rule covers too: post-norms, and
        norms inside the attention (QK-norms, a differential head's norm). (An identity in a
        post-norm's place, HyperCLOVA X without post-norms, normalizes nothing.)"""
        post = [self._at(i, p) for i in range(self.n_layers)
                for p in (self.s.post_attn, self.s.post_mlp) if p]
        inner = [m for i in range(self.n_layers)
                 for name, m in self.attn(i).named_modules() if name and _is_norm(m)]
        return [m for m in post + inner if not isinstance(m, nn.Identity)]

    # ---- weights and the unembedding ----------------------------------------------------
    def w_out(self, layer: int, head: int) -> Tensor:
        """W_O[head] as [d_head, d_model], so that z_h @ W_O[head] is the head's output."""
        return weight_io(self.o_proj(layer))[head * self.d_head:(head + 1) * self.d_head]

    def logit_factor(self) -> float | None:
        """A constant the family multiplies its logits by (Cohere), or divides them by."""
        if self._logit_scale() is not None:
            return float(self._logit_scale())  # type: ignore[arg-type]
        if self.fam.logit_div:
            return 1.0 / float(getattr(self.config, self.fam.logit_div))
        return None

    def _logit_scale(self) -> float | None:
        """The family's logit multiplier from the config; None where it has none (a null value:
        Cohere Compass then multiplies by 1, which changes nothing)."""
        return getattr(self.config, self.fam.logit_scale) if self.fam.logit_scale else None

    def final_softcap(self) -> float | None:
        """A tanh soft-cap on the final logits (Gemma 2/3), which makes them nonlinear."""
        return getattr(self.config, "final_logit_softcapping", None)

    def _project_out(self) -> nn.Module | None:
        decoder = getattr(self.base, "decoder", None)
        return getattr(decoder, "project_out", None)

    def unembed(self, resid: Tensor) -> Tensor:
        """Final residual -> logits: final norm, unembedding and the family's extras."""
        x = self.ln_final()(resid)
        proj = self._project_out()
        if proj is not None:
            x = proj(x)
        logits = self.model.get_output_embeddings()(x)
        if self._logit_scale() is not None:
            logits = logits * self._logit_scale()
        if self.fam.logit_div:
            logits = logits / getattr(self.config, self.fam.logit_div)
        cap = self.final_softcap()
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def unembed_rows(self, tokens: Tensor) -> Tensor:
        """[k, d_model] rows u_t such that logit(t) = normed_resid @ u_t + (a bias): the
        unembedding after the final norm, for direct logit attribution."""
        w = param(self.model.get_output_embeddings())
        rows = w[tokens.to(w.device)]
        proj = self._project_out()
        if proj is not None:
            rows = rows @ param(proj)
        factor = self.logit_factor()
        return rows if factor is None else rows * factor

    # ---- normalizers --------------------------------------------------------------------
    def kv_head(self, head: int) -> int:
        return head // (self.n_heads // self.n_kv_heads)

    def norm_weight(self, module: nn.Module) -> Tensor | None:
        """The normalizer's effective elementwise weight (None: no affine weight)."""
        w = param(module) if getattr(module, "weight", None) is not None else None
        if w is None:
            return None
        return w + self.rms_offset if self.rms_offset else w

    def norm_eps(self, module: nn.Module) -> float:
        for name in ("eps", "variance_epsilon", "epsilon"):
            if getattr(module, name, None) is not None:
                return float(getattr(module, name))
        if self.fam.eps is not None:
            return self.fam.eps
        if self.fam.inferred:  # (the config's, else torch's default; inferred.py checks the
            # norm's formula with it on the weights)
            for key in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"):
                if isinstance(getattr(self.config, key, None), float):
                    return float(getattr(self.config, key))
            return 1e-5
        name = type(module).__name__
        raise RuntimeInterventionError("E401", f"cannot find the epsilon of {name}")


def _is_norm(module: nn.Module) -> bool:
    """A LayerNorm or RMSNorm module (by torch's classes, or a family's `...Norm` class with
    a weight or an epsilon: NanoChat's QK-norms have no weight)."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    name = type(module).__name__
    has_eps = any(getattr(module, e, None) is not None for e in ("eps", "variance_epsilon"))
    return name.endswith("Norm") and "Group" not in name and \
        (isinstance(getattr(module, "weight", None), Tensor) or has_eps)
