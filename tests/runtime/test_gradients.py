"""Gradient methods (issue 5): atp, RelP, ig, compare and dla, checked against hand code.

The hand computations use plain torch hooks on the HF modules (conftest.Fam) and their own
LRP rules (`_hand_rules`), not runtime/lrp.py or runtime/adapters: RelP's numbers through a
spec must equal a gradient taken with independently written LN, identity and half rules.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import transformers as tf
from adapter_models import FAMILIES, build, no_hooks_left
from conftest import Fam, inline, logit_diff, make_tokenizer
from ops_common import CLEAN, CORRUPT, ROWS, T

import patchc
from patchc.compiler import ast as A
from patchc.compiler.errors import NO_SPAN, PatchcError, RuntimeInterventionError
from patchc.compiler.ir import Backward
from patchc.runtime import dla, lrp
from patchc.runtime.adapters import adapter_for

D, LAYERS = 32, 3
HEAD = f"""
data d = {inline(ROWS)}
run clean = d.clean
run corrupt = d.corrupt
run frozen = d.corrupt with freeze ln from corrupt
metric ld = logit(d.answer) - logit(d.distractor)
"""


def ld_of(fam: Fam, logits: torch.Tensor) -> torch.Tensor:
    return logit_diff(logits, [fam.tid(r["answer"]) for r in ROWS],
                      [fam.tid(r["distractor"]) for r in ROWS])


def per_example(res, table: str, col: str = "ld", **key) -> torch.Tensor:
    df = res.per_example(table)
    for k, v in key.items():
        df = df[df[k] == v]
    df = df.sort_values("example")
    assert len(df) == len(ROWS), (key, len(df))
    return torch.tensor(df[col].to_numpy(), dtype=torch.float32)


def close(a, b, atol: float = 1e-5) -> None:
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    assert torch.allclose(a, b, atol=atol, rtol=1e-5), (a, b, (a - b).abs().max())


# ---- hand-written gradients ------------------------------------------------------------------


def _ln_detached(mod: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A normalizer recomputed with its 1/sigma detached (LayerNorm or RMSNorm)."""
    xf = x.float()
    if isinstance(mod, torch.nn.LayerNorm):
        xc = xf - xf.mean(-1, keepdim=True)
        s = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + mod.eps)
        return (xc * s.detach() * mod.weight + mod.bias).to(x.dtype)
    eps = getattr(mod, "variance_epsilon", None) or mod.eps
    s = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (mod.weight * (xf * s.detach())).to(x.dtype)


