"""Architecture adapters: every canonical site reads and writes correctly on every family:
identity writes are bit-exact, the residual stream decomposes, heads sum, scales normalize,
gradients flow through writes. Attention internals: test_adapters_attention.py."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import types
from typing import Callable

import pytest
import torch
import transformers as tf
from adapter_models import (
    BATCH,
    CONFIGS,
    KINDS,
    PATTERN_KINDS,
    SEQ,
    ad,
    all_sites,
    ids,
    no_hooks_left,
    plain,
    run,
)

from patchc.compiler.errors import RuntimeInterventionError
from patchc.runtime.adapters import Adapter, adapter_for

__all__ = ["ad", "ids"]  # fixtures


# ---- identity and composition ------------------------------------------------------------


def test_identity_every_site_is_bit_exact(ad: Adapter, ids: torch.Tensor) -> None:
    base = plain(ad, ids)
    clone = lambda act: act.clone()  # noqa: E731
    for kind in sorted(KINDS - PATTERN_KINDS):
        sites = all_sites(ad, {kind})
        logits, _ = run(ad, ids, writes=[(*s, clone) for s in sites])
        assert torch.equal(logits, base), kind
    everything = [(*s, clone) for s in all_sites(ad, KINDS - PATTERN_KINDS)]
    logits, _ = run(ad, ids, writes=everything)
    assert torch.equal(logits, base)
    assert no_hooks_left(ad.model)


def test_hooks_removed_on_exception(ad: Adapter, ids: torch.Tensor) -> None:
    impl = ad.model.config._attn_implementation
    with pytest.raises(ValueError):
        with ad.hooks([(*s, lambda a: None) for s in all_sites(ad)]):
            assert ad.model.config._attn_implementation != impl
            raise ValueError("boom")
    assert no_hooks_left(ad.model)
    assert ad.model.config._attn_implementation == impl


def test_every_write_changes_logits(ad: Adapter, ids: torch.Tensor) -> None:
    """No silent no-op writes: perturbing any site at layer 0 / head 1 moves the logits."""
    base = plain(ad, ids)

    def perturb(kind: str) -> Callable:
        def fn(act: torch.Tensor) -> torch.Tensor:
            if kind in PATTERN_KINDS:  # another valid (causal, row-stochastic) pattern
                return torch.ones_like(act).tril() / torch.ones_like(act).tril().sum(-1, True)
            if kind.endswith("scale"):
                return act * 1.5
            return act + 0.5 * torch.randn_like(act)

        return fn

    for kind, layer, head in all_sites(ad):
        if (layer not in (None, 0)) or (head not in (None, 1)):
            continue
        logits, _ = run(ad, ids, writes=[(kind, layer, head, perturb(kind))])
        assert not torch.allclose(logits, base), kind


def test_write_then_read_same_site(ad: Adapter, ids: torch.Tensor) -> None:
    """A read entered after a write on the same site sees the written value."""
    for kind, layer, head in all_sites(ad):
        if (layer not in (None, 0)) or (head not in (None, 1)) or kind in PATTERN_KINDS:
            continue
        new: dict = {}

        def write(act: torch.Tensor, new: dict = new) -> torch.Tensor:
            new["v"] = act * 0.5 + 1.0
            return new["v"]

        _, got = run(ad, ids, reads=[(kind, layer, head)], writes=[(kind, layer, head, write)])
        torch.testing.assert_close(got[(kind, layer, head)], new["v"], msg=kind)


def test_same_site_hooks_survive_out_of_order_exit(ad: Adapter, ids: torch.Tensor) -> None:
    sites = [("embed", None, None), ("ln1.scale", 0, None), ("ln2.scale", 0, None)]
    sites += [("ln_final.scale", None, None), ("out", 0, 1), ("mlp.pre", 0, None)]
    _, ref = run(ad, ids, reads=sites)
    for site in sites:
        seen: list = []
        first = ad.hook(*site, lambda a: None)
        second = ad.hook(*site, seen.append)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        plain(ad, ids)
        second.__exit__(None, None, None)
        assert torch.equal(seen[0], ref[site]), site
    assert no_hooks_left(ad.model)


# ---- the residual stream -----------------------------------------------------------------


def test_residual_chain_and_unembed(ad: Adapter, ids: torch.Tensor) -> None:
    n = ad.n_layers
    keys = [("embed", None, None)]
    keys += [(k, i, None) for i in range(n) for k in ("resid_pre", "resid_post")]
    logits, got = run(ad, ids, reads=keys)
    assert got[("embed", None, None)].shape == (BATCH, SEQ, ad.d_model)
    assert torch.equal(got[("embed", None, None)], got[("resid_pre", 0, None)])
    for i in range(n - 1):
        assert torch.equal(got[("resid_post", i, None)], got[("resid_pre", i + 1, None)])
    with torch.no_grad():
        torch.testing.assert_close(ad.unembed(got[("resid_post", n - 1, None)]), logits)


def test_embed_is_token_embedding(ad: Adapter, ids: torch.Tensor) -> None:
    _, got = run(ad, ids, reads=[("embed", None, None)])
    with torch.no_grad():
        tok = ad.model.get_input_embeddings().weight[ids]
        if ad.family.startswith("gemma"):  # Gemma scales the embedding by sqrt(d_model)
            tok = tok * torch.tensor(ad.d_model**0.5)
        if ad.family == "gpt2":
            tok = tok + ad.base.wpe(torch.arange(SEQ))
    if ad.family != "opt":  # OPT adds positions offset by 2 inside its own forward
        torch.testing.assert_close(got[("embed", None, None)], tok)
    if ad.family == "gemma":
        raw = ad.model.get_input_embeddings().weight[ids] * ad.d_model**0.5
        torch.testing.assert_close(got[("embed", None, None)], raw)


def test_block_decomposition(ad: Adapter, ids: torch.Tensor) -> None:
    for i in range(ad.n_layers):
        keys = [(k, i, None) for k in ("resid_pre", "attn.out", "mlp.out", "resid_post")]
        if not ad.parallel_attn:
            keys.append(("resid_mid", i, None))
        _, got = run(ad, ids, reads=keys)
        pre, a, m, post = (got[k] for k in keys[:4])
        torch.testing.assert_close(pre + a + m, post, atol=1e-5, rtol=1e-5)
        if ad.parallel_attn:
            with pytest.raises(RuntimeInterventionError) as err:
                ad.hook("resid_mid", i, None, lambda x: None)
            assert err.value.code == "E402"
        else:
            torch.testing.assert_close(pre + a, got[("resid_mid", i, None)], atol=1e-6, rtol=1e-6)


def test_resid_mid_write_reaches_mlp_and_residual(ad: Adapter, ids: torch.Tensor) -> None:
    if ad.parallel_attn:
        pytest.skip("no resid_mid in a parallel block")
    target = torch.randn(BATCH, SEQ, ad.d_model)
    keys = [("mlp.out", 0, None), ("resid_post", 0, None), ("ln2.scale", 0, None)]
    _, got = run(ad, ids, reads=keys, writes=[("resid_mid", 0, None, lambda a: target)])
    torch.testing.assert_close(target + got[keys[0]], got[keys[1]], atol=1e-5, rtol=1e-5)
    xc = target - target.mean(-1, keepdim=True) if ad.norm == "layernorm" else target
    scale = torch.rsqrt(xc.pow(2).mean(-1, True) + ad.norm_eps(ad.ln2(0)))
    torch.testing.assert_close(got[keys[2]], scale)


# ---- attention: heads, z, q/k/v, patterns --------------------------------------------------


def test_head_outputs_sum_to_attn_out(ad: Adapter, ids: torch.Tensor) -> None:
    for i in range(ad.n_layers):
        keys = [("out", i, h) for h in range(ad.n_heads)] + [("attn.out", i, None)]
        _, got = run(ad, ids, reads=keys)
        total = sum(got[("out", i, h)] for h in range(ad.n_heads))
        bias = getattr(ad.o_proj(i), "bias", None)
        if bias is not None:
            total = total + bias
        if ad.family == "gemma2":  # attn.out is after the post-attention norm
            with torch.no_grad():
                total = ad.layer(i).post_attention_layernorm(total)
        torch.testing.assert_close(total, got[("attn.out", i, None)], atol=1e-5, rtol=1e-5)


def test_zero_head_z_equals_zeroed_o_proj_columns(ad: Adapter, ids: torch.Tensor) -> None:
    i, h, dh = ad.n_layers - 1, 2, ad.d_head
    logits, _ = run(ad, ids, writes=[("z", i, h, torch.zeros_like)])
    model2 = copy.deepcopy(ad.model)
    ad2 = adapter_for(model2)
    with torch.no_grad():
        w = ad2.o_proj(i).weight
        if ad.family == "gpt2":  # Conv1D: [in, out]
            w[h * dh : (h + 1) * dh, :] = 0
        else:
            w[:, h * dh : (h + 1) * dh] = 0
        ref = model2(ids).logits
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(logits, plain(ad, ids))


# ---- normalizer scales and MLP -------------------------------------------------------------


def _normalized(ad: Adapter, module: torch.nn.Module, x: torch.Tensor, scale: torch.Tensor):
    xc = x - x.mean(-1, keepdim=True) if ad.norm == "layernorm" else x
    out = xc * scale
    w = ad.norm_weight(module)
    if w is not None:
        out = out * w
    if getattr(module, "bias", None) is not None:
        out = out + module.bias
    return out


def test_ln_scales_match_the_normalizers(ad: Adapter, ids: torch.Tensor) -> None:
    n = ad.n_layers
    keys = [("ln_final.scale", None, None), ("resid_post", n - 1, None)]
    for i in range(n):
        keys += [(k, i, None) for k in ("ln1.scale", "ln2.scale", "resid_pre")]
        if not ad.parallel_attn:
            keys.append(("resid_mid", i, None))
    _, got = run(ad, ids, reads=keys)
    checks = [(ad.ln_final(), got[("resid_post", n - 1, None)], got[keys[0]])]
    for i in range(n):
        ln2_in = got[("resid_pre" if ad.parallel_attn else "resid_mid", i, None)]
        checks.append((ad.ln1(i), got[("resid_pre", i, None)], got[("ln1.scale", i, None)]))
        checks.append((ad.ln2(i), ln2_in, got[("ln2.scale", i, None)]))
    with torch.no_grad():
        for module, x, scale in checks:
            assert scale.shape == (BATCH, SEQ, 1)
            torch.testing.assert_close(_normalized(ad, module, x, scale), module(x))


def test_ln_scale_write(ad: Adapter, ids: torch.Tensor) -> None:
    """Writing ln1.scale makes the normalizer output centered(x) * s' * w (+ b)."""
    s_new = torch.rand(BATCH, SEQ, 1) + 0.5
    seen = {}
    with ad.hook("ln1.scale", 0, None, lambda a: s_new):
        handle = ad.ln1(0).register_forward_hook(
            lambda m, args, out: seen.update(x=args[0].detach(), out=out.detach())
        )
        try:
            plain(ad, ids)
        finally:
            handle.remove()
    with torch.no_grad():
        expect = _normalized(ad, ad.ln1(0), seen["x"], s_new)
    torch.testing.assert_close(seen["out"], expect, atol=1e-5, rtol=1e-5)


