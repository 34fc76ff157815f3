"""The dictionary trainer behind examples/train_saes.py: a sparse autoencoder or transcoder in
SAELens' parameter layout, its training loop, and the writer of SAELens' folder layout.

One module holds all four architectures SAELens names in `cfg.json`:

- `standard`   f = ReLU(W_enc^T (x - b_dec) + b_enc), trained with an L1 penalty
- `topk`       the k largest pre-activations (then ReLU), the rest 0; trained on the error alone
- `jumprelu`   f = z * [z > threshold] with z the pre-activation; trained with an L0 penalty
               through straight-through estimates of the threshold's gradient (Rajamanoharan
               et al. 2024, "Jumping Ahead")
- `transcoder` a ReLU dictionary that reads the MLP's input and reconstructs the MLP's output
               (Dunefsky et al. 2024); no decoder bias is subtracted from its input

Shapes follow SAELens: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
threshold [d_sae]. Decoder rows are kept at unit norm while training, so a latent's activation
is the length of its contribution.

Training sees activations rescaled so that the mean squared norm equals the width (one penalty
coefficient suits every site); the scale is folded back into the weights before saving, so the
shipped dictionaries read the model's raw activations (`normalize_activations: "none"`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """What to train: the architecture, its width and sparsity knob, and the optimizer."""

    arch: str                      # standard | topk | jumprelu | transcoder
    d_sae: int
    apply_b_dec_to_input: bool = True
    k: int = 0                     # topk only
    sparsity: float = 0.0          # L1 (standard, transcoder) or L0 (jumprelu) coefficient
    bandwidth: float = 0.05        # jumprelu: width of the straight-through window
    init_threshold: float = 0.1    # jumprelu
    steps: int = 3000
    batch: int = 1024
    lr: float = 1e-3
    seed: int = 0


class _Rect:
    """The rectangle kernel of the straight-through estimates: 1 on (-1/2, 1/2)."""

    @staticmethod
    def of(u: torch.Tensor) -> torch.Tensor:
        return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpGate(torch.autograd.Function):
    """z * [z > t] forward; backward passes the gradient to z where the gate is open and gives
    t the pseudo-derivative -(t / eps) K((z - t) / eps)."""

    @staticmethod
    def forward(ctx, z, t, eps):
        ctx.save_for_backward(z, t)
        ctx.eps = eps
        return z * (z > t).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, t = ctx.saved_tensors
        eps = ctx.eps
        gz = g * (z > t).to(z.dtype)
        gt = (-(t / eps) * _Rect.of((z - t) / eps) * g).sum(0)
        return gz, gt, None


class Step(torch.autograd.Function):
    """[z > t] forward (the L0 count); t gets the pseudo-derivative -(1 / eps) K((z - t) / eps),
    z gets none."""

    @staticmethod
    def forward(ctx, z, t, eps):
        ctx.save_for_backward(z, t)
        ctx.eps = eps
        return (z > t).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, t = ctx.saved_tensors
        eps = ctx.eps
        return None, (-(1.0 / eps) * _Rect.of((z - t) / eps) * g).sum(0), None


class Dictionary(nn.Module):
    """A trainable dictionary with SAELens' parameter names."""

    def __init__(self, recipe: Recipe, d_in: int, d_out: int):
        super().__init__()
        self.recipe = recipe
        g = torch.Generator().manual_seed(recipe.seed)
        w_dec = torch.randn(recipe.d_sae, d_out, generator=g)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        if d_in == d_out:  # tied start: the encoder reads along the decoder's directions
            w_enc = w_dec.T.clone()
        else:
            w_enc = torch.randn(d_in, recipe.d_sae, generator=g) / math.sqrt(d_in)
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(recipe.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if recipe.arch == "jumprelu":
            self.log_threshold = nn.Parameter(
                torch.full((recipe.d_sae,), math.log(recipe.init_threshold)))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        if self.recipe.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents from pre-activations z."""
        arch = self.recipe.arch
        if arch in ("standard", "transcoder"):
            return torch.relu(z)
        if arch == "topk":
            vals, idx = z.topk(self.recipe.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))
        if arch == "jumprelu":
            return JumpGate.apply(torch.relu(z), self.log_threshold.exp(),
                                  self.recipe.bandwidth)
        raise ValueError(arch)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def loss(self, x: torch.Tensor, y: torch.Tensor, coef: float) -> tuple[torch.Tensor, dict]:
        z = self.pre(x)
        f = self.activate(z)
        err = (self.decode(f) - y).pow(2).sum(-1).mean()
        arch = self.recipe.arch
        if arch in ("standard", "transcoder"):
            penalty = f.abs().sum(-1).mean()
        elif arch == "jumprelu":
            penalty = Step.apply(z, self.log_threshold.exp(), self.recipe.bandwidth).sum(-1).mean()
        else:
            penalty = torch.zeros(())
        l0 = (f > 0).float().sum(-1).mean()
        return err + coef * penalty, {"err": err.item(), "l0": l0.item()}

    @torch.no_grad()
    def unit_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


def mean_square_scale(a: torch.Tensor) -> float:
    """The factor c with E||c a||^2 = width (SAELens' 'expected average' normalization)."""
    return math.sqrt(a.shape[-1] / a.pow(2).sum(-1).mean().item())


def train(recipe: Recipe, x: torch.Tensor, y: torch.Tensor, log: str) -> tuple[dict, dict]:
    """Train on inputs x [n, d_in] and targets y [n, d_out] (y is x for an autoencoder).
    Returns SAELens tensors for the raw (unscaled) activations, and a training record."""
    torch.manual_seed(recipe.seed)
    c_in, c_out = mean_square_scale(x), mean_square_scale(y)
    xs, ys = x * c_in, y * c_out
    model = Dictionary(recipe, x.shape[1], y.shape[1])
    with torch.no_grad():
        model.b_dec.copy_(ys.mean(0))
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    warm = max(1, recipe.steps // 10)  # the penalty ramps up over the first tenth
    order = torch.Generator().manual_seed(recipe.seed + 1)
    t0 = time.time()
    perm, at = torch.randperm(len(xs), generator=order), 0
    for step in range(recipe.steps):
        if at + recipe.batch > len(perm):
            perm, at = torch.randperm(len(xs), generator=order), 0
        idx = perm[at:at + recipe.batch]
        at += recipe.batch
        coef = recipe.sparsity * min(1.0, (step + 1) / warm)
        loss, stats = model.loss(xs[idx], ys[idx], coef)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.unit_decoder()
        if step % 1000 == 0 or step == recipe.steps - 1:
            print(f"[{log}] step {step:5d}  mse {stats['err']:.3f}  l0 {stats['l0']:.1f}  "
                  f"{time.time() - t0:5.1f}s", flush=True)
    seconds = time.time() - t0
    return fold(model, c_in, c_out), {"seconds": round(seconds, 1), "scale_in": c_in,
                                      "scale_out": c_out}


@torch.no_grad()
def fold(model: Dictionary, c_in: float, c_out: float) -> dict[str, torch.Tensor]:
    """Weights that read raw activations. Trained: f = act(W_enc^T (c_in x - b) + b_enc) and
    y = (W_dec^T f + b) / c_out. Every activation here is positively homogeneous (ReLU, TopK,
    and JumpReLU with its threshold scaled alike), so f / c_out is the same dictionary with
    unit decoder rows kept: W_enc * c_in / c_out, b_enc / c_out, threshold / c_out, b_dec /
    c_out. (For an autoencoder c_in = c_out and W_enc is unchanged.)"""
    r = model.recipe
    out = {"W_enc": model.W_enc * (c_in / c_out), "b_enc": model.b_enc / c_out,
           "W_dec": model.W_dec.clone(), "b_dec": model.b_dec / c_out}
    if r.apply_b_dec_to_input:  # the subtracted bias lives in input units: b / c_in
        assert c_in == c_out, "b_dec is subtracted from the input only for autoencoders"
    if r.arch == "jumprelu":
        out["threshold"] = model.log_threshold.exp() / c_out
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def write_saelens(folder: Path, tensors: dict[str, torch.Tensor], recipe: Recipe,
                  hook_name: str, hook_layer: int, model_name: str, context_size: int,
                  hook_name_out: str | None = None) -> None:
    """The SAELens folder layout: cfg.json and sae_weights.safetensors. cfg.json carries the
    fields of SAELens 6 (a `metadata` object) and, for older readers, the flat fields of the
    5.x layout (hook_name, hook_layer, activation_fn, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = tensors["W_enc"].shape
    d_out = tensors["W_dec"].shape[1]
    arch = recipe.arch
    act = {"topk": "topk"}.get(arch, "relu")
    metadata = {"sae_lens_version": "6.0.0", "sae_lens_training_version": "6.0.0",
                "model_name": model_name, "hook_name": hook_name, "hook_head_index": None,
                "prepend_bos": False, "context_size": context_size,
                "dataset_path": "examples/make_data.py:lm_corpus"}
    if hook_name_out is not None:
        metadata |= {"hook_name_out": hook_name_out, "hook_head_index_out": None}
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": recipe.apply_b_dec_to_input,
           "normalize_activations": "none", "reshape_activations": "none"}
    if arch == "topk":
        cfg |= {"k": recipe.k, "rescale_acts_by_decoder_norm": False}
    if arch == "transcoder":
        cfg["d_out"] = d_out
    cfg["metadata"] = metadata
    # the flat (pre-6.0) fields, which SAELens 6 ignores
    cfg |= {"model_name": model_name, "hook_name": hook_name, "hook_layer": hook_layer,
            "hook_head_index": None, "activation_fn": act,
            "activation_fn_kwargs": {"k": recipe.k} if arch == "topk" else {},
            "prepend_bos": False, "context_size": context_size,
            "finetuning_scaling_factor": False}
    if hook_name_out is not None:
        cfg |= {"hook_name_out": hook_name_out, "hook_layer_out": hook_layer}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n", "utf-8")
    save_file(tensors, str(folder / "sae_weights.safetensors"))
