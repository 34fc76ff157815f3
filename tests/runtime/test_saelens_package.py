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
CONFIGS = {  # architecture -> (config class, its extra fields)
    "standard": ("StandardSAEConfig", {}),
    "topk": ("TopKSAEConfig", {"k": 4}),
    "jumprelu": ("JumpReLUSAEConfig", {}),
}


def _random_sae(arch: str, seed: int = 0):
    """An SAE from its SAELens config, its parameters replaced by seeded random values (b_enc
    shifted down so that a share of latents is off, as in a trained SAE)."""
    cls, extra = CONFIGS[arch]
    cfg = getattr(sae_lens, cls)(d_in=D, d_sae=D_SAE, apply_b_dec_to_input=True, **extra)
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


@pytest.mark.parametrize("arch", list(CONFIGS))
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
            return y + sae.decode(f2) - sae.decode(fy)
    assert abs(row - hand_ld(gpt2, CORRUPT, {SITE: swap_one}).mean().item()) < 1e-4