def test_mlp_pre_post(ad: Adapter, ids: torch.Tensor) -> None:
    keys = [("mlp.pre", 0, None), ("mlp.post", 0, None), ("resid_pre", 0, None)]
    if not ad.parallel_attn:
        keys.append(("resid_mid", 0, None))
    _, got = run(ad, ids, reads=keys)
    pre, post = got[keys[0]], got[keys[1]]
    assert pre.shape == post.shape == (BATCH, SEQ, ad.d_mlp)
    mlp, layer = ad.mlp(0), ad.layer(0)
    act = next(
        getattr(o, n) for o in (mlp, layer) for n in ("act_fn", "act", "activation_fn")
        if hasattr(o, n)
    )  # fmt: skip
    if ad.family in ("gpt2", "gpt_neox", "opt"):
        torch.testing.assert_close(act(pre), post)
        return
    with torch.no_grad():
        x = ad.ln2(0)(got[keys[-1]])
        up = mlp.gate_up_proj(x)[..., ad.d_mlp :] if ad.family == "phi3" else mlp.up_proj(x)
    torch.testing.assert_close(act(pre) * up, post)


# ---- gradients, caches, padding -------------------------------------------------------------


def test_writes_carry_gradients(ad: Adapter, ids: torch.Tensor) -> None:
    """Returning a leaf puts it in the graph: d logits / d site exists at every site kind."""
    for site in all_sites(ad):
        if site[1] not in (None, 0) or site[2] not in (None, 1):
            continue
        leaf: list = []

        def fn(act: torch.Tensor, leaf: list = leaf) -> torch.Tensor:
            leaf.append(act.detach().clone().requires_grad_())
            return leaf[0]

        with ad.hook(*site, fn):
            logits = ad.model(ids).logits
        logits[:, -1].logsumexp(-1).sum().backward()
        assert leaf[0].grad is not None and leaf[0].grad.abs().sum() > 0, site
    assert no_hooks_left(ad.model)


