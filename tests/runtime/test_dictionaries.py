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


def test_npz_weights_load_without_pickles(gpt2: Fam, tmp_path):
    w = _save(tmp_path, "s1", "standard", {}, fmt="npz")
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n'
                   "read s1 in clean as acts\n")
    x = gpt2.read(CLEAN, "L1.resid_post")["L1.resid_post"]
    torch.testing.assert_close(res.activations("acts")["s1"], HandSAE(w).encode(x),
                               atol=ATOL, rtol=0)
    # The manifest hashes the folder's config and weights (patchc verify checks them).
    inputs = res.manifest["inputs"]
    folder = str(tmp_path / "s1")
    assert {f"{folder}/cfg.json", f"{folder}/sae_weights.npz"} <= set(inputs)
    assert all(len(inputs[k]) == 64 for k in (f"{folder}/cfg.json", f"{folder}/sae_weights.npz"))


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


_MLP = {"gpt2": "transformer.h", "llama": "model.layers", "neox": "gpt_neox.layers"}


def _mlp(fam: Fam, layer: int) -> torch.nn.Module:
    root = fam.model
    for part in _MLP[fam.name].split("."):
        root = getattr(root, part)
    return root[layer].mlp


def _hand_transcoder_ld(fam: Fam, hand: HandSAE, layer: int, edit) -> torch.Tensor:
    """ld of the corrupt run with the transcoder's latents edited: the MLP's output y becomes
    y + decode(f') - decode(f), f = encode(MLP input), by plain module hooks."""
    seen = {}
    mlp = _mlp(fam, layer)

    def pre(mod, args):
        seen["x"] = args[0]

    def post(mod, args, y):
        f = hand.encode(seen["x"])
        return y + (hand.decode(edit(f.clone()), seen["x"]) - hand.decode(f, seen["x"]))

    handles = [mlp.register_forward_pre_hook(pre), mlp.register_forward_hook(post)]
    try:
        with torch.no_grad():
            logits = fam.model(fam.ids(CORRUPT)).logits.float()
    finally:
        for h in handles:
            h.remove()
    from ops_common import ld_of
    return ld_of(fam, logits)


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_transcoder_reads_mlp_input_and_stands_in_for_its_output(get_family, tmp_path, family,
                                                                 arch):
    fam = get_family(family)
    w = save_sae(tmp_path / "t", D, 20, arch, d_out=D)
    hand = HandSAE(w, arch)
    res = fam.run(HEAD + f'transcoder t = "{tmp_path / "t"}" at L1.mlp\n'
                  "swap t[{1, 6}] @ last from clean into corrupt  measure ld  as feats\n"
                  "ablate t[0:20] in corrupt  measure ld  as off\n"
                  "read t, t.err in clean as acts\n")
    captured = {}
    mlp = _mlp(fam, 1)
    h = mlp.register_forward_hook(lambda m, a, y: captured.update(x=a[0], y=y))
    with torch.no_grad():
        fam.model(fam.ids(CLEAN))
    h.remove()
    f_clean = hand.encode(captured["x"])
    acts = res.activations("acts")
    torch.testing.assert_close(acts["t"], f_clean, atol=ATOL, rtol=0)
    torch.testing.assert_close(acts["t.err"], captured["y"] - hand.decode(f_clean, captured["x"]),
                               atol=ATOL, rtol=0)
    for i in (1, 6):
        def edit(f, i=i):
            f[:, -1, i] = f_clean[:, -1, i]
            return f
        torch.testing.assert_close(per_example(res, "feats", "ld", feature=i),
                                   _hand_transcoder_ld(fam, hand, 1, edit), atol=ATOL, rtol=0)
    torch.testing.assert_close(per_example(res, "off", "ld"),
                               _hand_transcoder_ld(fam, hand, 1, lambda f: f * 0),
                               atol=ATOL, rtol=0)


class _SAELensLike:
    """What patchc reads of an SAELens `SAE`: `cfg.to_dict()` and `state_dict()` (the
    sae-lens package is not needed; test_saelens_object uses the real one when installed)."""

    class _Cfg:
        def __init__(self, d: dict) -> None:
            self.d = d

        def to_dict(self) -> dict:
            return dict(self.d)

    def __init__(self, cfg: dict, weights: dict) -> None:
        self.cfg = self._Cfg(cfg)
        self.weights = weights

    def state_dict(self) -> dict:
        return dict(self.weights)


def test_sae_object_stands_in_for_the_folder(gpt2: Fam, tmp_path):
    import json

    from patchc.compiler.errors import PatchcError

    w = _save(tmp_path, "s1", "topk", {"k": 3})
    cfg = json.loads((tmp_path / "s1" / "cfg.json").read_text())
    body = HEAD + 'sae s1 = "SAE_PATH" at L1.resid_post\n' + \
        "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n"
    folder = gpt2.run(body.replace("SAE_PATH", str(tmp_path / "s1")))["feats"]
    obj = _SAELensLike(cfg, w)
    given = gpt2.run(body.replace("SAE_PATH", "not/a/folder"), saes={"s1": obj})["feats"]
    assert folder["ld"].tolist() == given["ld"].tolist()
    with pytest.raises(PatchcError) as e:
        gpt2.run(body.replace("SAE_PATH", str(tmp_path / "s1")), saes={"s2": obj})
    assert e.value.code == "E484"
    with pytest.raises(PatchcError) as e:  # the object's cfg is checked like a cfg.json
        gpt2.run(body.replace("SAE_PATH", "x"), saes={"s1": _SAELensLike({**cfg, "d_in": 8}, w)})
    assert e.value.errors[0].code == "E384"


def test_saelens_object(gpt2: Fam, tmp_path):
    """A real SAELens SAE (skipped where sae-lens is not installed)."""
    sae_lens = pytest.importorskip("sae_lens")
    _save(tmp_path, "s1", "jumprelu", {})
    sae = sae_lens.SAE.load_from_disk(str(tmp_path / "s1"))
    x = gpt2.read(CLEAN, "L1.resid_post")["L1.resid_post"]
    res = gpt2.run(HEAD + 'sae s1 = "elsewhere" at L1.resid_post\nread s1 in clean as acts\n',
                   saes={"s1": sae})
    torch.testing.assert_close(res.activations("acts")["s1"], sae.encode(x).detach(),
                               atol=ATOL, rtol=0)


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
