"""Transcoders on real (tiny) models: the latents are encoded from the MLP's input and the
MLP's output becomes y + decode(f') - decode(f), each against plain module hooks written
here (GPT-2, Llama with grouped-query attention, NeoX with parallel blocks)."""

from __future__ import annotations

import pytest
import torch
from conftest import Fam
from ops_common import ATOL, CLEAN, CORRUPT, HEAD, ld_of, per_example
from sae_helpers import HandSAE, save_sae

D = 32


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


def test_transcoder_refused_where_the_mlp_is_no_module(tmp_path):
    """OPT runs its MLP inline in the block: a transcoder there is a check error (E385)."""
    import patchc
    from conftest import make_tokenizer
    from family_configs import build

    from patchc.compiler.errors import PatchcError

    model, tok = build("opt"), make_tokenizer()
    model.save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    save_sae(tmp_path / "t", 32, 8, "transcoder", d_out=32)
    with pytest.raises(PatchcError) as e:
        patchc.run(f'model "{tmp_path / "opt"}"\n' + HEAD +
                   f'transcoder t = "{tmp_path / "t"}" at L0.mlp\nread t in clean\n',
                   model=model, tokenizer=tok)
    assert [x.code for x in e.value.errors] == ["E385"]
    assert "not a module of its own" in e.value.errors[0].message