def _act_rule(act: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(x) with gradient act(x)/x: x times a detached ratio (forward equal up to rounding)."""
    stab = x + 1e-6 * torch.where(x >= 0, 1.0, -1.0)
    return x * (act(x) / stab).detach()


@contextlib.contextmanager
def _hand_rules(fam: Fam):
    """RelP's rules on the HF modules of gpt2/llama: every norm's scale detached, the MLP
    recomputed with the identity rule and (llama) the half-rule."""
    handles = []
    for mod in fam.model.modules():
        name = type(mod).__name__
        if isinstance(mod, torch.nn.LayerNorm) or name.endswith("RMSNorm"):
            handles.append(mod.register_forward_hook(
                lambda m, args, out: _ln_detached(m, args[0])))
        if name.endswith("MLP"):
            def mlp(m, args, out):
                x = args[0]
                if hasattr(m, "c_fc"):  # GPT-2
                    return m.c_proj(_act_rule(m.act, m.c_fc(x)))
                a, u = _act_rule(m.act_fn, m.gate_proj(x)), m.up_proj(x)
                return m.down_proj(0.5 * (a * u.detach() + a.detach() * u))
            handles.append(mod.register_forward_hook(mlp))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hand_grads(fam: Fam, texts: list[str], sites: list[str], relp: bool = False
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ld and its total derivative at each site (a zero added there), by autograd."""
    zeros = {s: torch.zeros(len(texts), T, D, requires_grad=True) for s in sites}
    writes = {s: (lambda x, s=s: x + zeros[s]) for s in sites}
    rules = _hand_rules(fam) if relp else contextlib.nullcontext()
    with torch.enable_grad(), rules, fam.hooked(writes):
        ld = ld_of(fam, fam.model(fam.ids(texts)).logits.float())
        ld.sum().backward()
    return ld.detach(), {s: z.grad for s, z in zeros.items()}


def hand_estimate(fam: Fam, sites: list[str], relp: bool) -> dict[str, torch.Tensor]:
    m_b, grads = hand_grads(fam, CORRUPT, sites, relp)
    a, b = fam.read(CLEAN, *sites), fam.read(CORRUPT, *sites)
    return {s: m_b + ((a[s] - b[s]) * grads[s]).sum((1, 2)) for s in sites}


# ---- atp and RelP against the hand code -----------------------------------------------------

KINDS = ["mlp.out", "attn.out", "resid_pre"]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_atp_and_relp_equal_hand_gradients(get_family, name: str) -> None:
    fam: Fam = get_family(name)
    res = fam.run(HEAD + "".join(
        f"attribute L*.{k} from clean into corrupt using {m} measure ld as {m}_{i}\n"
        for i, k in enumerate(KINDS) for m in ("atp", "relp")))
    sites = [f"L{layer}.{k}" for k in KINDS for layer in range(LAYERS)]
    for method in ("atp", "relp"):
        want = hand_estimate(fam, sites, relp=method == "relp")
        for i, k in enumerate(KINDS):
            for layer in range(LAYERS):
                close(per_example(res, f"{method}_{i}", layer=layer), want[f"L{layer}.{k}"],
                      atol=1e-4)
    # RelP is a different estimator: on a GELU/SiLU model with live norms the numbers move.
    assert not torch.allclose(per_example(res, "atp_0", layer=0),
                              per_example(res, "relp_0", layer=0), atol=1e-4)


@pytest.fixture(scope="module")
def linear_gpt2(models_dir) -> Fam:
    """GPT-2 with an identity MLP activation (`activation_function="linear"`)."""
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=LAYERS, n_head=4, n_embd=D, vocab_size=64, n_positions=64,
                           initializer_range=0.1, activation_function="linear",
                           pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = tf.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    path = models_dir / "gpt2-linear"
    tok = make_tokenizer()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Fam("gpt2", model, tok, str(path))


def test_relp_equals_atp_with_frozen_ln_and_identity_activation(linear_gpt2: Fam,
                                                                 monkeypatch) -> None:
    # The identity rule's stabilizer moves y/x by about 1e-6/|x|: a pre-activation near 0
    # (which the random weights of some transformers release give) shows it at 1e-4. Made
    # negligible, the two estimators agree whatever the weights.
    from patchc.runtime import lrp

    monkeypatch.setattr(lrp, "STABILIZER", 1e-12)
    body = "".join(f"attribute L*.{k} from clean into frozen using {m} measure ld as {m}_{i}\n"
                   for i, k in enumerate(KINDS + ["H*.z"]) for m in ("atp", "relp"))
    res = linear_gpt2.run(HEAD + body)
    for i in range(len(KINDS) + 1):
        atp, relp = res[f"atp_{i}"]["ld"], res[f"relp_{i}"]["ld"]
        assert torch.allclose(torch.tensor(atp.to_numpy()), torch.tensor(relp.to_numpy()),
                              atol=1e-5, rtol=1e-4), (atp, relp)
    # ...and with the norms live, the LN-rule alone makes them differ.
    live = linear_gpt2.run(HEAD + "attribute L*.resid_pre from clean into corrupt using atp "
                           "measure ld as a\nattribute L*.resid_pre from clean into corrupt "
                           "using relp measure ld as r\n")
    assert not torch.allclose(per_example(live, "a", layer=0), per_example(live, "r", layer=0),
                              atol=1e-4)


# ---- the rules themselves -------------------------------------------------------------------


def test_half_rule_splits_the_gradient_equally() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, generator=g, requires_grad=True)
    u = torch.randn(5, 7, generator=g, requires_grad=True)
    p = a * u
    out = lrp.half_rule(p, a, u)
    assert torch.equal(out, p)
    w = torch.randn(5, 7, generator=g)
    (out * w).sum().backward()
    close(a.grad, 0.5 * u.detach() * w, atol=1e-7)
    close(u.grad, 0.5 * a.detach() * w, atol=1e-7)
    # relevance a*u*w is conserved: each factor receives half of it
    close(a.grad * a.detach() + u.grad * u.detach(), (p * w).detach(), atol=1e-6)


