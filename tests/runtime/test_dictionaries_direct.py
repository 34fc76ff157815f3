"""`dla` and `lens` on a dictionary's latents and error term, each against a hand computation
written here with plain module hooks and sae_helpers.HandSAE.

A latent's contribution at a token is its activation times its decoder row (divided by that
row's norm first for a rescaled TopK, as decode does; times the token's output factor for
an SAE that normalizes its input), a vector in its host site's space;
the error term is itself such a vector. `dla` pushes it through the final norm with the
run's own scale at the metric's position and through the unembedding; `lens` decodes it
with the final norm applied to it (its own statistics) and the unembedding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Fam
from ops_common import ATOL, CLEAN, HEAD, ROWS, per_example
from sae_helpers import HandSAE, save_sae

import patchc
from patchc.compiler.errors import PatchcError

D, N = 32, 12
_NORM = {"gpt2": ("transformer.ln_f", "transformer.h"), "llama": ("model.norm", "model.layers"),
         "neox": ("gpt_neox.final_layer_norm", "gpt_neox.layers")}


def _module(fam: Fam, path: str) -> torch.nn.Module:
    root = fam.model
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _final(fam: Fam, hooks: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The clean run's final residual (the final norm's input) and, per name in `hooks`,
    the input ("in:PATH") or output ("out:PATH") of that module."""
    got: dict[str, torch.Tensor] = {}
    norm = _module(fam, _NORM[fam.name][0])
    handles = [norm.register_forward_pre_hook(lambda m, a: got.__setitem__("final", a[0]))]
    for name, spec in (hooks or {}).items():
        side, path = spec.split(":")
        mod = _module(fam, path)
        if side == "in":
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: got.__setitem__(name, a[0])))
        else:
            handles.append(mod.register_forward_hook(
                lambda m, a, y, name=name: got.__setitem__(name, y[0] if isinstance(y, tuple)
                                                           else y)))
    try:
        with torch.no_grad():
            fam.model(fam.ids(CLEAN))
    finally:
        for h in handles:
            h.remove()
    return got


def _unembed_diff(fam: Fam) -> torch.Tensor:
    """[n, d]: the answer's minus the distractor's unembedding row, per example."""
    w = fam.model.get_output_embeddings().weight.detach()
    return torch.stack([w[fam.tid(r["answer"])] - w[fam.tid(r["distractor"])] for r in ROWS])


