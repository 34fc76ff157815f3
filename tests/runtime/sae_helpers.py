"""Random-weight dictionaries saved in SAELens' folder layout, and an independent encode /
decode written here from SAELens' formulas (sae_lens/saes/*.py), for the dictionary tests.

Nothing here imports patchc: the tests compare what patchc computes with these functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def save_sae(path: Path, d_in: int, d_sae: int, arch: str = "standard", *,
             apply_b_dec: bool = True, norm: str = "none", k: int = 4, d_out: int | None = None,
             seed: int = 0, hook_name: str | None = None, fmt: str = "safetensors",
             bias: float = -0.3, rescale: bool = False, cfg_extra: dict | None = None
             ) -> dict[str, torch.Tensor]:
    """Write cfg.json and the weights; returns the weights. `bias` shifts b_enc down so that
    a good share of latents is inactive (ReLU), as in a trained SAE."""
    g = torch.Generator().manual_seed(seed)
    transcoder = "transcoder" in arch
    d_o = d_out if d_out is not None else d_in
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1 + bias,
        "W_dec": torch.randn(d_sae, d_o, generator=g) / math.sqrt(d_sae),
        "b_dec": torch.randn(d_o, generator=g) * 0.1,
    }
    if arch.startswith("jumprelu"):
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.2
    if arch == "skip_transcoder":
        w["W_skip"] = torch.randn(d_o, d_in, generator=g) * 0.05
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": apply_b_dec and not transcoder,
           "normalize_activations": norm, "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.5.0", "hook_name": hook_name}}
    if arch == "topk":
        cfg["k"] = k
        cfg["rescale_acts_by_decoder_norm"] = rescale
    if transcoder:
        cfg["d_out"] = d_o
    cfg.update(cfg_extra or {})
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    if fmt == "npz":
        np.savez(path / "sae_weights.npz", **{k: v.numpy() for k, v in w.items()})
    else:
        save_file({k: v.contiguous() for k, v in w.items()}, str(path / "sae_weights.safetensors"))
    return w


class HandSAE:
    """encode/decode from the weights and cfg, as SAELens computes them (the oracle)."""

    def __init__(self, w: dict[str, torch.Tensor], arch: str = "standard", *,
                 apply_b_dec: bool = True, norm: str = "none", k: int = 4,
                 rescale: bool = False) -> None:
        self.w, self.arch, self.norm, self.k, self.rescale = w, arch, norm, k, rescale
        self.transcoder = "transcoder" in arch
        self.apply_b_dec = apply_b_dec and not self.transcoder
        self.state: dict = {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        w, x = self.w, x.float()
        if self.norm == "constant_norm_rescale":
            self.state["c"] = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True)
            x = x * self.state["c"]
        elif self.norm == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            x = x - mu
            std = x.std(-1, keepdim=True)
            x = x / (std + 1e-5)
            self.state.update(mu=mu, std=std)
        if self.apply_b_dec:
            x = x - w["b_dec"]
        pre = x @ w["W_enc"] + w["b_enc"]
        if self.arch == "topk":
            if self.rescale:
                pre = pre * w["W_dec"].norm(dim=-1)
            vals, idx = pre.topk(self.k, dim=-1)
            out = torch.zeros_like(pre)
            return out.scatter(-1, idx, vals.relu())
        if self.arch.startswith("jumprelu"):
            return torch.where(pre > w["threshold"], pre.relu(), torch.zeros_like(pre))
        return pre.relu()

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        w = self.w
        if self.arch == "topk" and self.rescale:
            f = f / w["W_dec"].norm(dim=-1)
        out = f @ w["W_dec"] + w["b_dec"]
        if not self.transcoder:
            if self.norm == "constant_norm_rescale":
                out = out / self.state["c"]
            elif self.norm == "layer_norm":
                out = out * self.state["std"] + self.state["mu"]
        if self.arch == "skip_transcoder":
            out = out + x.float() @ w["W_skip"].T
        return out
