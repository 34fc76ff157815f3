"""Fused GELU backwards in differentiated passes (runtime/activations.py).

Each swapped module must give bit for bit its own forward values and autograd's gradient (to
float rounding); the model must be left exactly as it was, also after an error; and an
attribution through patchc must equal a plain autograd computation written here, on families
whose GELU is swapped (GPT-2, Phi, GPT-J: gelu_new) and on families where nothing is (NeoX, Llama).
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
import transformers.activations as hf_act
from adapter_models import no_hooks_left
from conftest import Fam, family, make_tokenizer
from family_configs import build
from ops_common import CLEAN, CORRUPT, HEAD, ld_of

from patchc.compiler.families import lookup
from patchc.runtime.activations import approximation, fused_backwards

BLOOM = importlib.import_module("transformers.models.bloom.modeling_bloom")
SWAPPED = [  # (module, gelu_backward's approximate)
    (lambda: hf_act.NewGELUActivation(), "tanh"),
    (lambda: hf_act.FastGELUActivation(), "tanh"),
    (lambda: hf_act.AccurateGELUActivation(), "tanh"),
    (lambda: hf_act.GELUActivation(use_gelu_python=True), "none"),
    (lambda: BLOOM.BloomGelu(), "tanh"),
]
if hasattr(hf_act, "GELUTanh"):  # its Python option: transformers 5
    SWAPPED.append((lambda: hf_act.GELUTanh(use_gelu_tanh_python=True), "tanh"))


class NewGELUActivation(torch.nn.Module):  # a user's class of the same name: not matched
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


LEFT_ALONE = [
    lambda: hf_act.GELUActivation(),  # torch's gelu: its backward is one kernel already
    lambda: hf_act.QuickGELUActivation(),  # no single-kernel derivative
    lambda: hf_act.SiLUActivation(),
    lambda: torch.nn.GELU(approximate="tanh"),
    lambda: NewGELUActivation(),
]


def _net(act: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), act, torch.nn.Linear(16, 3))


def _value_and_grad(net: torch.nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = net(x)
    (grad,) = torch.autograd.grad((out * torch.arange(1.0, 4.0)).sum(), [x])
    return out.detach(), grad


@pytest.mark.parametrize("make,approximate", SWAPPED)
def test_swapped_gelu_keeps_values_and_gradients(make, approximate: str) -> None:
    act = make()
    assert approximation(act) == approximate
    net = _net(act)
    x = 3 * torch.randn(5, 7, 8, generator=torch.Generator().manual_seed(1))
    want_out, want_grad = _value_and_grad(net, x)  # the module's own autograd
    with fused_backwards(net) as n:
        assert n == 1
        assert "forward" in act.__dict__
        got_out, got_grad = _value_and_grad(net, x)
        pre = net[0](x).requires_grad_(True)
        assert type(act(pre).grad_fn).__name__ == "_FusedGeluBackward"
        with torch.no_grad():  # no graph wanted: the module's own call
            assert torch.equal(act(pre), type(act).forward(act, pre))
    assert torch.equal(got_out, want_out)  # bit for bit
    assert torch.allclose(got_grad, want_grad, atol=1e-5, rtol=1e-5), \
        (got_grad - want_grad).abs().max()
    # and equal to the derivative itself, taken in float64 through torch's own gelu
    x64 = net[0](x).double().requires_grad_(True)
    (d,) = torch.autograd.grad(torch.nn.functional.gelu(x64, approximate=approximate).sum(),
                               [x64])
    with fused_backwards(net):
        pre = net[0](x).detach().requires_grad_(True)
        (fused,) = torch.autograd.grad(act(pre).sum(), [pre])
    assert torch.allclose(fused.double(), d, atol=1e-5)
    assert "forward" not in act.__dict__  # the class's forward again


@pytest.mark.parametrize("make", LEFT_ALONE)
def test_other_activations_are_left_alone(make) -> None:
    net = _net(make())
    with fused_backwards(net) as n:
        assert n == 0
        assert all("forward" not in m.__dict__ for m in net.modules())


def test_restored_after_an_error_and_user_patches_kept() -> None:
    act, other = hf_act.NewGELUActivation(), hf_act.NewGELUActivation()
    mine = other.forward
    other.forward = lambda x: mine(x)  # a user's (or an offloader's) own wrapper
    patched = other.forward
    net = torch.nn.Sequential(act, other)
    with pytest.raises(RuntimeError, match="boom"), fused_backwards(net) as n:
        assert n == 1 and "forward" in act.__dict__
        raise RuntimeError("boom")
    assert "forward" not in act.__dict__
    assert other.forward is patched


# ---- through patchc, against plain autograd ----------------------------------------------------

KINDS = ("resid_pre", "attn.out", "mlp.out")
BODY = ("attribute " + ", ".join(f"L*.{k} @ each" for k in KINDS)
        + " from clean into corrupt using atp measure ld as t\n")


_BUILT: dict[str, Fam] = {}


def _fam(name: str, models_dir) -> Fam:
    """conftest's tiny model of a family, or (phi, gptj) family_configs' saved beside it."""
    if name not in ("phi", "gptj"):
        return family(name, models_dir)
    if lookup(name) is None:  # GPT-J needs a newer transformers
        pytest.skip(f"{name} is not supported by this transformers release")
    if name not in _BUILT:
        model, tok = build(name), make_tokenizer()
        path = models_dir / f"{name}-gelu"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        _BUILT[name] = Fam(name, model, tok, str(path))
    return _BUILT[name]


def _hand_estimates(fam: Fam, sites: list[str]) -> dict[str, torch.Tensor]:
    """m_B + (a_A - a_B) . g per example and position, g by autograd of a zero added at each
    site (the model's own backward everywhere)."""
    ids = fam.ids(CORRUPT)
    zeros = {s: torch.zeros(*ids.shape, fam.model.config.hidden_size, requires_grad=True)
             for s in sites}
    writes = {s: (lambda x, s=s: x + zeros[s]) for s in sites}
    with torch.enable_grad(), fam.hooked(writes):
        ld = ld_of(fam, fam.model(ids).logits.float())
        grads = torch.autograd.grad(ld.sum(), [zeros[s] for s in sites])
    a, b = fam.read(CLEAN, *sites), fam.read(CORRUPT, *sites)
    return {s: ld.detach()[:, None] + ((a[s] - b[s]) * g).sum(-1)
            for s, g in zip(sites, grads)}


@contextlib.contextmanager
def _watch_activations(model: torch.nn.Module, seen: list):
    """Record, for every activation call with gradients on, the backward it records and
    whether its output equals the module's own forward bit for bit."""
    def hook(mod, args, out):
        if torch.is_grad_enabled() and out.requires_grad:
            with torch.no_grad():
                same = torch.equal(out, type(mod).forward(mod, args[0]))
            seen.append((type(out.grad_fn).__name__, same))
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m).__module__.startswith("transformers.activations")]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name,fused", [("gpt2", True), ("phi", True), ("gptj", True),
                                        ("neox", False), ("llama", False)])
