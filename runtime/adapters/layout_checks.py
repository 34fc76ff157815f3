"""The identities an adapter's sites rely on, checked on a loaded model in one small forward.

A model whose family row was inferred (inferred.py) is used only if every one holds. Each
check compares what patchc computes (its sites, read through the adapter itself, and the
weights it multiplies directly) with what the model computes:

- reading every site leaves the logits bit for bit;
- each block's output is resid_pre + attn.out + mlp.out, and the next block's input; and
  block 1 run from its cached input (as shared prefixes run it) gives the same logits;
- the MLP side reads resid_pre + attn.out (a sequential block) or resid_pre (a parallel one);
- the heads' `out` (z_h · W_O[h], from the weight) add up, with the output bias, to attn.out;
- the q/k/v projections are plain linear maps of ln1's output, and the MLP reads ln2's
  (edges recompute both);
- the norms compute what the scale sites assume (ln1, ln2);
- with experts: the experts' contributions (and the shared expert's) add up to mlp.out, and
  the MLP patchc runs while an expert site is hooked gives the model's own mlp.out;
- the LM head is a plain linear map, and the logits are the final norm and unembedding of the
  last block's output.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from patchc.runtime.offload import weight_io

from .base import Adapter

TOKENS = 8


def layout_fails(ad: Adapter) -> tuple[int, str] | None:
    """The first identity the adapter's sites break on this model, with how far the checks
    got (None: all hold)."""
    ids = probe_ids(ad)
    plain = ad.model(ids).logits
    kinds = ["resid_pre", "attn.out", "mlp.out", "resid_post", "attn.z", "attn.v"]
    if not ad.parallel_attn:
        kinds.append("resid_mid")
    got: dict[tuple, Tensor] = {}
    seen: dict[tuple, tuple[Tensor, Tensor]] = {}
    sites = [(k, layer, None, keep(got, (k, layer))) for k in kinds
             for layer in range(ad.n_layers)]
    sites += [("out", layer, h, keep(got, ("out", layer, h)))
              for layer in range(ad.n_layers) for h in range(ad.n_heads)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(ad.hooks(sites))
        for layer in range(ad.n_layers):
            for name in ("ln1", "ln2"):
                if getattr(ad.s, name) and not (name == "ln2" and ad.s.ln2 == ad.s.ln1):
                    watch(stack, getattr(ad, name)(layer), seen, (name, layer))
            if ad.parallel_attn and ad.s.ln2:
                watch(stack, ad.resid_mid_module(layer), seen, ("mid", layer))
            for which in ("qkv",) if ad.s.qkv else ("q", "k", "v"):
                watch(stack, ad._at(layer, getattr(ad.s, which)), seen, (which, layer))
            if ad.s.mlp:
                watch(stack, ad.mlp(layer), seen, ("mlp", layer))
        watch(stack, ad.model.get_output_embeddings(), seen, ("head",))
        logits = ad.model(ids).logits
    if not torch.equal(logits, plain):
        return 1, "reading its sites changes its logits"
    dtype = plain.dtype
    for layer in range(ad.n_layers):
        why = _block_fails(ad, layer, got, seen, dtype)
        if why is not None:
            return why
    if ad.n_layers > 1:
        why = _skipped_prefix_fails(ad, ids, got["resid_pre", 1], plain)
        if why is not None:
            return 3, why
    if ad.n_experts:
        why = experts_fail(ad, ids)
        if why is not None:
            return 8, why
    head = ad.model.get_output_embeddings()
    if ("head",) in seen and not _plain_linear(head, *seen["head",], dtype):
        return 9, (f"its LM head ({type(head).__name__}) is not a plain linear map of its "
                   "weight, which metrics and dla unembed with")
    last = got["resid_post", ad.n_layers - 1]
    if not close(ad.unembed(last), plain, dtype):
        return 9, ("the logits are not the final norm and unembedding of the last block's "
                   "output (a logit scale, soft-cap or extra layer the family table would name)")
    return None


def _block_fails(ad: Adapter, layer: int, got: dict, seen: dict, dtype: torch.dtype
                 ) -> tuple[int, str] | None:
    pre, attn, mlp = got["resid_pre", layer], got["attn.out", layer], got["mlp.out", layer]
    post = got["resid_post", layer]
    where = f"in block {layer}"
    if not adds_up([pre, attn, mlp], post, dtype):
        return 2, (f"{where}, resid_pre + attn.out + mlp.out is not the block's output (it "
                   "adds something else: norms after the sub-blocks, or a scaled residual)")
    if layer + 1 < ad.n_layers and not torch.equal(got["resid_pre", layer + 1], post):
        return 3, f"block {layer + 1} does not read block {layer}'s output"
    if not ad.parallel_attn and not adds_up([pre, attn], got["resid_mid", layer], dtype):
        return 4, f"{where}, the MLP does not read resid_pre + attn.out (a parallel block?)"
    if ad.parallel_attn and ("mid", layer) in seen and \
            not close(seen["mid", layer][0], pre, dtype):
        return 4, f"{where}, the MLP does not read resid_pre (a sequential block?)"
    if not (ad.s.post_attn or ad.s.attn_out):
        heads = [got["out", layer, h] for h in range(ad.n_heads)]
        bias = getattr(ad.o_proj(layer), "bias", None)
        if isinstance(bias, Tensor):
            heads.append(bias.detach().expand_as(attn))
        if not adds_up(heads, attn, dtype, slack=ad.n_heads):
            return 5, (f"{where}, the heads' out (z_h · W_O[h]) do not add up to attn.out: "
                       f"{ad.s.o_proj} is not a plain linear map of the heads' z")
    for which in ("qkv",) if ad.s.qkv else ("q", "k", "v"):
        x, out = seen.get((which, layer), (None, None))
        module = ad._at(layer, getattr(ad.s, which))
        if x is not None and not _plain_linear(module, x, out, dtype):
            return 6, (f"{where}, {getattr(ad.s, which)} is not a plain linear map, which "
                       "edges into q, k and v recompute from its weight")
        reads = seen["ln1", layer][1] if ("ln1", layer) in seen else \
            None if ad.s.ln1 else pre  # (no pre-attention norm: the residual itself)
        if x is not None and reads is not None and not close(x, reads, dtype):
            return 6, (f"{where}, the attention's projections do not read "
                       f"{ad.s.ln1 or 'resid_pre'}'s output, which edges into q, k and v "
                       "assume")
    if ("mlp", layer) in seen:  # (edges into mlp.in recompute its input from this)
        x = seen["mlp", layer][0]
        if ad.s.ln2:  # (one norm for both: ln1's output)
            norm = seen.get(("ln1" if ad.s.ln2 == ad.s.ln1 else "ln2", layer))
            reads = norm[1] if norm is not None else None
        else:
            reads = pre if ad.parallel_attn else got["resid_mid", layer]
        if reads is not None and not close(x, reads, dtype):
            what = ad.s.ln2 or ("resid_pre" if ad.parallel_attn else "resid_mid")
            return 6, (f"{where}, the MLP does not read {what}'s output, which edges into "
                       "mlp.in assume")
    if ad.s.qkv and not close(first_values(ad, got["attn.v", layer]),
                              got["attn.z", layer][:, :1], dtype):
        return 6, (f"{where}, the first token's attention output is not its value: the "
                   f"columns of {ad.s.qkv} are not laid out as this layout reads them")
    for name in ("ln1", "ln2"):
        if (name, layer) in seen:
            x, out = seen[name, layer]
            norm = getattr(ad, name)(layer)
            w = ad.norm_weight(norm)
            want = formula(x, ad.norm, w.float() if w is not None else torch.ones(()),
                           getattr(norm, "bias", None), ad.norm_eps(norm))
            if not close(want, out, dtype):
                return 7, (f"{where}, {getattr(ad.s, name)} does not compute a {ad.norm} with "
                           f"its weight, so {name}.scale would be wrong")
    return None


def _skipped_prefix_fails(ad: Adapter, ids: Tensor, state: Tensor, plain: Tensor
                          ) -> str | None:
    """Whether the model computes the same logits when block 0 is skipped and block 1 starts
    from its cached input, as the optimizer's shared prefixes run it (a block that keeps
    state for later ones, a value residual, would leave it stale)."""
    from patchc.runtime.compat import blocks_return_tuples
    from patchc.runtime.prefix import skip_layers

    as_tuple = blocks_return_tuples(ad.model, ad.layer(0))
    ad.model(torch.flip(ids, dims=(1,)))  # (other tokens first: state left on a module is
    with skip_layers(ad.layers(), 1, state, as_tuple):  # then another prompt's)
        skipped = ad.model(ids).logits
    if not close(skipped, plain, plain.dtype):
        return ("its blocks pass something to later blocks besides the residual stream (a "
                "value residual?): run from a later block, as patchc shares prefixes, the "
                "logits differ")
    return None


def experts_fail(ad: Adapter, ids: Tensor) -> str | None:
    """Whether the experts' contributions (and the shared expert's) add up to mlp.out, and
    the MLP as patchc runs it while expert sites are hooked is the model's own."""
    own: dict[tuple, Tensor] = {}
    with contextlib.ExitStack() as stack:  # (raw hooks: the model's own experts run)
        for layer in range(ad.n_layers):
            stack.callback(ad.mlp_out_module(layer).register_forward_hook(
                lambda m, a, out, layer=layer: own.__setitem__(
                    layer, output(out).detach().float())).remove)
        ad.model(ids)
    got: dict[tuple, Tensor] = {}
    kinds = [("expert.out", e) for e in range(ad.n_experts)]
    if not ad.missing("shared.out"):
        kinds.append(("shared.out", None))
    sites = [(k, layer, e, keep(got, (k, layer, e))) for k, e in kinds
             for layer in range(ad.n_layers)]
    sites += [("mlp.out", layer, None, keep(got, ("mlp.out", layer, None)))
              for layer in range(ad.n_layers)]
    with ad.hooks(sites):
        ad.model(ids)
    for layer in range(ad.n_layers):
        total = got["mlp.out", layer, None]
        if not close(total, own[layer], total.dtype):
            return (f"in block {layer}, the MLP patchc runs for expert sites does not give the "
                    "model's own mlp.out (its experts or its block compute something else)")
        parts = [got[k, layer, e] for k, e in kinds]
        if not adds_up(parts, total, total.dtype, slack=len(parts)):
            return (f"in block {layer}, the experts' contributions"
                    f"{'' if ad.missing('shared.out') else ' and the shared expert'} do not "
                    "add up to mlp.out")
    return None