def test_identity_rule_passes_act_over_input() -> None:
    x = torch.tensor([-2.0, -1e-9, 0.0, 1e-9, 0.5, 3.0], requires_grad=True)
    y = torch.nn.functional.gelu(x)
    out = lrp.identity_rule(x, y)
    assert torch.equal(out, y)
    out.sum().backward()
    stab = x.detach() + 1e-6 * torch.tensor([-1.0, -1, 1, 1, 1, 1])  # sign(0) = 1
    close(x.grad, y.detach() / stab, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_relp_rules_keep_the_forward_and_change_the_backward(family: str) -> None:
    ad = adapter_for(build(family))
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))

    def run(rules: str) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = torch.zeros(2, 7, ad.d_model, requires_grad=True)
        with torch.enable_grad(), lrp.rules_for(ad, rules), \
                ad.hook("resid_pre", 0, None, lambda a: a + leaf):
            logits = ad.model(ids).logits
            logits[:, -1, 5].sum().backward()
        return logits.detach(), leaf.grad

    (plain, g), (ruled, g_lrp), (ah, g_ah) = run("grad"), run("lrp"), run("lrp_ah")
    assert torch.equal(plain, ruled)  # bit-identical forward with every rule installed
    # The AH-rule runs the patchc attention function: exact against eager, close to sdpa.
    assert torch.allclose(plain, ah, atol=1e-5)
    assert torch.isfinite(g_lrp).all() and torch.isfinite(g_ah).all()
    assert (g - g_lrp).abs().max() > 1e-4 and (g_lrp - g_ah).abs().max() > 1e-6
    assert no_hooks_left(ad.model)


def test_relp_through_specs_on_every_fam_family(get_family) -> None:
    for name in ("gpt2", "llama", "neox", "qwen2", "mistral", "gemma"):
        fam: Fam = get_family(name)
        res = fam.run(HEAD + "compare atp, relp against swap on L*.mlp.out, L*.resid_pre @ last "
                      "from clean into corrupt measure ld as cmp\n"
                      "attribute L*.mlp.out from clean into corrupt using relp(ah=true) "
                      "measure ld as ah\n")
        table = res["cmp"]
        assert set(zip(table.site_kind, table.method)) == {
            (k, m) for k in ("mlp.out", "resid_pre") for m in ("atp", "relp")}
        assert torch.isfinite(torch.tensor(res["ah"]["ld"].to_numpy())).all()


# ---- one backward per rule set --------------------------------------------------------------


def test_one_backward_per_metric_and_rules(gpt2: Fam) -> None:
    program = patchc.compile(gpt2.spec(
        HEAD + "compare atp, relp, ig(steps=2) against swap on L*.mlp.out, L*.attn.out, "
        "L*.resid_pre @ each from clean into corrupt measure ld\n"))
    rules = sorted(node.rules for _, node in program.ir.of_type(Backward))
    assert rules == ["grad", "lrp"]  # atp and ig share one; relp has its own


# ---- compare ---------------------------------------------------------------------------------


def _pearson(x: list[float], y: list[float]) -> float:
    return float(torch.corrcoef(torch.tensor([x, y], dtype=torch.float64))[0, 1])


def test_compare_reports_correlations_per_site_kind_and_method(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + """
compare atp, relp against swap on L*.mlp.out, L*.attn.out, L*.resid_pre @ last
    from clean into corrupt  measure ld normalized  as cmp
attribute L*.mlp.out from clean into corrupt using relp  measure ld normalized  as est
swap L*.mlp.out from clean into corrupt  measure ld normalized  as exact
""")
    cmp = res["cmp"]
    assert list(cmp.columns) == ["site_kind", "method", "n", "pearson", "spearman"]
    assert len(cmp) == 6 and set(cmp.n) == {LAYERS}
    assert ((cmp.pearson.abs() <= 1 + 1e-9) & (cmp.spearman.abs() <= 1 + 1e-9)).all()
    row = cmp[(cmp.site_kind == "mlp.out") & (cmp.method == "relp")].iloc[0]
    want = _pearson(list(res["est"]["ld"]), list(res["exact"]["ld"]))
    assert math.isclose(row.pearson, want, abs_tol=1e-6)


