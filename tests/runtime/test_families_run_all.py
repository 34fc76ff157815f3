"""Every family of the table through the whole pipeline: the optimized plan and the naive
interpreter give the same tables (head sweep, position sweep, attribution, and expert, router,
ablation, scaling and DLA tables on mixtures of experts); a swap of a run into itself reproduces
the model's own forward bit for bit; attribution through the router matches a hand gradient.

And the tokenizer follows its own files: a word-level tokenizer saved beside a qwen2 model is
the one patchc loads (transformers would otherwise pick Qwen2Tokenizer from the model_type).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import VOCAB, inline, logit_diff, make_tokenizer
from family_configs import FAMILY_NAMES, build

import patchc
from patchc.compiler.families import FAMILIES, lookup
from patchc.compiler.modelspec import spec_from_config
from patchc.runtime.loading import load_tokenizer

ROWS = [
    {"clean": "when Mary and John went to", "corrupt": "when Anna and Bob went to",
     "answer": "Mary", "distractor": "John"},
    {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the tree",
     "answer": "mat", "distractor": "tree"},
]
BODY = f"""
data d = {inline(ROWS)}
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
swap L*.H*.z from clean into corrupt measure ld as heads
swap L1.resid_pre @ each from clean into corrupt measure ld as resid
swap L0.resid_pre @ 0 from corrupt into corrupt measure ld as self
"""
MOE = """swap L*.E*.out from clean into corrupt measure ld as experts
swap L*.router @ last from clean into corrupt measure ld as route
attribute L*.E*.out from clean into corrupt using atp measure ld as experts_atp
attribute L*.router @ last from clean into corrupt using atp measure ld as route_atp
ablate L*.E*.out in corrupt with mean(clean) measure ld as expert_mean
scale L0.router @ last in corrupt by 2 measure ld as router_scaled
dla L*.E*.out in corrupt measure ld as expert_dla
dla L*.mlp.out in corrupt measure ld as mlp_dla
lens L*.E*.out @ last in corrupt measure ld as expert_lens
"""
DENSE = """attribute L*.mlp.out @ last from clean into corrupt using relp measure ld as relp
attribute L*.H*.z @ last from clean into corrupt using atp measure ld as atp
attribute L*.mlp.out @ each, L*.resid_post @ each from clean into corrupt using atp
    measure ld as top