def test_ln_scale_detached_gives_linear_rule(ad: Adapter, ids: torch.Tensor) -> None:
    """Writing scale.detach() (the LN-rule of RelP) makes the normalizer linear in its input."""
    x_leaf: dict = {}

    def take(act: torch.Tensor) -> torch.Tensor:
        x_leaf["x"] = act.detach().clone().requires_grad_()
        return x_leaf["x"]

    seen: dict = {}
    with ad.hooks([("resid_pre", 0, None, take), ("ln1.scale", 0, None, torch.Tensor.detach)]):
        handle = ad.ln1(0).register_forward_hook(lambda m, a, out: seen.update(out=out))
        try:
            ad.model(ids)
        finally:
            handle.remove()
    _, got = run(ad, ids, reads=[("ln1.scale", 0, None)])
    g = torch.randn_like(seen["out"])
    (grad,) = torch.autograd.grad(seen["out"], x_leaf["x"], g)
    s = got[("ln1.scale", 0, None)]
    gw = g * ad.norm_weight(ad.ln1(0)).detach()
    expect = s * (gw - gw.mean(-1, keepdim=True)) if ad.norm == "layernorm" else s * gw
    torch.testing.assert_close(grad, expect, atol=1e-5, rtol=1e-5)


# ---- errors and the registry ---------------------------------------------------------------