# ---- integrated gradients --------------------------------------------------------------------


def test_ig_converges_to_the_swap(gpt2: Fam) -> None:
    steps = (1, 4, 16, 64)
    body = "".join(f"attribute L1.mlp.out from clean into corrupt using ig(steps={n}) "
                   f"measure ld as ig{n}\n" for n in steps)
    res = gpt2.run(HEAD + body + "swap L1.mlp.out from clean into corrupt measure ld as sw\n")
    exact = per_example(res, "sw")
    errors = [float((per_example(res, f"ig{n}") - exact).abs().max()) for n in steps]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3 * max(1.0, float(exact.abs().max())), errors
    # Steps batched along the batch (default) or one per pass give the same numbers.
    one = gpt2.run(HEAD + body, batch_size=1)
    for n in steps:
        close(per_example(one, f"ig{n}"), per_example(res, f"ig{n}"), atol=1e-5)


@pytest.mark.parametrize("site", ["L1.resid_pre @ last", "L0.mlp.out[0:16] @ 2..4",
                                  "L1.H2.z @ each"])
def test_ig_at_positions_and_features_converges(gpt2: Fam, site: str) -> None:
    res = gpt2.run(HEAD + "".join(
        f"attribute {site} from clean into corrupt using ig(steps={n}) measure ld as ig{n}\n"
        for n in (2, 64)) + f"swap {site} from clean into corrupt measure ld as sw\n")
    for i in range(len(res["sw"])):
        key = {"pos": int(res["sw"]["pos"][i])} if "pos" in res["sw"] else {}
        exact = per_example(res, "sw", **key)
        coarse = (per_example(res, "ig2", **key) - exact).abs().max()
        fine = (per_example(res, "ig64", **key) - exact).abs().max()
        assert fine <= coarse + 1e-6 and fine < 1e-3, (key, coarse, fine)


# ---- direct logit attribution ----------------------------------------------------------------


def _final(fam: Fam):
    m = fam.model
    if fam.name == "gpt2":
        return m.transformer.ln_f, m.transformer.h[-1], m.transformer.h, m.lm_head
    return m.model.norm, m.model.layers[-1], m.model.layers, m.lm_head


def _head_out(fam: Fam, layer: int, head: int, z: torch.Tensor) -> torch.Tensor:
    _, _, layers, _ = _final(fam)
    dh = D // 4
    if fam.name == "gpt2":
        w = layers[layer].attn.c_proj.weight[head * dh:(head + 1) * dh]
    else:
        w = layers[layer].self_attn.o_proj.weight[:, head * dh:(head + 1) * dh].T
    return z @ w


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_dla_is_the_direct_effect_under_frozen_ln(get_family, name: str) -> None:
    """Under `freeze ln from X` the final norm is linear: DLA of a site equals m minus m
    with the site's value subtracted from the final residual only."""
    fam: Fam = get_family(name)
    res = fam.run(HEAD + "dla embed, L*.mlp.out, L*.attn.out, L1.H*.out in frozen "
                  "measure ld as d\n")
    ln_f, last, _, lm_head = _final(fam)
    sites = ["embed"] + [f"L{i}.{k}" for i in range(LAYERS) for k in ("mlp.out", "attn.out")]
    got = fam.read(CORRUPT, *sites, "L1.z")
    values = {s: got[s] for s in sites}
    for h in range(4):
        values[f"L1.H{h}.out"] = _head_out(fam, 1, h, got["L1.z"][..., h * 8:(h + 1) * 8])
    ids = fam.ids(CORRUPT)
    resid: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        # (update returns None: the hook must not replace the block's output)
        h = last.register_forward_hook(lambda m, a, out: resid.update(
            r=out[0] if isinstance(out, tuple) else out))
        m_f = ld_of(fam, fam.model(ids).logits)
        h.remove()
        r = resid["r"]
        rf = r.float()
        if isinstance(ln_f, torch.nn.LayerNorm):
            frozen = torch.rsqrt(rf.var(-1, unbiased=False, keepdim=True) + ln_f.eps)
        else:
            frozen = torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + ln_f.variance_epsilon)
        for site, v in values.items():
            x = rf - v
            if isinstance(ln_f, torch.nn.LayerNorm):
                y = (x - x.mean(-1, keepdim=True)) * frozen * ln_f.weight + ln_f.bias
            else:
                y = ln_f.weight * (x * frozen)
            direct = m_f - ld_of(fam, lm_head(y))
            close(_dla_row(res, site), direct, atol=1e-5)