@pytest.mark.parametrize("naive", [False, True])
def test_attribution_equals_plain_autograd(models_dir, name: str, fused: bool,
                                           naive: bool) -> None:
    fam = _fam(name, models_dir)
    flags = [p.requires_grad for p in fam.model.parameters()]
    seen: list = []
    with _watch_activations(fam.model, seen):
        res = fam.run(HEAD + BODY, naive=naive)
    assert seen and all(same for _, same in seen)  # forward values bit-identical
    assert all((kind == "_FusedGeluBackward") == fused for kind, _ in seen), seen
    n_layers = fam.model.config.num_hidden_layers
    sites = [f"L{layer}.{k}" for k in KINDS for layer in range(n_layers)]
    want = _hand_estimates(fam, sites)
    df = res.per_example("t")
    for k in KINDS:
        for layer in range(n_layers):
            rows = df[(df["site"] == f"L*.{k} @ each") & (df["layer"] == layer)]
            got = torch.tensor(rows.sort_values(["example", "pos"])["ld"].to_numpy(),
                               dtype=torch.float32).view(len(CORRUPT), -1)
            w = want[f"L{layer}.{k}"]
            assert torch.allclose(got, w, atol=1e-5, rtol=1e-5), \
                (name, k, layer, (got - w).abs().max())
    assert all("forward" not in m.__dict__ for m in fam.model.modules())
    assert [p.requires_grad for p in fam.model.parameters()] == flags
    assert no_hooks_left(fam.model)


def test_model_restored_after_a_failing_pass(models_dir) -> None:
    fam = family("gpt2", models_dir)
    flags = [p.requires_grad for p in fam.model.parameters()]
    ids = fam.ids(CORRUPT)
    with torch.no_grad():
        before = fam.model(ids).logits

    def fail(mod, args, out):
        if torch.is_grad_enabled():
            raise RuntimeError("failed in the differentiated pass")
    handle = fam.model.get_output_embeddings().register_forward_hook(fail)
    try:
        with pytest.raises(Exception, match="failed in the differentiated pass"):
            fam.run(HEAD + BODY)
    finally:
        handle.remove()
    assert all("forward" not in m.__dict__ for m in fam.model.modules())
    assert [p.requires_grad for p in fam.model.parameters()] == flags
    assert no_hooks_left(fam.model)
    with torch.no_grad():  # and it computes as before
        assert torch.equal(fam.model(ids).logits, before)