def test_site_errors(ad: Adapter, ids: torch.Tensor) -> None:
    cases = [
        ("resid_pre", ad.n_layers, None),
        ("z", 0, ad.n_heads),
        ("z", 0, None),
        ("embed", 0, None),
        ("nope", 0, None),
    ]
    for kind, layer, head in cases:
        with pytest.raises(RuntimeInterventionError) as err:
            ad.hook(kind, layer, head, lambda a: None)
        assert err.value.code == "E403"
    with pytest.raises(RuntimeInterventionError) as err:
        with ad.hook("resid_pre", 0, None, lambda a: torch.zeros(3)):
            plain(ad, ids)
    assert err.value.code == "E404"
    assert no_hooks_left(ad.model)


def test_sizes_agree_with_modelspec(ad: Adapter) -> None:
    spec = ad.spec()
    got = (ad.n_layers, ad.n_heads, ad.n_kv_heads, ad.d_model, ad.d_head, ad.d_mlp)
    want = (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_model, spec.d_head, spec.d_mlp)
    assert got == want
    assert ad.parallel_attn == spec.parallel_attn
    assert ad.family == spec.family


def test_unsupported_model_type() -> None:
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="bert"))
    with pytest.raises(RuntimeInterventionError) as err:
        adapter_for(fake)  # type: ignore[arg-type]
    assert err.value.code == "E401"
    assert "bert" in err.value.message and "gpt2" in err.value.message


def test_post_ln_opt_is_refused() -> None:
    cfg = CONFIGS["opt"]()
    cfg.do_layer_norm_before = False
    with pytest.raises(RuntimeInterventionError) as err:
        adapter_for(tf.OPTForCausalLM(cfg))
    assert err.value.code == "E401"
