"""Loading dictionaries: .npz weights without pickles, the manifest's hashes of a folder,
SAELens objects through the API (a stand-in with SAELens' interface, and the real package
where it is installed), weights that do not fit their cfg.json."""

from __future__ import annotations

import pytest
import torch
from conftest import Fam
from ops_common import ATOL, CLEAN, HEAD
from sae_helpers import HandSAE, save_sae

D = 32


def _save(tmp_path, name: str, arch: str, opts: dict, d_in: int = D, d_sae: int = 24, **kw):
    return save_sae(tmp_path / name, d_in, d_sae, arch, **opts, **kw)


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


def test_weights_that_do_not_fit_or_hold_pickles(gpt2: Fam, tmp_path):
    """Weights of another shape than cfg.json implies (E480); an .npz holding a pickled
    object is refused, never unpickled (E481)."""
    import numpy as np
    from safetensors.torch import save_file

    from patchc.compiler.errors import PatchcError

    w = _save(tmp_path, "s1", "standard", {})
    save_file({**w, "W_dec": torch.zeros(24, 8)}, str(tmp_path / "s1" / "sae_weights.safetensors"))
    body = HEAD + 'sae s1 = "SAE" at L1.resid_post\nread s1 in clean\n'
    with pytest.raises(PatchcError) as e:
        gpt2.run(body.replace("SAE", str(tmp_path / "s1")))
    assert e.value.code == "E480" and "W_dec" in e.value.message
    # at its `sae` statement
    assert e.value.span.col == 1 and "| sae s1 = " in e.value.render(), e.value.render()
    decl = e.value.span.line
    _save(tmp_path, "s2", "standard", {}, fmt="npz")
    np.savez(tmp_path / "s2" / "sae_weights.npz", W_enc=np.array([{"x": 1}], dtype=object))
    with pytest.raises(PatchcError) as e:
        gpt2.run(body.replace("SAE", str(tmp_path / "s2")))
    assert e.value.code == "E481" and e.value.span.line == decl
