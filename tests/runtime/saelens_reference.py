"""An independent reference for SAELens dictionaries: encode and decode computed from a
folder's `cfg.json` and weights the way SAELens 6 does (sae_lens/saes/standard_sae.py,
topk_sae.py, jumprelu_sae.py, transcoder.py and the normalizations of sae.py), written here
without patchc, and used to check both the bundled dictionaries (examples/saes/) and what
patchc computes.

    process input:  x -> normalize_in(x) -> minus b_dec if apply_b_dec_to_input (never for a
                    transcoder, whose b_dec lives in the output space)
    pre = x_in @ W_enc + b_enc
    standard, transcoder:  relu(pre)
    topk:                  relu of the k largest pre-activations, 0 elsewhere
    jumprelu:              relu(pre) where pre > threshold, 0 elsewhere
    decode:          f @ W_dec + b_dec, then normalize_out for an SAE (not a transcoder)

normalize_activations: `constant_norm_rescale` multiplies each token by sqrt(d_in) / |x| and
divides the output by the same factor; `layer_norm` subtracts the token's mean, divides by its
(unbiased) standard deviation + 1e-5, and undoes both on the output; `none` and
`expected_average_only_in` (folded into the weights when SAELens loads a hub release; the
identity for a folder) change nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


class Reference:
    """One dictionary folder (or a cfg dict and tensors), computed as SAELens would."""

    def __init__(self, cfg: dict, w: dict[str, torch.Tensor]):
        self.cfg = cfg
        self.w = {k: v.float() for k, v in w.items()}
        self.transcoder = "transcoder" in cfg["architecture"]

    @classmethod
    def load(cls, folder: Path) -> "Reference":
        cfg = json.loads((folder / "cfg.json").read_text("utf-8"))
        return cls(cfg, load_file(str(folder / "sae_weights.safetensors")))

    def _norm_in(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        mode = self.cfg.get("normalize_activations", "none")
        if mode == "constant_norm_rescale":
            factor = math.sqrt(self.cfg["d_in"]) / torch.linalg.vector_norm(x, dim=-1,
                                                                            keepdim=True)
            return x * factor, ("scale", factor)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            sd = centred.std(dim=-1, keepdim=True)
            return centred / (sd + 1e-5), ("ln", mu, sd)
        return x, None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Latents [..., d_sae] and the normalization state decode needs."""
        x, state = self._norm_in(x.float())
        if self.cfg.get("apply_b_dec_to_input", True) and not self.transcoder:
            x = x - self.w["b_dec"]
        pre = torch.einsum("...i,ij->...j", x, self.w["W_enc"]) + self.w["b_enc"]
        arch = self.cfg["architecture"]
        if arch == "topk":
            # keep what is at least the k-th largest value of its row (no ties in float data)
            kth = pre.sort(dim=-1, descending=True).values[..., self.cfg["k"] - 1: self.cfg["k"]]
            return torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre)), state
        if arch.startswith("jumprelu"):
            keep = pre > self.w["threshold"]
            return torch.where(keep, pre.clamp_min(0), torch.zeros_like(pre)), state
        return pre.clamp_min(0), state

    def decode(self, f: torch.Tensor, state: object) -> torch.Tensor:
        out = torch.einsum("...j,jo->...o", f.float(), self.w["W_dec"]) + self.w["b_dec"]
        if self.transcoder or state is None:
            return out
        if state[0] == "scale":
            return out / state[1]
        _, mu, sd = state
        return out * sd + mu

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))