def _plain_linear(module: nn.Module, x: Tensor, out: Tensor, dtype: torch.dtype) -> bool:
    """Whether `module` computed x · W (+ b) from its own weight (nn.Linear, or GPT-2's
    Conv1D, whose weight is [in, out])."""
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        return False
    w = weight_io(module).float()
    b = getattr(module, "bias", None)
    want = x.float().to(w.device) @ w + (b.float() if isinstance(b, Tensor) else 0.0)
    return want.shape == out.shape and close(want, out, dtype)


def formula(x: Tensor, kind: str, w: Tensor, bias: Any, eps: float) -> Tensor:
    """A norm's output as the scale sites compute it: centered (LayerNorm) or not, times
    rsqrt(mean square + eps), times the weight, plus the bias."""
    xf = x.float()
    xc = xf - xf.mean(-1, keepdim=True) if kind == "layernorm" else xf
    out = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps) * w.to(xf.device)
    return out + bias.float() if isinstance(bias, Tensor) else out


def head_values(ad: Adapter, v: Tensor) -> Tensor:
    """attn.v [b, s, kv heads * d_head] as each query head reads it: [b, heads, s, d_head]."""
    b, s = v.shape[:2]
    per_kv = v.reshape(b, s, ad.n_kv_heads, ad.d_head).transpose(1, 2)
    return per_kv.repeat_interleave(ad.n_heads // ad.n_kv_heads, dim=1)


def first_values(ad: Adapter, v: Tensor) -> Tensor:
    """What each head's z is at the first position, where causal attention has one key:
    its kv head's value there, [b, 1, heads * d_head]."""
    return head_values(ad, v[:, :1]).transpose(1, 2).reshape(v.shape[0], 1, -1)


def probe_ids(ad: Adapter, rows: int = 2, tokens: int = TOKENS) -> Tensor:
    """Token ids of a probe: `rows` prompts of `tokens` tokens spread over the vocabulary
    (seeded: a layout is settled the same way every time)."""
    from patchc.runtime.loading import input_device

    n = min(tokens, ad.n_ctx)
    ids = torch.randint(0, ad.vocab_size, (rows, n), generator=torch.Generator().manual_seed(7))
    return ids.to(input_device(ad.model))


def keep(got: dict, key: tuple):
    def fn(act: Tensor) -> None:
        got[key] = act.detach().clone()
    return fn


def watch(stack: contextlib.ExitStack, module: nn.Module, seen: dict, key: tuple) -> None:
    """Record the module's first input and its output (float32)."""
    def post(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        seen[key] = (x.detach().float(), output(out).detach().float())
    stack.callback(module.register_forward_hook(post, with_kwargs=True).remove)


def output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def close(got: Tensor, want: Tensor, dtype: torch.dtype) -> bool:
    """Equal up to rounding, token by token: relative to the largest value of each row (a
    token's vector), 1e-4 in float32, 3e-2 in 16-bit types. (Per row: a token with huge
    activations must not set the tolerance of the others.)"""
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    got, want = got.float(), want.float().to(got.device)
    if got.shape != want.shape:
        return False
    return bool(((got - want).abs().amax(-1) <= tol * (want.abs().amax(-1) + 1e-6)).all())


def adds_up(parts: list[Tensor], total: Tensor, dtype: torch.dtype, slack: int = 1) -> bool:
    """Whether the parts sum to `total` feature by feature, up to the rounding of adding
    them in `dtype` (two units in the last place of the terms' magnitudes; `slack` times
    more for a sum computed another way, as a projection's per-head parts). Element by
    element: one feature of huge magnitude (a "massive activation") must not hide a part
    that is scaled, or missing, in all the others."""
    if any(p.shape != total.shape for p in parts):
        return False
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    if dtype in (torch.float32, torch.float64):
        eps = max(eps, 1e-6)  # (fp32 kernels sum in other orders: a few e-7 apart)
    total = total.float()
    ps = [p.float().to(total.device) for p in parts]
    room = 2 * slack * eps * (sum(p.abs() for p in ps) + total.abs()) + 1e-6
    return bool(((sum(ps) - total).abs() <= room).all())
