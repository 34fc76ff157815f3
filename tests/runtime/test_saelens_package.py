"""The real sae-lens package (skipped where it is not installed; patchc never requires it):
an SAELens `SAE` object built from an SAELens config with random weights, given through the
API (`saes=`), computes what the same weights saved by SAELens as a folder compute, and its
latents are the package's own `sae.encode`, for a standard (ReLU), a TopK and a JumpReLU SAE.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Fam
from ops_common import ATOL, CLEAN, CORRUPT, HEAD

sae_lens = pytest.importorskip("sae_lens")

D, D_SAE = 32, 24
SITE = "L1.resid_post"
CONFIGS = {  # case -> (config class, its extra fields)
    "standard": ("StandardSAEConfig", {}),
    "topk": ("TopKSAEConfig", {"k": 4}),
    "jumprelu": ("JumpReLUSAEConfig", {}),
    "standard-layer_norm": ("StandardSAEConfig", {"normalize_activations": "layer_norm"}),
    "skip_transcoder": ("SkipTranscoderConfig", {"d_out": D, "apply_b_dec_to_input": False}),
}


def _random_sae(arch: str, seed: int = 0, **fields):
    """An SAE from its SAELens config, its parameters replaced by seeded random values (b_enc
    shifted down so that a share of latents is off, as in a trained SAE)."""
    cls, extra = CONFIGS[arch]
    extra = {"apply_b_dec_to_input": True, **extra, **fields}
    cfg = getattr(sae_lens, cls)(d_in=D, d_sae=D_SAE, **extra)
    sae = sae_lens.SAE.from_dict(cfg.to_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
            if name == "b_enc":
                p.sub_(0.2)
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.2)
    return sae.eval()


BODY = (HEAD + 'sae s1 = "PATH" at L1.resid_post\n'
        "read s1, s1.err in clean  as acts\n"
        "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n"
        "attribute s1[*] @ last, s1.err @ last from clean into corrupt using atp  measure ld"
        "  as atp\n"
        "dla s1[0:12] @ last, s1.err @ last in clean  measure ld  as direct\n")


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "standard-layer_norm"])
def test_saelens_object_equals_its_saved_folder(gpt2: Fam, tmp_path, arch):
    sae = _random_sae(arch)
    sae.save_model(str(tmp_path / "s1"))
    folder = gpt2.run(BODY.replace("PATH", str(tmp_path / "s1")))
    given = gpt2.run(BODY.replace("PATH", "not/a/folder"), saes={"s1": sae})
    x = gpt2.read(CLEAN, SITE)[SITE]
    with torch.no_grad():
        f = sae.encode(x)
        err = x - sae.decode(f)
    assert (f > 0).any() and (f == 0).any()
    for res in (folder, given):
        acts = res.activations("acts")
        torch.testing.assert_close(acts["s1"], f, atol=ATOL, rtol=0)
        torch.testing.assert_close(acts["s1.err"], err, atol=ATOL, rtol=0)
    for table in ("feats", "atp", "direct"):
        a, b = folder[table], given[table]
        assert len(a) == len(b) > 0
        assert torch.allclose(torch.tensor(a["ld"].to_numpy()), torch.tensor(b["ld"].to_numpy()),
                              atol=ATOL, rtol=0), table
    # An exact row against the package's own encode/decode: the latents of the last token
    # of the corrupt run replaced by the clean run's, the error term held.
    i = int(f[:, -1].abs().sum(0).argmax())
    row = given["feats"][given["feats"]["feature"] == i]["ld"].item()
    from ops_common import hand_ld

    def swap_one(y):
        with torch.no_grad():
            fy = sae.encode(y)
            f2 = fy.clone()
            f2[:, -1, i] = f[:, -1, i]
            patched = sae.decode(f2)
            sae.encode(y)  # SAELens' layer_norm decode consumes the state encode left
            return y + patched - sae.decode(fy)
    assert abs(row - hand_ld(gpt2, CORRUPT, {SITE: swap_one}).mean().item()) < 1e-4


def test_saelens_hook_name_and_transcoder(gpt2: Fam, tmp_path):
    """The object's metadata names its hook, so `at` may be left out; an SAELens skip
    transcoder reads the MLP's input and its latents are the package's `encode` of it."""
    from sae_lens.saes.sae import SAEMetadata

    sae = _random_sae("topk", metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post"))
    tc = _random_sae("skip_transcoder", seed=1)
    tc.save_model(str(tmp_path / "t"))
    body = (HEAD + 'sae s1 = "elsewhere"\ntranscoder t = "PATH" at L0.mlp\n'
            "read s1, t in clean  as acts\n"
            "swap t[*] @ last from clean into corrupt  measure ld  as feats\n")
    given = gpt2.run(body.replace("PATH", "x"), saes={"s1": sae, "t": tc})
    folder = gpt2.run(body.replace("PATH", str(tmp_path / "t")), saes={"s1": sae})
    assert given["feats"]["ld"].tolist() == folder["feats"]["ld"].tolist()
    seen = {}
    mlp = gpt2.model.transformer.h[0].mlp
    hd = mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    x = gpt2.read(CLEAN, SITE)[SITE]
    hd.remove()
    acts = given.activations("acts")
    with torch.no_grad():
        torch.testing.assert_close(acts["s1"], sae.encode(x), atol=ATOL, rtol=0)
        torch.testing.assert_close(acts["t"], tc.encode(seen["x"]), atol=ATOL, rtol=0)
