"""A dictionary's weights and its encode/decode, as SAELens computes them.

`Dictionary.load(info)` reads `sae_weights.safetensors` (or `sae_weights.npz` with pickles
refused: loading never unpickles); `Dictionary.from_saelens(sae, info)` takes the tensors of
an SAELens `SAE` object given through the API (the sae-lens package itself is never
imported). The formulas follow sae_lens/saes/{standard,topk,jumprelu}_sae.py and
transcoder.py:

    encode:  x_in = norm_in(x) - b_dec * apply_b_dec_to_input
             pre  = x_in @ W_enc + b_enc
             f    = relu(pre)                              standard, transcoder
                    topk(relu) of pre (x |W_dec| rows if rescale_acts_by_decoder_norm)  topk
                    relu(pre) * (pre > threshold)          jumprelu
    decode:  out  = f @ W_dec + b_dec  (f / |W_dec| rows first for a rescaled topk)
             SAEs: norm_out(out); skip transcoders add x @ W_skip.T

`norm_in`/`norm_out` are cfg.json's `normalize_activations`: `constant_norm_rescale` scales
each token to norm sqrt(d_in) and back, `layer_norm` standardizes each token (SAELens' own
unbiased std, eps 1e-5) and restores mean and std; `none` and `expected_average_only_in` (a
factor SAELens folds into the weights only for hub releases; from a folder it is the
identity, as in SAELens) do nothing. A transcoder normalizes its input but, as in SAELens,
not its output. Everything is computed in float32; results come back in the input's dtype.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from patchc.compiler.dictionaries import DictInfo, is_dict_kind, split_kind
from patchc.compiler.errors import NO_SPAN, PatchcError, RuntimeInterventionError, Span
from patchc.compiler.ir import Site

LN_EPS = 1e-5


@dataclass
class Normalized:
    """What norm_out needs from norm_in of the same tokens."""

    scale: torch.Tensor | None = None  # constant_norm_rescale: the factor applied
    mu: torch.Tensor | None = None  # layer_norm
    std: torch.Tensor | None = None


class Dictionary:
    """One SAE or transcoder: its DictInfo and float32 tensors W_enc [d_in, d_sae], b_enc,
    W_dec [d_sae, d_out], b_dec, and threshold (JumpReLU) / W_skip (skip transcoder)."""

    def __init__(self, info: DictInfo, params: dict[str, torch.Tensor]) -> None:
        self.info = info
        need = {"W_enc": (info.d_in, info.d_sae), "b_enc": (info.d_sae,),
                "W_dec": (info.d_sae, info.d_out), "b_dec": (info.d_out,)}
        if info.architecture.startswith("jumprelu"):
            need["threshold"] = (info.d_sae,)
        if info.architecture == "skip_transcoder":
            need["W_skip"] = (info.d_out, info.d_in)
        self.params: dict[str, torch.Tensor] = {}
        for key, shape in need.items():
            t = params.get(key)
            if t is None:
                raise RuntimeInterventionError(
                    "E480", f"{info.kind} `{info.name}`: its weights have no `{key}`")
            if tuple(t.shape) != shape:
                raise RuntimeInterventionError(
                    "E480", f"{info.kind} `{info.name}`: `{key}` has shape "
                    f"{tuple(t.shape)}, cfg.json implies {shape}")
            self.params[key] = t.detach().to(torch.float32)
        self._on: dict[torch.device, dict[str, torch.Tensor]] = {}

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, info: DictInfo) -> "Dictionary":
        path = os.path.join(info.path, info.weights)
        try:
            if path.endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    params = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
            else:
                params = load_file(path)
        except (OSError, ValueError, RuntimeError) as e:
            raise RuntimeInterventionError(
                "E481", f"{info.kind} `{info.name}`: cannot read {path}: {e}") from None
        scaling = params.pop("scaling_factor", None)
        if scaling is not None and not bool(torch.all(scaling == 1)):
            raise RuntimeInterventionError(
                "E480", f"{info.kind} `{info.name}`: a scaling_factor other than 1 (SAELens' "
                "finetuning scaling) is not supported")
        return cls(info, params)

    @classmethod
    def from_saelens(cls, sae: Any, info: DictInfo) -> "Dictionary":
        """The tensors of an SAELens `SAE` (or anything with its parameter names)."""
        params = {k: v for k, v in sae.state_dict().items() if isinstance(v, torch.Tensor)}
        return cls(info, params)

    def weights(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._on:
            self._on[device] = {k: v.to(device) for k, v in self.params.items()}
        return self._on[device]

    # ---- the math -----------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Normalized]:
        """Latents [..., d_sae] (float32) of inputs [..., d_in], and the normalization state
        that `decode` needs for the same tokens."""
        info, w = self.info, self.weights(x.device)
        h = x.to(torch.float32)
        norm = Normalized()
        if info.normalize_activations == "constant_norm_rescale":
            norm.scale = math.sqrt(info.d_in) / h.norm(dim=-1, keepdim=True)
            h = h * norm.scale
        elif info.normalize_activations == "layer_norm":
            norm.mu = h.mean(dim=-1, keepdim=True)
            h = h - norm.mu
            norm.std = h.std(dim=-1, keepdim=True)
            h = h / (norm.std + LN_EPS)
        if info.apply_b_dec_to_input:
            h = h - w["b_dec"]
        pre = h @ w["W_enc"] + w["b_enc"]
        arch = info.architecture
        if arch == "topk":
            if info.rescale_acts_by_decoder_norm:
                pre = pre * w["W_dec"].norm(dim=-1)
            values, index = torch.topk(pre, k=info.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, index, values.relu()), norm
        f = pre.relu()
        if arch.startswith("jumprelu"):
            f = f * (pre > w["threshold"]).to(f.dtype)
        return f, norm

    def decode(self, f: torch.Tensor, norm: Normalized,
               x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction [..., d_out] (float32) of latents f; `x` is the input the
        latents came from (a skip transcoder adds x @ W_skip.T)."""
        info, w = self.info, self.weights(f.device)
        if info.architecture == "topk" and info.rescale_acts_by_decoder_norm:
            f = f / w["W_dec"].norm(dim=-1)
        out = f.to(torch.float32) @ w["W_dec"] + w["b_dec"]
        if info.kind == "sae":
            if norm.scale is not None:
                out = out / norm.scale
            elif norm.std is not None and norm.mu is not None:
                out = out * norm.std + norm.mu
        if info.architecture == "skip_transcoder":
            assert x is not None
            out = out + x.to(torch.float32) @ w["W_skip"].T
        return out

    def scaled(self, f: torch.Tensor, norm: Normalized) -> torch.Tensor:
        """The latents in the host's units: f times each token's output factor of decode
        (an SAE's constant_norm_rescale divides its output by the input's scale, layer_norm
        multiplies it by the input's std; 1 otherwise), so that a latent's contribution is
        linear in them: `contribution` of the scaled latents."""
        if self.info.kind == "sae" and norm is not None:
            if norm.scale is not None:
                return f / norm.scale
            if norm.std is not None:
                return f * norm.std
        return f

    def contribution(self, f: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """What latents lo..hi-1 with scaled activations f [..., hi - lo] (`scaled`) add to
        the reconstruction, [..., d_out] float32: f @ W_dec[lo:hi] (f divided by the decoder
        rows' norms first for a rescaled TopK, as decode does); neither the decoder bias nor
        a skip transcoder's W_skip term belongs to a latent."""
        w = self.weights(f.device)
        rows = w["W_dec"][lo:hi]
        f = f.to(torch.float32)
        if self.info.architecture == "topk" and self.info.rescale_acts_by_decoder_norm:
            f = f / rows.norm(dim=-1)
        return f @ rows

    def decode_change(self, new: torch.Tensor, old: torch.Tensor, norm: Normalized
                      ) -> torch.Tensor:
        """decode(new) - decode(old) for latents of the same tokens, from the latents that
        differ only: decode is affine in the latents (the bias and a skip transcoder's
        x @ W_skip.T cancel; norm_out scales each token), so a sweep that changes one latent
        per row pays for the changed columns of W_dec, not all d_sae of them. Equal latents
        give exactly 0."""
        info, w = self.info, self.weights(new.device)
        shape = new.shape[:-1]
        new, old = new.reshape(-1, info.d_sae), old.reshape(-1, info.d_sae)
        dec = w["W_dec"]
        if info.architecture == "topk" and info.rescale_acts_by_decoder_norm:
            dec = dec / dec.norm(dim=-1, keepdim=True)
        # The changed entries, compared first: a sweep pass changes one latent per row, so
        # the change is a sum over those entries (no full-width difference, no d_sae matmul).
        r, c = new.ne(old).nonzero(as_tuple=True)
        if r.numel() * 8 <= new.numel():
            step = new[r, c].to(torch.float32) - old[r, c].to(torch.float32)
            out = torch.zeros(new.shape[0], info.d_out, device=new.device)
            out.index_add_(0, r, step[:, None] * dec[c])
        else:
            out = (new.to(torch.float32) - old.to(torch.float32)) @ dec
        out = out.view(*shape, info.d_out)
        if info.kind == "sae":
            if norm.scale is not None:
                out = out / norm.scale
            elif norm.std is not None:
                out = out * norm.std
        return out


def host_space(dictionaries: dict[str, "Dictionary"], site: Site, value: torch.Tensor
               ) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """A value read at `site` as a vector of its host's space, with the host features it
    covers (None: all): a dictionary's (scaled) latents become their decoded contribution,
    its error term already is one; any other site is itself. What `dla` and `lens` decode
    (they read latents as compiler.dictionaries.decoded_site)."""
    if not is_dict_kind(site.kind):
        return value, site.features
    name, err = split_kind(site.kind)
    if err:
        return value, site.features
    d = dictionaries[name]
    lo, hi = site.features or (0, d.info.d_sae)
    return d.contribution(value, lo, hi), None


def load_all(infos: tuple[DictInfo, ...], given: dict[str, Any] | None = None,
             spans: dict[str, Span] | None = None) -> dict[str, Dictionary]:
    """Every declared dictionary by name: the SAELens object the caller passed for it (the
    API's `saes=`), else its folder's weights. `spans`: each declaration's place in the
    spec, where an error about its weights points."""
    given = given or {}
    unknown = sorted(set(given) - {info.name for info in infos})
    if unknown:
        raise RuntimeInterventionError(
            "E484", f"saes= names {', '.join(unknown)}, which the spec does not declare",
            hint="declare it: sae NAME = \"PATH\" at SITE (the object stands in for PATH)")
    out = {}
    for info in infos:
        try:
            out[info.name] = Dictionary.from_saelens(given[info.name], info) \
                if info.name in given else Dictionary.load(info)
        except PatchcError as e:
            if e.span == NO_SPAN and spans and info.name in spans:
                e.span = spans[info.name]
            raise
    return out


def saelens_config(sae: Any) -> dict[str, Any]:
    """The cfg.json contents of an SAELens `SAE` object (`sae.cfg.to_dict()`, or the
    config's fields), as plain JSON values; its metadata's hook_name is kept."""
    cfg = getattr(sae, "cfg", None)
    if cfg is None:
        raise RuntimeInterventionError("E484", f"{type(sae).__name__} is not an SAELens SAE "
                                       "(it has no cfg)")
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "metadata":
            value = value if isinstance(value, dict) else getattr(value, "__dict__", {})
            out[key] = {k: v for k, v in value.items() if isinstance(v, (str, int, float))}
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
    return out