"""
SHARED = "dla L*.shared.out in corrupt measure ld as shared_dla\n"


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(False)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_optimized_equals_naive(family: str, tok, tmp_path) -> None:
    model = build(family)
    model.config.save_pretrained(tmp_path)  # check reads the config and tokenizer only
    tok.save_pretrained(tmp_path)
    moe = FAMILIES[model.config.model_type].moe
    shared = moe and FAMILIES[model.config.model_type].shared_expert
    dense = DENSE if model.config.model_type != "bitnet" else \
        DENSE.replace("using relp", "using atp")  # (relp refused there: E357)
    spec = f'model "{tmp_path}"\n' + BODY + (MOE if moe else dense) + (SHARED if shared else "")
    res = patchc.run(spec, model=model, tokenizer=tok)
    naive = patchc.run(spec, model=model, tokenizer=tok, naive=True)
    for table in res:
        pd.testing.assert_frame_equal(res.per_example(table), naive.per_example(table),
                                      check_exact=False, atol=1e-5, rtol=1e-5)
    shape = spec_from_config(model.config.to_dict())
    assert len(res["heads"]) == shape.n_layers * shape.n_heads
    if moe:
        assert list(res["experts"].columns[:2]) == ["layer", "expert"]
        assert len(res["experts_atp"]) == len(res["experts"])
        _check_router_gradient(model, tok, res.per_example("route_atp"))
        # direct logit attribution is linear: the experts' (and shared expert's) parts sum to
        # the MLP's
        parts = res.per_example("expert_dla").groupby(["layer", "example"])["ld"].sum()
        if shared:
            parts = parts + res.per_example("shared_dla").set_index(["layer", "example"])["ld"]
        whole = res.per_example("mlp_dla").set_index(["layer", "example"])["ld"]
        pd.testing.assert_series_equal(parts.sort_index(), whole.sort_index(),
                                       check_exact=False, atol=1e-5, check_names=False)
    ids = torch.tensor([tok(r["corrupt"])["input_ids"] for r in ROWS])
    with torch.no_grad():
        logits = model(ids).logits
    want = logit_diff(logits, [VOCAB[r["answer"]] for r in ROWS],
                      [VOCAB[r["distractor"]] for r in ROWS])
    # The naive interpreter's run written with its own value is the model's own forward, bit
    # for bit (the optimized plan batches experiments: equal up to float rounding, above).
    got = naive.per_example("self").sort_values("example")["ld"].to_numpy()
    assert torch.equal(torch.tensor(got, dtype=torch.float32), want), (got, want)


def _check_router_gradient(model, tok, atp: pd.DataFrame) -> None:
    """Attribution through the router, by hand: the corrupt metric plus (r_clean - r_corrupt)
    . d ld / d r at the last position of each layer's router logits (plain torch hooks)."""
    from patchc.runtime.adapters import adapter_for

    ad = adapter_for(model)

    def ids(col: str) -> torch.Tensor:
        return torch.tensor([tok(r[col])["input_ids"] for r in ROWS])

    answers = [VOCAB[r["answer"]] for r in ROWS]
    distractors = [VOCAB[r["distractor"]] for r in ROWS]
    for layer in range(ad.n_layers):
        router = ad._at(layer, ad.s.router)
        seen: dict = {}
        # the router's logits, by hand: its linear map of its input (before 5.6 transformers'
        # softmax-top-k routers returned their softmax, not the logits)
        lin = router if getattr(router, "weight", None) is not None else next(
            m for m in router.modules() if isinstance(m, torch.nn.Linear))  # HunYuan's gate.wg
        handle = router.register_forward_hook(
            lambda m, a, out, seen=seen, lin=lin: seen.update(
                r=torch.nn.functional.linear(a[0], lin.weight, getattr(lin, "bias", None))))
        try:
            with torch.no_grad():
                model(ids("clean"))
            clean = seen["r"].view(len(ROWS), -1, ad.n_experts)[:, -1]
            leaf: list = []

            def grab(act: torch.Tensor, leaf: list = leaf) -> torch.Tensor:
                leaf.append(act.detach().requires_grad_())
                return leaf[0]

            with ad.hook("router", layer, None, grab):
                logits = model(ids("corrupt")).logits
            base = logit_diff(logits, answers, distractors)
            base.sum().backward()
        finally:
            handle.remove()
        delta = ((clean - leaf[0][:, -1]) * leaf[0].grad[:, -1]).sum(-1)
        want = (base + delta).detach()
        got = atp[atp["layer"] == layer].sort_values("example")["ld"].to_numpy()
        assert torch.allclose(torch.tensor(got, dtype=torch.float32), want, atol=1e-5), layer


def test_tokenizer_follows_its_files_not_the_model_type(tmp_path) -> None:
    tok = make_tokenizer(False)
    model = build("qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    for text in ("Vic", " Mary", "the cat sat"):
        assert loaded(text, add_special_tokens=False)["input_ids"] == \
            tok(text, add_special_tokens=False)["input_ids"]
    spec = f'model "{tmp_path}"\n' + BODY
    res = patchc.run(spec)  # patchc loads model and tokenizer itself
    assert len(res["resid"]) > 0


def test_sites_listing_shows_experts(tmp_path) -> None:
    """`patchc sites` lists the expert sites of a mixture of experts, and none on a dense
    model."""
    from patchc.sitelist import render

    if lookup("mixtral") is None:  # needs a newer transformers (families.SINCE)
        pytest.skip("the installed transformers has no mixture of experts patchc maps")
    for family, has in (("mixtral", True), ("llama", False)):
        text = render(family, spec_from_config(build(family).config.to_dict()))
        assert ("L*.E*.out" in text and "L*.router" in text) == has, family
        assert max(len(line) for line in text.splitlines()[:6]) <= 100
