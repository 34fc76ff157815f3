"""Every family in the family table, on a tiny random-weight model: the identity checks.

Reads leave the logits bit for bit; every site written with its own value is bit-exact; the
residual stream decomposes; heads sum to the attention output; k/v of grouped-query heads are
their kv head's; experts sum to the MLP output and a router write re-routes; the sizes `check`
reads from the config match the modules found in the tree. (Attention internals in detail, for
the original nine families: test_adapters*.py.)
"""

from __future__ import annotations


import pytest
import torch
import transformers as tf
from adapter_models import (EXPERT, KINDS, PATTERN_KINDS, all_sites, eager_logits,
                            no_hooks_left, run)
from family_configs import FAMILY_NAMES, build

from patchc.compiler.errors import CheckError, RuntimeInterventionError
from patchc.compiler.modelspec import spec_from_config
from patchc.runtime.adapters import Adapter, adapter_for

BATCH, SEQ = 2, 6


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def ad(request: pytest.FixtureRequest) -> Adapter:
    return adapter_for(build(request.param))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(4, 64, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))


def _plain(ad: Adapter, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ad.model(ids).logits


def test_reads_and_identity_writes_are_bit_exact(ad: Adapter, ids: torch.Tensor) -> None:
    base = _plain(ad, ids)
    sites = all_sites(ad, KINDS - PATTERN_KINDS)
    logits, got = run(ad, ids, reads=sites)
    assert torch.equal(logits, base)
    assert len(got) == len(sites)
    clone = lambda act: act.clone()  # noqa: E731
    for kind in sorted(KINDS - PATTERN_KINDS):
        one = all_sites(ad, {kind})
        logits, _ = run(ad, ids, writes=[(*s, clone) for s in one])
        assert torch.equal(logits, base), kind
    logits, _ = run(ad, ids, writes=[(*s, clone) for s in sites])
    assert torch.equal(logits, base)
    assert no_hooks_left(ad.model)


def test_identity_pattern_matches_eager(ad: Adapter, ids: torch.Tensor) -> None:
    if ad.missing("pattern"):
        pytest.skip(ad.missing("pattern"))
    clone = lambda act: act.clone()  # noqa: E731
    logits, got = run(ad, ids, reads=[("attn.pattern", 0, None)],
                      writes=[(*s, clone) for s in all_sites(ad, PATTERN_KINDS)])
    assert torch.equal(logits, eager_logits(ad, ids))
    pat = got[("attn.pattern", 0, None)]
    if getattr(ad.attn(0), "sinks", None) is None:  # a sink takes part of each row's mass
        torch.testing.assert_close(pat.sum(-1), torch.ones(BATCH, ad.n_heads, SEQ))
    assert torch.all(pat.triu(1) == 0)
    assert no_hooks_left(ad.model)


def test_residual_stream_decomposes(ad: Adapter, ids: torch.Tensor) -> None:
    n = ad.n_layers
    keys = [("embed", None, None)]
    for i in range(n):
        keys += [(k, i, None) for k in ("resid_pre", "attn.out", "mlp.out", "resid_post")]
        if not ad.parallel_attn:
            keys.append(("resid_mid", i, None))
    logits, got = run(ad, ids, reads=keys)
    assert torch.equal(got[keys[0]], got[("resid_pre", 0, None)])
    for i in range(n):
        pre, a, m, post = (got[(k, i, None)] for k in ("resid_pre", "attn.out", "mlp.out",
                                                       "resid_post"))
        torch.testing.assert_close(pre + a + m, post, atol=1e-5, rtol=1e-5)
        if not ad.parallel_attn:
            torch.testing.assert_close(pre + a, got[("resid_mid", i, None)], atol=1e-5,
                                       rtol=1e-5)
        if i + 1 < n:
            assert torch.equal(post, got[("resid_pre", i + 1, None)])
    with torch.no_grad():
        torch.testing.assert_close(ad.unembed(got[("resid_post", n - 1, None)]), logits,
                                   atol=1e-5, rtol=1e-5)


def test_heads_sum_to_attention_output(ad: Adapter, ids: torch.Tensor) -> None:
    i = ad.n_layers - 1
    keys = [("out", i, h) for h in range(ad.n_heads)] + [("attn.z", i, None)]
    _, got = run(ad, ids, reads=keys)
    total = sum(got[("out", i, h)] for h in range(ad.n_heads))
    with torch.no_grad():
        want = ad.o_proj(i)(got[("attn.z", i, None)])
    bias = getattr(ad.o_proj(i), "bias", None)
    total = total if bias is None else total + bias
    torch.testing.assert_close(total, want, atol=1e-5, rtol=1e-5)
    z = got[("attn.z", i, None)]
    assert z.shape == (BATCH, SEQ, ad.n_heads * ad.d_head)


def test_grouped_query_mapping(ad: Adapter, ids: torch.Tensor) -> None:
    if ad.missing("k"):
        pytest.skip(ad.missing("k"))
    keys = [("attn.k", 0, None), ("attn.v", 0, None), ("attn.q", 0, None)]
    keys += [(k, 0, h) for h in range(ad.n_heads) for k in "qkv"]
    _, got = run(ad, ids, reads=keys)
    dh = ad.d_head
    assert got[keys[0]].shape[-1] == ad.n_kv_heads * dh
    for h in range(ad.n_heads):
        kv = ad.kv_head(h)
        assert torch.equal(got[("k", 0, h)], got[keys[0]][..., kv * dh:(kv + 1) * dh])
        assert torch.equal(got[("v", 0, h)], got[keys[1]][..., kv * dh:(kv + 1) * dh])
        assert torch.equal(got[("q", 0, h)], got[keys[2]][..., h * dh:(h + 1) * dh])


def test_sizes_match_the_modules(ad: Adapter) -> None:
    """What `check` reads from the config is what the module tree holds."""
    spec = ad.spec()
    assert (spec.n_layers, spec.n_heads, spec.d_head) == (ad.n_layers, ad.n_heads, ad.d_head)
    assert len(ad.layers()) == spec.n_layers
    proj = ad.o_proj(0)
    w = proj.weight
    d_in = w.shape[0] if type(proj).__name__ == "Conv1D" else w.shape[-1]
    assert d_in == spec.n_heads * spec.d_head
    assert ad.model.get_output_embeddings().weight.shape[0] >= spec.vocab_size
    if not spec.n_experts:
        down = ad.mlp_down(0)
        w = down.weight
        assert (w.shape[0] if type(down).__name__ == "Conv1D" else w.shape[-1]) == spec.d_mlp


def test_experts_sum_to_the_mlp_output(ad: Adapter, ids: torch.Tensor) -> None:
    if not ad.n_experts:
        pytest.skip("not a mixture of experts")
    i = 0
    keys = [("mlp.out", i, None), ("router", i, None)]
    keys += [(k, i, e) for e in range(ad.n_experts) for k in sorted(EXPERT)]
    if not ad.missing("shared.out"):
        keys.append(("shared.out", i, None))
    _, got = run(ad, ids, reads=keys)
    router = got[("router", i, None)]
    assert router.shape == (BATCH, SEQ, ad.n_experts)
    total = sum(got[("expert.out", i, e)] for e in range(ad.n_experts))
    if ("shared.out", i, None) in got:
        total = total + got[("shared.out", i, None)]
    torch.testing.assert_close(total, got[("mlp.out", i, None)], atol=1e-6, rtol=1e-5)
    chosen = torch.stack([got[("expert.out", i, e)].abs().sum(-1) > 0
                          for e in range(ad.n_experts)], -1)
    assert torch.equal(chosen.sum(-1), torch.full((BATCH, SEQ), ad.top_k))
    top = router.topk(ad.top_k, -1).indices
    assert torch.equal(chosen, torch.zeros_like(chosen).scatter(-1, top, True))
    for e in range(ad.n_experts):  # neurons are zero exactly where the expert is not chosen
        post = got[("expert.post", i, e)]
        assert torch.all(post[~chosen[..., e]] == 0)


def test_router_reads_its_logits(ad: Adapter, ids: torch.Tensor) -> None:
    """`router` is the router's linear map of its input (the logits), not their softmax (what
    transformers' routers returned first before 5.6)."""
    if not ad.n_experts:
        pytest.skip("not a mixture of experts")
    module = ad._at(0, ad.s.router)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        _, got = run(ad, ids, reads=[("router", 0, None)])
    finally:
        handle.remove()
    if getattr(module, "weight", None) is None:  # the linear map is a child (HunYuan's wg)
        module = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        want = seen[0].reshape(BATCH, SEQ, -1) @ module.weight.T
        if getattr(module, "bias", None) is not None:
            want = want + module.bias
    torch.testing.assert_close(got[("router", 0, None)], want)


def test_router_write_reroutes(ad: Adapter, ids: torch.Tensor) -> None:
    """Router logits that favour experts 0..k-1 send every token there, and nowhere else."""
    if not ad.n_experts:
        pytest.skip("not a mixture of experts")
    k = ad.top_k
    bias = torch.zeros(ad.n_experts)
    bias[:k] = 100.0
    keys = [("expert.out", 0, e) for e in range(ad.n_experts)]
    _, got = run(ad, ids, reads=keys, writes=[("router", 0, None, lambda a: a + bias)])
    for e in range(ad.n_experts):
        used = got[("expert.out", 0, e)].abs().sum(-1) > 0
        assert bool(used.all()) == (e < k) and bool(used.any()) == (e < k), e


def test_router_identity_write_with_correction_bias(ad: Adapter, ids: torch.Tensor) -> None:
    """A router that chooses by score plus a correction bias (MiniMax-M2, ERNIE 4.5) re-routes
    a written copy of its own logits exactly as it routed them, with a bias that changes the
    choice."""
    mlp = ad.mlp(0) if ad.n_experts else None
    named = [*mlp.named_parameters(), *mlp.named_buffers()] if mlp is not None else []
    bias = next((t for n, t in named if n.endswith("e_score_correction_bias")), None)
    if bias is None:
        pytest.skip("no router correction bias")
    saved = bias.clone()
    try:
        bias.copy_(torch.randn_like(bias))
        base = _plain(ad, ids)
        logits, _ = run(ad, ids, writes=[("router", 0, None, lambda a: a.clone())])
        assert torch.equal(logits, base)
    finally:
        bias.copy_(saved)


def test_expert_write_and_gradient(ad: Adapter, ids: torch.Tensor) -> None:
    """Zeroing an expert's output equals zeroing its down-projection; gradients reach the
    router logits through the routing weights."""
    if not ad.n_experts:
        pytest.skip("not a mixture of experts")
    base = _plain(ad, ids)
    logits, _ = run(ad, ids, writes=[("expert.out", 0, e, torch.zeros_like)
                                     for e in range(ad.n_experts)])
    keys = [("mlp.out", 0, None)] + ([("shared.out", 0, None)]
                                     if not ad.missing("shared.out") else [])
    _, got = run(ad, ids, reads=keys, writes=[("expert.out", 0, e, torch.zeros_like)
                                              for e in range(ad.n_experts)])
    shared = got.get(("shared.out", 0, None))
    assert torch.equal(got[keys[0]], torch.zeros_like(got[keys[0]])) if shared is None else \
        torch.allclose(got[keys[0]], shared, atol=1e-6)
    assert not torch.allclose(logits, base)
    leaf: list = []

    def take(act: torch.Tensor) -> torch.Tensor:
        leaf.append(act.detach().clone().requires_grad_())
        return leaf[0]

    with ad.hook("router", 0, None, take):
        out = ad.model(ids).logits
    out[:, -1].logsumexp(-1).sum().backward()
    assert leaf[0].grad is not None and leaf[0].grad.abs().sum() > 0
    assert no_hooks_left(ad.model)


@pytest.mark.parametrize(("model", "words"), [
    (lambda: tf.MambaForCausalLM(tf.MambaConfig(num_hidden_layers=1, hidden_size=16,
                                                vocab_size=64, state_size=4)),
     ["mamba", "state-space", "no attention heads"]),
    (lambda: tf.BertLMHeadModel(tf.BertConfig(num_hidden_layers=1, hidden_size=16,
                                              num_attention_heads=2, intermediate_size=32,
                                              vocab_size=64, is_decoder=True)),
     ["bert", "encoder"]),
])
def test_runtime_refuses_what_check_refuses(model, words: list[str]) -> None:
    """The runtime's E401 carries check's E210 reason (one table, one message)."""
    m = model()
    with pytest.raises(RuntimeInterventionError) as err:
        adapter_for(m)
    with pytest.raises(CheckError) as chk:
        spec_from_config(m.config.to_dict())
    assert err.value.code == "E401" and chk.value.code == "E210"
    assert err.value.message == chk.value.message
    for w in words:
        assert w in err.value.message


def test_a_part_not_found_is_named_by_check() -> None:
    """A module the structure search cannot find makes its sites unavailable, by name."""
    from patchc.compiler.check import check
    from patchc.compiler.parse import parse

    model = build("llama")
    for block in model.model.layers:  # a renamed down projection: no known MLP layout
        block.mlp.proj_out = block.mlp.down_proj
        del block.mlp.down_proj
    spec = adapter_for(model).spec()
    assert "no MLP projections found in LlamaMLP" in (spec.missing("mlp.post") or "")
    text = ('model "m"\ndata d = [{"a": "x", "b": "y"}]\nrun A = d.a\nrun B = d.b\n'
            "metric m = logit(\"x\")\nswap L0.mlp.post from A into B measure m\n")
    with pytest.raises(Exception) as err:
        check(parse(text, "x.patch"), spec, tokenizer=None)
    assert "E209" in str(err.value) and "LlamaMLP" in str(err.value)


def test_sliding_and_global_layers(ad: Adapter, ids: torch.Tensor) -> None:
    """Per-layer attention types (Gemma 3, Cohere 2, OLMo 3): a sliding layer's pattern is zero
    beyond the window, a global layer's is not."""
    types_ = getattr(ad.config, "layer_types", None)
    window = getattr(ad.config, "sliding_window", None)
    if ad.missing("pattern") or not types_ or not window or "full_attention" not in types_ \
            or "sliding_attention" not in types_:
        pytest.skip("no mix of sliding and global layers")
    keys = [("attn.pattern", i, None) for i in range(ad.n_layers)]
    _, got = run(ad, ids, reads=keys)
    pos = torch.arange(SEQ)
    far = (pos[:, None] - pos[None, :]) >= window
    for i, kind in enumerate(types_[: ad.n_layers]):
        beyond = got[("attn.pattern", i, None)][..., far]
        assert bool((beyond == 0).all()) == (kind == "sliding_attention"), (i, kind)
