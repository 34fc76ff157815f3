"""SAEs on real (tiny) models: encode/decode, the attached run, and latent writes, each
against a computation written here with plain torch hooks and sae_helpers.HandSAE.

Every dictionary is random and saved in SAELens' layout into tmp_path; every family is built
in conftest.py (GPT-2, Llama with grouped-query attention, NeoX with parallel blocks).
"""

from __future__ import annotations

import pytest
import torch
from conftest import Fam
from ops_common import ATOL, CLEAN, CORRUPT, HEAD, ROWS, hand_ld, per_example
from sae_helpers import HandSAE, save_sae

from patchc.compiler.dictionaries import DictInfo
from patchc.compiler.ir import Site
from patchc.runtime.adapters import adapter_for
from patchc.runtime.dictionaries import Dictionary

D = 32
VARIANTS = {  # name -> (architecture, options)
    "relu": ("standard", {}),
    "relu-no-bdec": ("standard", {"apply_b_dec": False}),
    "topk": ("topk", {"k": 3}),
    "topk-rescaled": ("topk", {"k": 3, "rescale": True}),
    "jumprelu": ("jumprelu", {}),
    "relu-normrescale": ("standard", {"norm": "constant_norm_rescale"}),
    "jumprelu-layernorm": ("jumprelu", {"norm": "layer_norm", "apply_b_dec": False}),
}


def _hand(w, arch: str, opts: dict) -> HandSAE:
    return HandSAE(w, arch, **opts)


def _save(tmp_path, name: str, arch: str, opts: dict, d_in: int = D, d_sae: int = 24,
          **kw):
    return save_sae(tmp_path / name, d_in, d_sae, arch, **opts, **kw)