def _dla_row(res, site: str) -> torch.Tensor:
    """The per-example values of `site`'s row of table d (items: embed, L*.mlp.out,
    L*.attn.out, L1.H*.out)."""
    df = res.per_example("d")
    if site == "embed":
        return per_example(res, "d", site="embed")
    if ".H" in site:
        return per_example(res, "d", site="L1.H*.out", head=int(site.split(".H")[1][0]))
    layer, kind = site[1:].split(".", 1)
    assert f"L*.{kind}" in set(df.site)
    return per_example(res, "d", site=f"L*.{kind}", layer=int(layer))


def test_dla_rejects_a_nonlinear_metric(gpt2: Fam) -> None:
    with pytest.raises(PatchcError, match="E465"):  # `check` finds it before any forward
        gpt2.run(HEAD + "dla L*.mlp.out in corrupt measure logprob(d.answer)\n")
    with pytest.raises(RuntimeInterventionError, match="E465"):  # the runtime's guard
        dla.linear_terms(A.MCall("rank", A.ColumnRef("d", "answer", NO_SPAN), NO_SPAN))


def test_attribution_is_two_forwards_and_one_backward(any_family) -> None:
    """Attribution patching costs 2 forwards (clean, corrupt) + 1 backward: the corrupt
    forward is the one the gradients are taken in; no weight gradient is made, and every
    parameter's requires_grad is as before. The estimates are the hand-computed ones."""
    fam: Fam = any_family("gpt2")
    fam.model.zero_grad(set_to_none=True)  # hand gradients of other tests may be left there
    calls = []
    handle = fam.model.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    before = [p.requires_grad for p in fam.model.parameters()]
    fam.model.get_input_embeddings().weight.requires_grad_(False)  # a frozen one stays frozen
    flags = [p.requires_grad for p in fam.model.parameters()]
    seen_param_grads = []

    def watch(mod, args, out):  # during the backward's pass no weight asks for a gradient
        if torch.is_grad_enabled():
            seen_param_grads.append(any(p.requires_grad for p in fam.model.parameters()))
    h2 = fam.model.register_forward_hook(watch)
    head_shapes = []
    h3 = fam.model.get_output_embeddings().register_forward_hook(
        lambda m, a, out: head_shapes.append(tuple(out.shape)) if torch.is_grad_enabled()
        else None)
    try:
        res = fam.run(HEAD + "attribute L*.mlp.out @ each, L*.resid_pre @ each "
                      "from clean into corrupt using atp measure ld as atp\n")
    finally:
        handle.remove()
        h2.remove()
        h3.remove()
    assert sorted(calls) == [False, True], calls  # one plain forward, one with gradients
    assert seen_param_grads == [False]
    # In the gradient pass the head's own product is skipped (it sees no positions): only
    # the answer and distractor rows of the unembedding are applied, at the last position.
    assert len(head_shapes) == 1 and head_shapes[0][1] == 0, head_shapes
    assert [p.requires_grad for p in fam.model.parameters()] == flags
    assert all(p.grad is None for p in fam.model.parameters())
    for p, flag in zip(fam.model.parameters(), before):
        p.requires_grad_(flag)
    sites = [f"L{layer}.{k}" for k in ("mlp.out", "resid_pre") for layer in range(LAYERS)]
    got = res["atp"]
    assert len(got) == len(sites) * T
    # Summed over positions, the `@ each` estimates minus their baselines are the whole-site
    # estimate's: check them against the hand gradients.
    want = hand_estimate(fam, sites, relp=False)
    df = res.per_example("atp")
    m_b = ld_of(fam, fam.forward(fam.ids(CORRUPT))[0])
    for site in sites:
        layer, kind = int(site.split(".")[0][1:]), site.split(".", 1)[1]
        part = df[(df["layer"] == layer) & df["site"].str.contains(kind)]
        summed = torch.zeros(len(ROWS))
        for _, row in part.iterrows():
            summed[int(row["example"])] += row["ld"] - float(m_b[int(row["example"])])
        close(m_b + summed, want[site], atol=1e-4)


