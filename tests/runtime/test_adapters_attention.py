"""Architecture adapters, attention internals: patterns (explicit attention through the patchc
attention function, bit-exact with eager), z = pattern @ v, q/k against the pattern, grouped-
query sharing, KV caches, left padding, the shared attention switch."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import sys

import torch
from adapter_models import (
    BATCH,
    PATTERN_KINDS,
    SEQ,
    ad,
    all_sites,
    eager_logits,
    ids,
    no_hooks_left,
    plain,
    run,
)

from patchc.runtime.adapters import Adapter, adapter_for

__all__ = ["ad", "ids"]  # fixtures


def test_identity_pattern_matches_eager_bit_exactly(ad: Adapter, ids: torch.Tensor) -> None:
    impl = ad.model.config._attn_implementation
    base = plain(ad, ids)
    want = eager_logits(ad, ids)
    clone = lambda act: act.clone()  # noqa: E731
    logits, _ = run(ad, ids, writes=[(*s, clone) for s in all_sites(ad, PATTERN_KINDS)])
    assert torch.equal(logits, want)
    torch.testing.assert_close(logits, base, atol=1e-5, rtol=1e-5)
    assert ad.model.config._attn_implementation == impl
    assert torch.equal(plain(ad, ids), base)
    assert no_hooks_left(ad.model)


def test_z_concat_and_pattern(ad: Adapter, ids: torch.Tensor) -> None:
    i = ad.n_layers - 1
    keys = [("attn.z", i, None), ("attn.pattern", i, None)]
    keys += [(k, i, h) for h in range(ad.n_heads) for k in ("z", "pattern", "v")]
    _, got = run(ad, ids, reads=keys)
    z_all = got[("attn.z", i, None)]
    assert z_all.shape == (BATCH, SEQ, ad.n_heads * ad.d_head)
    assert torch.equal(z_all, torch.cat([got[("z", i, h)] for h in range(ad.n_heads)], -1))
    pat = got[("attn.pattern", i, None)]
    assert pat.shape == (BATCH, ad.n_heads, SEQ, SEQ)
    torch.testing.assert_close(pat.sum(-1), torch.ones(BATCH, ad.n_heads, SEQ))
    assert torch.all(pat.triu(1) == 0)
    for h in range(ad.n_heads):
        p, v, z = got[("pattern", i, h)], got[("v", i, h)], got[("z", i, h)]
        assert torch.equal(p, pat[:, h])
        torch.testing.assert_close(p @ v, z, atol=1e-5, rtol=1e-5)

    # Writing one head's pattern: that head's z follows it, the other heads' z do not move.
    new = torch.rand(BATCH, SEQ, SEQ).tril()
    new = new / new.sum(-1, keepdim=True)
    _, got2 = run(ad, ids, reads=keys, writes=[("pattern", i, 1, lambda a: new)])
    torch.testing.assert_close(got2[("z", i, 1)], new @ got2[("v", i, 1)], atol=1e-5, rtol=1e-5)
    assert torch.equal(got2[("pattern", i, 1)], new)
    for h in (0, 2, 3):
        torch.testing.assert_close(got2[("z", i, h)], got[("z", i, h)], atol=1e-6, rtol=1e-6)


def _scores_mask(ad: Adapter, layer: int) -> torch.Tensor:
    allowed = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    window = getattr(ad.config, "sliding_window", None)
    types_ = getattr(ad.config, "layer_types", None)
    sliding = types_ is None or types_[layer] == "sliding_attention"  # Mistral: every layer
    if window is not None and sliding:
        pos = torch.arange(SEQ)
        allowed &= (pos[:, None] - pos[None, :]) < window
    return allowed


def test_qk_reproduce_pattern(ad: Adapter, ids: torch.Tensor) -> None:
    """q and k (before rotary) with the model's own rotary, scaling and masks give the pattern:
    checks the column layout of fused projections (GPT-2, NeoX interleaved, Phi-3)."""
    for i in range(ad.n_layers):
        keys = [("attn.q", i, None), ("attn.k", i, None), ("attn.pattern", i, None)]
        keys += [("resid_pre", i, None)] + [(k, i, h) for h in range(ad.n_heads) for k in "qk"]
        _, got = run(ad, ids, reads=keys)
        q, k = got[keys[0]], got[keys[1]]
        assert q.shape == (BATCH, SEQ, ad.n_heads * ad.d_head)
        assert k.shape == (BATCH, SEQ, ad.n_kv_heads * ad.d_head)
        for h in range(ad.n_heads):
            kv = ad.kv_head(h)
            assert torch.equal(got[("q", i, h)], q[..., h * ad.d_head : (h + 1) * ad.d_head])
            assert torch.equal(got[("k", i, h)], k[..., kv * ad.d_head : (kv + 1) * ad.d_head])
        q = q.view(BATCH, SEQ, ad.n_heads, ad.d_head).transpose(1, 2)
        k = k.view(BATCH, SEQ, ad.n_kv_heads, ad.d_head).transpose(1, 2)
        attn = ad.attn(i)
        if hasattr(ad.base, "rotary_emb"):
            rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
            with torch.no_grad():
                cos, sin = ad.base.rotary_emb(got[keys[3]], torch.arange(SEQ)[None])
            q, k = rope(q, k, cos, sin)
        k = k.repeat_interleave(ad.n_heads // ad.n_kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) * getattr(attn, "scaling", ad.d_head ** -0.5)
        cap = getattr(ad.config, "attn_logit_softcapping", None)
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        scores = scores.masked_fill(~_scores_mask(ad, i), float("-inf"))
        torch.testing.assert_close(scores.softmax(-1), got[keys[2]], atol=1e-5, rtol=1e-5)


def test_gqa_kv_sharing(ad: Adapter, ids: torch.Tensor) -> None:
    i, group = 0, ad.n_heads // ad.n_kv_heads
    keys = [("attn.v", i, None)] + [(k, i, h) for h in range(ad.n_heads) for k in ("k", "v", "z")]
    _, got = run(ad, ids, reads=keys)
    for h in range(ad.n_heads):
        kv = h // group
        sl = slice(kv * ad.d_head, (kv + 1) * ad.d_head)
        assert torch.equal(got[("v", i, h)], got[("attn.v", i, None)][..., sl])
        if h % group:  # shares with the previous query head
            assert torch.equal(got[("k", i, h)], got[("k", i, h - 1)])
    # Writing H1.v writes its kv head: every query head in its group moves, no other head does.
    noise = torch.randn(BATCH, SEQ, ad.d_head)
    _, got2 = run(ad, ids, reads=keys, writes=[("v", i, 1, lambda a: a + noise)])
    for h in range(ad.n_heads):
        moved = not torch.allclose(got2[("z", i, h)], got[("z", i, h)])
        assert moved == (h // group == 1 // group), h


def test_pattern_hook_with_kv_cache(ad: Adapter, ids: torch.Tensor) -> None:
    """Explicit attention continues a cached prefix like the full forward (q_len < k_len)."""
    full = plain(ad, ids)
    seen: list = []
    with torch.no_grad(), ad.hook("attn.pattern", 0, None, seen.append):
        out = ad.model(ids[:, :4], use_cache=True)
        rest = ad.model(ids[:, 4:], past_key_values=out.past_key_values).logits
    torch.testing.assert_close(rest, full[:, 4:], atol=1e-5, rtol=1e-5)
    # (a sliding-window cache keeps fewer than SEQ keys)
    assert seen[1].shape[:3] == (BATCH, ad.n_heads, SEQ - 4)
    assert torch.all(seen[1][..., -(SEQ - 4) :].triu(1) == 0)


def test_pattern_hook_with_left_padding(ad: Adapter, ids: torch.Tensor) -> None:
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    kwargs = dict(attention_mask=mask)
    if ad.family != "opt":  # OPT derives positions from the mask itself
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = ad.model(ids, **kwargs).logits
        pats: list = []
        with ad.hook("attn.pattern", ad.n_layers - 1, None, pats.append):
            got = ad.model(ids, **kwargs).logits
    torch.testing.assert_close(got[:, 2:], ref[:, 2:], atol=1e-5, rtol=1e-5)
    assert torch.all(pats[0][0, :, 2:, :2] == 0)  # padded keys get no attention


def test_two_adapters_share_the_attention_switch(ad: Adapter, ids: torch.Tensor) -> None:
    impl, base = ad.model.config._attn_implementation, plain(ad, ids)
    other = adapter_for(ad.model)
    first = ad.hook("pattern", 0, 0, lambda p: None)
    second = other.hook("attn.pattern", ad.n_layers - 1, None, lambda p: None)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # not last-in-first-out
    torch.testing.assert_close(plain(ad, ids), base, atol=1e-5, rtol=1e-5)
    second.__exit__(None, None, None)
    assert ad.model.config._attn_implementation == impl
    assert no_hooks_left(ad.model)