def _attached(fam: Fam, hand: HandSAE, site: str, edit):
    """A hand write fn for `site` that encodes, lets `edit(f)` change the latents, and puts
    y + decode(f') - decode(f) back (SAELens' error term, written out)."""
    def fn(y: torch.Tensor) -> torch.Tensor:
        f = hand.encode(y)
        recon = hand.decode(f)
        f2 = edit(f.clone())
        return y + (hand.decode(f2) - recon)
    return {site: fn}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_encode_matches_saelens_formulas(gpt2: Fam, tmp_path, variant):
    """`read s1` gives encode(x) of the site's value, for each architecture and option."""
    arch, opts = VARIANTS[variant]
    w = _save(tmp_path, "s1", arch, opts)
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n'
                   "read s1, s1.err in clean as acts\n")
    acts = res.activations("acts")
    x = gpt2.read(CLEAN, "L1.resid_post")["L1.resid_post"]
    hand = _hand(w, arch, opts)
    f = hand.encode(x)
    assert (f > 0).any() and (f == 0).any()
    torch.testing.assert_close(acts["s1"], f, atol=ATOL, rtol=0)
    torch.testing.assert_close(acts["s1.err"], x - hand.decode(f), atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dictionary_object_decode(tmp_path, variant):
    """The runtime's Dictionary equals the hand formulas on random inputs (no model)."""
    arch, opts = VARIANTS[variant]
    w = _save(tmp_path, "s1", arch, opts)
    info = DictInfo("s1", "sae", str(tmp_path / "s1"), "sae_weights.safetensors", arch, D, 24,
                    D, Site("resid_post", 1), opts.get("apply_b_dec", True),
                    opts.get("norm", "none"), opts.get("k", 0), opts.get("rescale", False))
    d = Dictionary.load(info)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(1))
    hand = _hand(w, arch, opts)
    f, norm = d.encode(x)
    torch.testing.assert_close(f, hand.encode(x), atol=1e-6, rtol=0)
    g = f * 1.5
    torch.testing.assert_close(d.decode(g, norm), hand.decode(g), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_attached_without_writes_is_bit_exact(get_family, tmp_path, family):
    """Hooks that only read the latents and the error term leave the logits bit-equal; so
    does a write that puts back the latents' own values."""
    fam = get_family(family)
    save_sae(tmp_path / "s1", D, 24, "topk", k=3)
    info_spec = fam.spec(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.mlp.out\n')
    import patchc

    checked = patchc.compile(info_spec).checked
    ad = adapter_for(fam.model)
    ad.dictionaries = {"s1": Dictionary.load(checked.model.dictionaries[0])}
    ids = fam.ids(CLEAN)
    with torch.no_grad():
        plain = fam.model(ids).logits
        seen = []
        with ad.hooks([("dict:s1", None, None, lambda f: seen.append(f) and None),
                       ("dict:s1.err", None, None, lambda e: None)]):
            read = fam.model(ids).logits
        with ad.hooks([("dict:s1", None, None, lambda f: f.clone())]):
            rewritten = fam.model(ids).logits
        after = fam.model(ids).logits
    assert seen and seen[0].shape == (len(CLEAN), ids.shape[1], 24)
    assert torch.equal(plain, read)
    assert torch.equal(plain, rewritten)
    assert torch.equal(plain, after)  # detached again


@pytest.mark.parametrize("family,site", [("gpt2", "L1.resid_post"), ("llama", "L0.mlp.out"),
                                         ("neox", "L1.attn.z")])
@pytest.mark.parametrize("variant", ["relu", "topk", "jumprelu-layernorm"])
def test_swap_latents_equals_hand(get_family, tmp_path, family, site, variant):
    """swap s1[i] @ last, a joint slice and the error term, each against hand hooks."""
    fam = get_family(family)
    arch, opts = VARIANTS[variant]
    w = _save(tmp_path, "s1", arch, opts)
    hand = _hand(w, arch, opts)
    res = fam.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at {site}\n'
                  "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n"
                  "swap s1[2:9] from clean into corrupt  measure ld  as sliced\n"
                  "swap s1.err @ last from clean into corrupt  measure ld  as err\n"
                  "ablate s1[{0, 5}] in corrupt  measure ld  as zeroed\n")
    clean_x = fam.read(CLEAN, site)[site]
    f_clean = hand.encode(clean_x)
    err_clean = clean_x - hand.decode(f_clean)
    for i in (0, 3, 7):
        def edit(f, i=i):
            f[:, -1, i] = f_clean[:, -1, i]
            return f
        want = hand_ld(fam, CORRUPT, _attached(fam, hand, site, edit))
        got = per_example(res, "feats", "ld", feature=i)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    def sliced(f):
        f[..., 2:9] = f_clean[..., 2:9]
        return f
    want = hand_ld(fam, CORRUPT, _attached(fam, hand, site, sliced))
    torch.testing.assert_close(per_example(res, "sliced", "ld"), want, atol=ATOL, rtol=0)

    def with_err(y):
        f = hand.encode(y)
        out = y.clone()
        own_err = y - hand.decode(f)
        out[:, -1] = y[:, -1] + err_clean[:, -1] - own_err[:, -1]
        return out
    want = hand_ld(fam, CORRUPT, {site: with_err})
    torch.testing.assert_close(per_example(res, "err", "ld"), want, atol=ATOL, rtol=0)

    def zeroed(f):
        f[..., [0, 5]] = 0
        return f
    want = hand_ld(fam, CORRUPT, _attached(fam, hand, site, zeroed))
    for i in (0, 5):
        got = per_example(res, "zeroed", "ld", feature=i)
        single = hand_ld(fam, CORRUPT, _attached(
            fam, hand, site, lambda f, i=i: f.index_fill_(-1, torch.tensor([i]), 0.0)))
        torch.testing.assert_close(got, single, atol=ATOL, rtol=0)
    del want


def test_latent_ablate_mean_scale_steer(gpt2: Fam, tmp_path):
    """ablate with mean(A), scale and steer along a latent (a one-hot vector in the latent
    space), each equal to the hand edit of the latents."""
    w = _save(tmp_path, "s1", "standard", {})
    hand = HandSAE(w)
    site = "L1.resid_post"
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at {site}\n'
                   "ablate s1[4] @ last in corrupt with mean(clean)  measure ld  as meaned\n"
                   "scale s1[0:24] in corrupt by 2.5  measure ld  as scaled\n")
    f_clean = hand.encode(gpt2.read(CLEAN, site)[site])

    def meaned(f):
        f[:, -1, 4] = f_clean[:, -1, 4].mean()
        return f
    want = hand_ld(gpt2, CORRUPT, _attached(gpt2, hand, site, meaned))
    torch.testing.assert_close(per_example(res, "meaned", "ld"), want, atol=ATOL, rtol=0)
    want = hand_ld(gpt2, CORRUPT, _attached(gpt2, hand, site, lambda f: f * 2.5))
    torch.testing.assert_close(per_example(res, "scaled", "ld"), want, atol=ATOL, rtol=0)
    assert len(ROWS) == 4