@pytest.mark.parametrize("family", ["qwen3", "olmo2", "gemma3_text", "nanochat", "hyperclovax"])
def test_the_ln_rule_covers_every_normalizer(family: str) -> None:
    """QK-norms inside the attention are LN-ruled like the block's norms (on Qwen3, the
    gradient equals one with the QK-norms ruled by hand); an identity in a post-norm's place
    (HyperCLOVA X without post-norms) is not a norm."""
    from family_configs import build as build_family

    from patchc.compiler.families import lookup

    if lookup(family) is None:
        pytest.skip(f"{family} needs a newer transformers")
    ad = adapter_for(build_family(family))
    ruled = {id(m) for m in ad.extra_norms()}
    qk = [m for i in range(ad.n_layers) for n, m in ad.attn(i).named_modules()
          if n.endswith(("q_norm", "k_norm"))]
    assert set(map(id, qk)) <= ruled
    assert not any(isinstance(m, torch.nn.Identity) for m in ad.extra_norms())
    if family == "qwen3":  # the gradient: as with a QK-norm ruled by hand
        _qk_rule_by_hand(ad, qk)
    if family == "hyperclovax":
        cfg = build_family(family).config
        cfg.use_post_norm = False
        plain = adapter_for(tf.AutoModelForCausalLM.from_config(cfg).eval())
        assert not any(isinstance(m, torch.nn.Identity) for m in plain.extra_norms())
        with lrp.rules_for(plain, "lrp"):  # (an Identity has no epsilon: E401 before)
            pass
    else:
        assert qk


def _qk_rule_by_hand(ad, qk: list) -> None:
    """patchc's rules give the gradient that its rules with the QK-norms left out, plus a
    hook recomputing each QK-norm with its scale detached (x · s.detach() · w, RMSNorm) by
    hand, give; and it differs from leaving the QK-norms without a rule."""
    ids = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(2))
    inner = {id(m) for m in qk}
    original = type(ad).extra_norms

    def grad(rule_inner: bool, by_hand: bool) -> torch.Tensor:
        leaf = torch.zeros(2, 7, ad.d_model, requires_grad=True)
        with contextlib.ExitStack() as stack:
            if not rule_inner:
                type(ad).extra_norms = lambda self: [m for m in original(self)
                                                     if id(m) not in inner]
                stack.callback(setattr, type(ad), "extra_norms", original)
            for norm in qk if by_hand else []:
                def detached(m, args, out):
                    x = args[0].float()
                    s = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + ad.norm_eps(m)).detach()
                    return (x * s * ad.norm_weight(m).float()).to(out.dtype)
                stack.callback(norm.register_forward_hook(detached).remove)
            stack.enter_context(torch.enable_grad())
            stack.enter_context(lrp.rules_for(ad, "lrp"))
            stack.enter_context(ad.hook("resid_pre", 0, None, lambda a: a + leaf))
            ad.model(ids).logits[:, -1, 5].sum().backward()
        return leaf.grad

    ruled = grad(rule_inner=True, by_hand=False)
    torch.testing.assert_close(ruled, grad(rule_inner=False, by_hand=True), atol=1e-5,
                               rtol=1e-4)
    assert (ruled - grad(rule_inner=False, by_hand=False)).abs().max() > 1e-4
