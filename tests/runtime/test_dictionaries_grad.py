"""Attribution on dictionary latents: atp equals hand autograd with the error term detached;
relp with its rules switched to plain gradients equals atp; latents and error together
recover the host site's estimate (the decomposition x = decode(f) + err is exact); ig's
straight line runs through the latents."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import Fam
from ops_common import CLEAN, CORRUPT, HEAD, ld_of, per_example
from sae_helpers import HandSAE, save_sae

from patchc.runtime import estimates, lrp

D = 32
ATOL = 1e-4  # sums of products of gradients


def _hand_grad(fam: Fam, hand: HandSAE, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ld on the corrupt run and d ld / d f at the SAE's latents, with the error held:
    the site's value is decode(f) + (y - decode(f)).detach(), f a leaf."""
    module, side, _ = fam.where(site)
    store = {}

    def post(mod, args, out):
        y = out[0] if isinstance(out, tuple) else out
        f = hand.encode(y.detach()).requires_grad_(True)
        store["f"] = f
        err = (y - hand.decode(f)).detach()
        new = hand.decode(f) + err
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    assert side == "out"
    h = module.register_forward_hook(post)
    try:
        logits = fam.model(fam.ids(CORRUPT)).logits.float()
        ld = ld_of(fam, logits)
        (g,) = torch.autograd.grad(ld.sum(), [store["f"]])
    finally:
        h.remove()
    return ld.detach(), g


@pytest.mark.parametrize("family,site", [("gpt2", "L1.resid_post"), ("llama", "L0.mlp.out"),
                                         ("neox", "L1.attn.out")])
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_atp_on_latents_equals_hand_autograd(get_family, tmp_path, family, site, arch):
    fam = get_family(family)
    w = save_sae(tmp_path / "s1", D, 24, arch, k=5)
    hand = HandSAE(w, arch, k=5)
    res = fam.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at {site}\n'
                  "attribute s1[*] @ each from clean into corrupt using atp  measure ld  "
                  "as atp\n")
    ld_b, g = _hand_grad(fam, hand, site)
    f_a = hand.encode(fam.read(CLEAN, site)[site])
    f_b = hand.encode(fam.read(CORRUPT, site)[site])
    checked = 0
    for i in range(0, 24, 5):
        for p in (2, 5):
            want = ld_b + (f_a - f_b)[:, p, i] * g[:, p, i]
            got = per_example(res, "atp", "ld", feature=i, pos=p)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
            checked += int(bool(((f_a - f_b)[:, p, i] * g[:, p, i]).abs().max() > 0))
    assert checked  # some estimates differ from the unpatched value


def test_relp_with_identity_rules_equals_atp(gpt2: Fam, tmp_path, monkeypatch):
    """With RelP's rule hooks replaced by nothing, the relp backward is plain autograd: its
    latent estimates then equal atp's to the bit."""
    save_sae(tmp_path / "s1", D, 24)
    body = HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n' + \
        "attribute s1[*] @ each from clean into corrupt using METHOD  measure ld  as est\n"
    atp = gpt2.run(body.replace("METHOD", "atp"))["est"]
    monkeypatch.setattr(lrp, "rules_for", lambda adapter, rules: contextlib.nullcontext())
    assert estimates.lrp.rules_for is lrp.rules_for
    relp = gpt2.run(body.replace("METHOD", "relp"))["est"]
    assert atp["ld"].tolist() == relp["ld"].tolist()


@pytest.mark.parametrize("method", ["atp", "relp", "ig(steps=3)"])
def test_latents_and_error_sum_to_the_site(gpt2: Fam, tmp_path, method):
    """x = decode(f) + err with a linear decode, so the joint estimate over every latent and
    the error term at a position equals the site's own estimate there (atp, relp; and ig,
    whose straight line in (f, err) maps to the straight line in x)."""
    save_sae(tmp_path / "s1", D, 24, apply_b_dec=False)
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n'
                   f"attribute all(s1[0:24], s1.err) @ each from clean into corrupt using "
                   f"{method}  measure ld  as split\n"
                   f"attribute L1.resid_post @ each from clean into corrupt using {method}  "
                   "measure ld  as whole\n")
    split = res["split"].sort_values("pos")["ld"].to_numpy()
    whole = res["whole"].sort_values("pos")["ld"].to_numpy()
    assert abs(split - whole).max() < ATOL, (split, whole)
    assert abs(whole - whole[0]).max() > 1e-4  # not all the unpatched value


def test_ig_on_latents_equals_hand(gpt2: Fam, tmp_path):
    """ig(steps=4) on one latent at one position: the gradient averaged at the midpoints of
    f_B -> f_A, taken by hand with the error term held."""
    w = save_sae(tmp_path / "s1", D, 24)
    hand = HandSAE(w)
    site, p = "L1.resid_post", 5
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at {site}\n'
                   f"attribute s1[*] @ {p} from clean into corrupt using ig(steps=4)  "
                   "measure ld  as ig\n")
    f_a = hand.encode(gpt2.read(CLEAN, site)[site])
    f_b = hand.encode(gpt2.read(CORRUPT, site)[site])
    module, _, _ = gpt2.where(site)
    ld_b, _ = _hand_grad(gpt2, hand, site)
    i = int(((f_a - f_b)[:, p].abs().sum(0)).argmax())
    total = torch.zeros(len(CORRUPT))
    for j in range(4):
        alpha = (j + 0.5) / 4
        store = {}

        def post(mod, args, out, alpha=alpha, store=store):
            y = out[0] if isinstance(out, tuple) else out
            f = hand.encode(y.detach())
            f = f.clone()
            f[:, p, i] = f_b[:, p, i] + alpha * (f_a - f_b)[:, p, i]
            f.requires_grad_(True)
            store["f"] = f
            err = (y - hand.decode(hand.encode(y.detach()))).detach()
            new = hand.decode(f) + err
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

        h = module.register_forward_hook(post)
        try:
            ld = ld_of(gpt2, gpt2.model(gpt2.ids(CORRUPT)).logits.float())
            (g,) = torch.autograd.grad(ld.sum(), [store["f"]])
        finally:
            h.remove()
        total += g[:, p, i] / 4
    want = ld_b + (f_a - f_b)[:, p, i] * total
    torch.testing.assert_close(per_example(res, "ig", "ld", feature=i), want, atol=ATOL,
                               rtol=0)


@pytest.mark.parametrize("method", ["atp", "relp"])
def test_attaching_leaves_other_gradients_unchanged(gpt2: Fam, tmp_path, method):
    """An attribution of latents shares its backward with one of upstream sites
    (fuse_attribution); the upstream sites' estimates are those of a run without the
    dictionary, to the bit (the gradient upstream is the model's own, as Marks et al.'s
    straight-through error term gives)."""
    save_sae(tmp_path / "s1", D, 24, "topk", k=4)
    upstream = f"attribute L0.mlp.out @ each from clean into corrupt using {method}  " \
               "measure ld  as up\n"
    alone = gpt2.run(HEAD + upstream)["up"]
    fused = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n' + upstream +
                     f"attribute s1[*] @ each from clean into corrupt using {method}  "
                     "measure ld  as feats\n")["up"]
    assert alone["ld"].tolist() == fused["ld"].tolist()