def test_latents_steer_baked_compare(gpt2: Fam, tmp_path):
    """steer along a latent-space vector, a run with a baked latent ablation, and compare's
    site_kind (the dictionary's name)."""
    w = _save(tmp_path, "s1", "standard", {})
    hand = HandSAE(w)
    site = "L1.resid_post"
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at {site}\n'
                   "vector v = mean(clean.s1[0:24] @ last)\n"
                   "run abl = d.corrupt with ablate s1[0:24] @ last\n"
                   "steer s1[0:24] @ last in corrupt by {0.5, 2} * v  measure ld  as steered\n"
                   "measure ld in abl  as baked\n"
                   "compare atp against swap on s1[*] @ last from clean into corrupt  "
                   "measure ld  as cmp\n")
    f_clean = hand.encode(gpt2.read(CLEAN, site)[site])
    v = f_clean[:, -1].mean(0)
    assert v.abs().sum() > 0
    for scale in (0.5, 2.0):
        def steer(f, scale=scale):
            f[:, -1] += scale * v
            return f
        want = hand_ld(gpt2, CORRUPT, _attached(gpt2, hand, site, steer))
        torch.testing.assert_close(per_example(res, "steered", "ld", scale=scale), want,
                                   atol=ATOL, rtol=0)

    def zero_last(f):
        f[:, -1] = 0
        return f
    want = hand_ld(gpt2, CORRUPT, _attached(gpt2, hand, site, zero_last))
    torch.testing.assert_close(per_example(res, "baked", "ld"), want, atol=ATOL, rtol=0)
    assert res["cmp"]["site_kind"].tolist() == ["s1"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_reading_latents_leaves_the_run_bit_exact(get_family, tmp_path, family):
    """Through the whole pipeline: a run whose latents and error term are read in the same
    forward measures exactly what it measures without the dictionary (==, not close)."""
    fam = get_family(family)
    save_sae(tmp_path / "s1", D, 24, "jumprelu", norm="layer_norm")
    plain = fam.run(HEAD + "measure ld, kl(corrupt), loss in clean  as m\n")
    read = fam.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.mlp.out\n'
                   "measure ld, kl(corrupt), loss in clean  as m\n"
                   "read s1, s1.err in clean  as r\n"
                   "swap s1[3] @ 2 from clean into clean  measure ld  as self_swap\n")
    for col in ("ld", "kl(corrupt)", "loss"):
        a = plain.per_example("m").sort_values("example")[col].to_numpy()
        b = read.per_example("m").sort_values("example")[col].to_numpy()
        assert (a == b).all(), col
    # Swapping a latent with its own value is no change at all (in one plain forward; the
    # plan may compute it from position 2 on, with the prefix's keys and values cached,
    # which rounds differently).
    a = plain.per_example("m").sort_values("example")["ld"].to_numpy()
    b = read.per_example("self_swap").sort_values("example")["ld"].to_numpy()
    assert (a == b).all() if fam.naive else abs(a - b).max() < 1e-5


def test_latent_resample_and_backpatch(gpt2: Fam, tmp_path):
    """ablate with resample(A) (each example takes another example's latents; the sweep's
    rows equal the naive interpreter's, and the zero-latent ones the unpatched run) and
    backpatch between two dictionaries' latents, against the hand edit."""
    import patchc

    w0 = save_sae(tmp_path / "s0", D, 24, seed=1)
    w1 = save_sae(tmp_path / "s1", D, 24, seed=2)
    h0, h1 = HandSAE(w0), HandSAE(w1)
    spec = gpt2.spec(HEAD + f'sae s0 = "{tmp_path / "s0"}" at L0.resid_post\n'
                     f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n'
                     "ablate s1[*] @ last in corrupt with resample(clean)  measure ld  as rs\n"
                     "backpatch s1[0:24] -> s0[0:24] @ last in corrupt from clean  measure ld"
                     "  as bp\n")
    opt = patchc.run(spec, model=gpt2.model, tokenizer=gpt2.tok)
    naive = patchc.run(spec, model=gpt2.model, tokenizer=gpt2.tok, naive=True)
    a = opt.per_example("rs").sort_values(["feature", "example"])["ld"].to_numpy()
    b = naive.per_example("rs").sort_values(["feature", "example"])["ld"].to_numpy()
    assert abs(a - b).max() < 1e-5
    # backpatch: clean's s1 latents at the last token written as s0's latents of corrupt.
    f1_clean = h1.encode(gpt2.read(CLEAN, "L1.resid_post")["L1.resid_post"])

    def edit(f):
        f[:, -1] = f1_clean[:, -1]
        return f
    want = hand_ld(gpt2, CORRUPT, _attached(gpt2, h0, "L0.resid_post", edit))
    torch.testing.assert_close(per_example(opt, "bp", "ld"), want, atol=ATOL, rtol=0)