def hand_dla(fam: Fam, c: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Direct effect on ld of vectors c [n, d] added to the residual stream, through the final
    norm with the run's own scale at the last token (LayerNorm centres, RMSNorm does not)."""
    norm = _module(fam, _NORM[fam.name][0])
    r = final[:, -1].float()
    if fam.name in ("gpt2", "neox"):  # LayerNorm
        s = 1 / torch.sqrt(r.var(-1, unbiased=False, keepdim=True) + norm.eps)
        c = c - c.mean(-1, keepdim=True)
    else:
        s = 1 / torch.sqrt(r.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return (c * s * norm.weight.detach() * _unembed_diff(fam)).sum(-1)


def hand_lens(fam: Fam, c: torch.Tensor) -> torch.Tensor:
    """ld of vectors c [n, d] decoded by the final norm module and the unembedding."""
    norm = _module(fam, _NORM[fam.name][0])
    with torch.no_grad():
        logits = fam.model.get_output_embeddings()(norm(c[:, None]))[:, 0].float()
    a = torch.tensor([fam.tid(r["answer"]) for r in ROWS])
    b = torch.tensor([fam.tid(r["distractor"]) for r in ROWS])
    n = torch.arange(len(ROWS))
    return logits[n, a] - logits[n, b]


CASES = {  # name -> (family, declaration, dictionary options, hooks for x and y)
    "gpt2-sae-resid": ("gpt2", "sae s1 = \"P\" at L2.resid_post", {},
                       ("out:transformer.h.2", "out:transformer.h.2")),
    "gpt2-topk-rescaled-mlp": ("gpt2", "sae s1 = \"P\" at L1.mlp.out",
                               {"arch": "topk", "k": 4, "rescale": True},
                               ("out:transformer.h.1.mlp", "out:transformer.h.1.mlp")),
    "gpt2-transcoder": ("gpt2", "transcoder s1 = \"P\" at L1.mlp", {"arch": "skip_transcoder"},
                        ("in:transformer.h.1.mlp", "out:transformer.h.1.mlp")),
    "neox-transcoder": ("neox", "transcoder s1 = \"P\" at L1.mlp", {"arch": "jumprelu_transcoder"},
                        ("in:gpt_neox.layers.1.mlp", "out:gpt_neox.layers.1.mlp")),
    "gpt2-normrescale-resid": ("gpt2", "sae s1 = \"P\" at L2.resid_post",
                               {"norm": "constant_norm_rescale"},
                               ("out:transformer.h.2", "out:transformer.h.2")),
    "llama-layernorm-mlp": ("llama", "sae s1 = \"P\" at L0.mlp.out",
                            {"arch": "jumprelu", "norm": "layer_norm"},
                            ("out:model.layers.0.mlp", "out:model.layers.0.mlp")),
    "llama-jumprelu-attn": ("llama", "sae s1 = \"P\" at L1.attn.out", {"arch": "jumprelu"},
                            ("out:model.layers.1.self_attn", "out:model.layers.1.self_attn")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dla_and_lens_of_latents_equal_hand(get_family, tmp_path, case):
    name, decl, opts, (x_hook, y_hook) = CASES[case]
    fam = get_family(name)
    arch = opts.get("arch", "standard")
    norm = opts.get("norm", "none")
    w = save_sae(tmp_path / "s1", D, N, arch, k=opts.get("k", 4), d_out=D,
                 rescale=opts.get("rescale", False), bias=-0.1, norm=norm)
    hand = HandSAE(w, arch, k=opts.get("k", 4), rescale=opts.get("rescale", False), norm=norm)
    res = fam.run(HEAD + decl.replace("P", str(tmp_path / "s1")) + "\n"
                  "dla s1[*] in clean  measure ld  as dla_feats\n"
                  "dla s1[2:9] @ last in clean  measure ld  as dla_slice\n"
                  "dla s1.err in clean  measure ld  as dla_err\n"
                  "dla s1.err[0:5] @ last in clean  measure ld  as dla_err_part\n"
                  "lens s1[*] @ last in clean  measure ld  as lens_feats\n"
                  "lens s1[0:12] @ last in clean  measure ld  as lens_all\n"
                  "lens s1.err @ last in clean  measure ld  as lens_err\n")
    got = _final(fam, {"x": x_hook, "y": y_hook})
    x, y, final = got["x"], got["y"], got["final"]
    f = hand.encode(x)[:, -1]  # [n, N] at the last token
    err = (y.float() - hand.decode(hand.encode(x), x))[:, -1]
    # An SAE that normalizes its input rescales its decode per token: 1/c, or the std.
    if norm == "constant_norm_rescale":
        f = f / hand.state["c"][:, -1]
    elif norm == "layer_norm":
        f = f * hand.state["std"][:, -1]
    rows = w["W_dec"] / (w["W_dec"].norm(dim=-1, keepdim=True) if opts.get("rescale") else 1)
    assert (f > 0).any() and (f == 0).any()
    for i in range(N):
        c = f[:, i:i + 1] * rows[i]
        torch.testing.assert_close(per_example(res, "dla_feats", "ld", feature=i),
                                   hand_dla(fam, c, final), atol=ATOL, rtol=0)
        torch.testing.assert_close(per_example(res, "lens_feats", "ld", feature=i),
                                   hand_lens(fam, c), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_example(res, "dla_slice", "ld"),
                               hand_dla(fam, f[:, 2:9] @ rows[2:9], final), atol=ATOL, rtol=0)
    torch.testing.assert_close(per_example(res, "lens_all", "ld"), hand_lens(fam, f @ rows),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(per_example(res, "dla_err", "ld"), hand_dla(fam, err, final),
                               atol=ATOL, rtol=0)
    part = torch.zeros_like(err)
    part[:, :5] = err[:, :5]
    torch.testing.assert_close(per_example(res, "dla_err_part", "ld"),
                               hand_dla(fam, part, final), atol=ATOL, rtol=0)
    torch.testing.assert_close(per_example(res, "lens_err", "ld"), hand_lens(fam, err),
                               atol=1e-4, rtol=0)


def test_latents_and_error_split_the_host_exactly(gpt2: Fam, tmp_path):
    """dla is additive: every latent's dla, the error term's and the decoder bias's direct
    effect sum to the host site's own dla, example by example (y = decode(f) + err)."""
    w = save_sae(tmp_path / "s1", D, N, apply_b_dec=False, bias=0.0)
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.mlp.out\n'
                   "dla s1[*], s1.err, L1.mlp.out in clean  measure ld  as direct\n")
    df = res.per_example("direct")
    latents = df[df["site"] == "s1[*]"].groupby("example")["ld"].sum()
    assert (df[df["site"] == "s1[*]"]["ld"] != 0).sum() > N  # many latents fire
    err = df[df["site"] == "s1.err"].set_index("example")["ld"]
    host = df[df["site"] == "L1.mlp.out"].set_index("example")["ld"]
    bias = hand_dla(gpt2, w["b_dec"].expand(len(ROWS), D), _final(gpt2)["final"])
    total = torch.tensor((latents + err).sort_index().to_numpy()) + bias
    torch.testing.assert_close(total.float(), torch.tensor(host.sort_index().to_numpy()).float(),
                               atol=1e-4, rtol=0)


def _check(fam: Fam, body: str) -> list[tuple[str, str]]:
    try:
        patchc.compile(fam.spec(HEAD + body))
    except PatchcError as e:
        return [(x.code, x.message) for x in e.errors]
    return []


def test_refused_where_no_residual_contribution(gpt2: Fam, tmp_path):
    """An SAE on z decodes into z's space (E356), for latents and error term alike; a lens
    decodes a whole error term, not a slice (E361)."""
    save_sae(tmp_path / "z", 8, N)
    save_sae(tmp_path / "n", D, N)
    z = f'sae zs = "{tmp_path / "z"}" at L0.H1.z\n'
    for stmt in ("dla zs[*] in clean  measure ld", "dla zs.err in clean  measure ld",
                 "lens zs[3] @ last in clean  measure ld"):
        (code, msg), = _check(gpt2, z + stmt + "\n")
        assert code == "E356" and "L0.H1.z" in msg, msg
    n = f'sae ns = "{tmp_path / "n"}" at L1.resid_post\n'
    assert _check(gpt2, n + "dla ns.err, ns[0:4] in clean  measure ld\n") == []
    (code, _), = _check(gpt2, n + "lens ns.err[0:4] @ last in clean  measure ld\n")
    assert code == "E361"
