"""A model_type the family table does not list: its row is inferred from the config and
checked on the loaded weights (compiler/family_inference.py, runtime/adapters/inferred.py).

Each case is a known family's tiny model re-registered with transformers under a new
model_type, so patchc cannot look it up: what it infers must read every site exactly as the
table's row does, run the same numbers (optimized and naive), or be refused with what
differs. Layouts the config does not state are found on the weights: OLMo 2's norms after the
sub-blocks, NeoX's parallel block and per-head fused q/k/v, Gemma's (1 + w) norm.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers as tf
from adapter_models import KINDS, all_sites, no_hooks_left, run
from conftest import make_tokenizer
from family_configs import config as family_config

import patchc
from patchc.compiler.errors import RuntimeInterventionError
from patchc.compiler.families import installed_transformers, lookup
from patchc.runtime.adapters import Adapter, adapter_for, moe, receivers

# (W210, expected here: each run says its layout was inferred; the tests read res.warnings)
pytestmark = pytest.mark.filterwarnings("ignore::patchc.api.PatchcWarning")
ACCEPTED = ["llama", "gpt2", "olmo2", "gpt_neox", "gemma2", "phi",
            # mixtures of experts, one per routing rule (and shared experts, gated or not)
            "mixtral", "qwen2_moe", "gpt_oss", "ernie4_5_moe", "minimax_m2", "hy_v3",
            "hunyuan_v1_moe"]
_MADE: dict[str, type] = {}


def renamed(family: str, **changes) -> torch.nn.Module:
    """`family`'s tiny random model as a model_type of its own (registered once), with
    `changes` to its config."""
    base = family_config(family)
    cfg_cls, model_cls = type(base), tf.AutoModelForCausalLM._model_mapping[type(base)]
    name = f"patchc_test_{family}"
    if name not in _MADE:
        new_cfg = type(f"Test{cfg_cls.__name__}", (cfg_cls,), {"model_type": name})
        new_model = type(f"Test{model_cls.__name__}", (model_cls,), {"config_class": new_cfg})
        tf.AutoConfig.register(name, new_cfg)
        tf.AutoModelForCausalLM.register(new_cfg, new_model)
        _MADE[name] = new_model
    kwargs = {k: v for k, v in base.to_dict().items()
              if k not in ("model_type", "transformers_version", "architectures")} | changes
    cfg = _MADE[name].config_class(**kwargs)
    torch.manual_seed(0)
    model = _MADE[name](cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms not 1, biases not 0
    return model


def _sites(ad: Adapter) -> list:
    return all_sites(ad, KINDS - receivers.KINDS)


def _skip_old(family: str) -> None:
    if lookup(family) is None:
        pytest.skip(f"{family} needs a newer transformers")
    if lookup(family).moe and installed_transformers() < (5, 6):
        pytest.skip("mixtures of experts are inferred from transformers 5.6 on")


@pytest.mark.parametrize("family", ACCEPTED)
def test_inferred_row_reads_every_site_as_the_table_row(family: str) -> None:
    _skip_old(family)
    model = renamed(family)
    ad = adapter_for(model)
    assert ad.fam.inferred and ad.family == f"patchc_test_{family}"
    table = Adapter(model, lookup(family))
    ids = torch.randint(4, 60, (2, 6), generator=torch.Generator().manual_seed(1))
    sites = _sites(ad)
    # The same sites, but for patterns, which go when the check finds the exposed pattern is
    # not the one the model uses (then the table row's would not be either).
    lost = set(_sites(table)) - set(sites)
    assert all(kind in ("pattern", "attn.pattern") for kind, _, _ in lost), lost
    assert not set(sites) - set(_sites(table))
    want_logits, want = run(table, ids, reads=sites)
    logits, got = run(ad, ids, reads=sites)
    assert torch.equal(logits, want_logits)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    if table.fam.moe:  # the rule found re-routes as the table's: a router write alike
        assert ad.fam.moe == table.fam.moe

        def shift(logits: torch.Tensor) -> torch.Tensor:
            g = torch.Generator().manual_seed(5)
            return logits + torch.randn(logits.shape, generator=g).to(logits.dtype)
        moved, _ = run(table, ids, writes=[("router", 0, None, shift)])
        assert not torch.equal(moved, want_logits)
        assert torch.equal(run(ad, ids, writes=[("router", 0, None, shift)])[0], moved)
    assert no_hooks_left(model)


def test_layouts_the_config_does_not_state_are_found_on_the_weights() -> None:
    olmo2 = adapter_for(renamed("olmo2"))
    assert olmo2.fam.post_norms and olmo2.missing("ln1.scale")
    neox = adapter_for(renamed("gpt_neox"))
    assert neox.parallel_attn and neox.fam.qkv == "grouped"
    gemma2 = adapter_for(renamed("gemma2"))
    assert gemma2.norm == "rmsnorm" and gemma2.rms_offset == 1.0 and gemma2.fam.post_norms


SPEC = """
data d = [
  {"clean": "when Mary and John went to", "corrupt": "when Anna and Bob went to",
   "answer": "Mary", "distractor": "John"},
  {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the tree",
   "answer": "mat", "distractor": "tree"},
]
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
swap L*.H*.z @ last from clean into corrupt measure ld as heads
swap L*.resid_pre @ each from clean into corrupt measure ld as resid
attribute L*.attn.out @ each, L*.mlp.out @ each from clean into corrupt using atp
    measure ld as atp
"""


@pytest.mark.parametrize("family", ["llama", "olmo2", "gpt_neox", "qwen2_moe"])
def test_inferred_family_runs_as_the_table_row(family: str, tmp_path) -> None:
    _skip_old(family)
    tok = make_tokenizer()
    model = renamed(family)
    known = tf.AutoModelForCausalLM.from_config(family_config(family)).float().eval()
    known.load_state_dict(model.state_dict())
    spec = f'model "{tmp_path}"\n' + SPEC
    res = patchc.run(spec, model=model, tokenizer=tok)
    assert any(w.code == "W210" for w in res.warnings)
    layout = res.manifest["layout"]
    assert layout["model_type"] == f"patchc_test_{family}"
    assert layout["post_norms"] == (family == "olmo2")
    assert layout["parallel"] == (family == "gpt_neox")
    naive = patchc.run(spec, model=model, tokenizer=tok, naive=True)
    table = patchc.run(spec, model=known, tokenizer=tok)
    assert table.manifest["layout"] is None
    for name in ("heads", "resid", "atp"):
        pd.testing.assert_frame_equal(res[name], table[name])
        pd.testing.assert_frame_equal(res[name], naive[name], check_exact=False,
                                      atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family, what", [
    ("cohere", "the logits are not the final norm and unembedding"),  # a logit scale
    ("bloom", "resid_pre + attn.out + mlp.out is not the block's output"),  # residual inside
    ("granite", "resid_pre + attn.out + mlp.out is not the block's output"),  # multipliers
])
def test_a_layout_that_does_not_hold_is_refused_with_what_differs(family: str, what: str
                                                                   ) -> None:
    if lookup(family) is None:
        pytest.skip(f"{family} needs a newer transformers")
    model = renamed(family)
    with pytest.raises(RuntimeInterventionError) as e:
        adapter_for(model)
    assert e.value.code == "E401" and what in e.value.message
    assert "nothing was run" in e.value.message
    assert no_hooks_left(model)


def test_half_precision_neither_hides_a_layout_nor_blurs_a_norm() -> None:
    """In bfloat16 the checks allow for rounding, element by element: a feature of huge
    magnitude in every token (a "massive activation") must not hide Granite's residual
    multiplier, and a wide LayerNorm must not pass for an RMSNorm."""
    _skip_old("granite")
    granite = renamed("granite").to(torch.bfloat16)
    with torch.no_grad():
        granite.get_input_embeddings().weight[:, 0] += 200.0
    with pytest.raises(RuntimeInterventionError) as e:
        adapter_for(granite)
    assert "resid_pre + attn.out + mlp.out is not the block's output" in e.value.message
    wide = renamed("gpt2", n_embd=1024, n_layer=1).to(torch.bfloat16)
    ad = adapter_for(wide)
    assert (ad.norm, ad.rms_offset) == ("layernorm", 0.0)


def test_a_model_in_training_mode_is_settled_as_it_evaluates() -> None:
    model = renamed("gpt2", resid_pdrop=0.5, attn_pdrop=0.5).train()  # (forwards differ)
    assert adapter_for(model).fam.inferred and model.training


class _Halved(torch.nn.Linear):
    """A linear layer whose forward does something its weight does not say."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * super().forward(x)


def _halve(linear: torch.nn.Linear) -> None:
    linear.__class__ = _Halved


def _layernorm_ln2(model: torch.nn.Module) -> None:
    for layer in model.model.layers:  # (a LayerNorm where the config implies RMSNorm)
        norm = torch.nn.LayerNorm(model.config.hidden_size)
        with torch.no_grad():
            norm.weight.add_(0.2)
            norm.bias.add_(0.1)
        layer.post_attention_layernorm = norm


def _double_experts(model: torch.nn.Module) -> None:
    for layer in model.model.layers:  # (an experts class whose forward is its own)
        cls = type(layer.mlp.experts)
        layer.mlp.experts.__class__ = type(
            "Doubled", (cls,), {"forward": lambda self, *a, cls=cls, **k: 2 * cls.forward(
                self, *a, **k)})


@pytest.mark.parametrize(("family", "change", "what"), [
    # What patchc computes from a module's weight, or runs in its place, is checked against
    # what the module itself computes.
    ("llama", lambda m: _halve(m.lm_head), "LM head (_Halved) is not a plain linear map"),
    ("llama", lambda m: _halve(m.model.layers[0].self_attn.o_proj),
     "the heads' out (z_h · W_O[h]) do not add up to attn.out"),
    ("llama", lambda m: _halve(m.model.layers[1].self_attn.k_proj),
     "self_attn.k_proj is not a plain linear map"),
    ("llama", _layernorm_ln2, "post_attention_layernorm does not compute a rmsnorm"),
    ("mixtral", _double_experts, "the MLP patchc runs for expert sites does not give"),
])
def test_a_module_that_computes_something_else_is_refused(family: str, change, what: str
                                                          ) -> None:
    _skip_old(family)
    model = renamed(family)
    change(model)
    with pytest.raises(RuntimeInterventionError) as e:
        adapter_for(model)
    assert e.value.code == "E401" and what in e.value.message, e.value.message
    assert no_hooks_left(model)


def _mlp_reads_scaled(model: torch.nn.Module) -> None:
    for layer in model.model.layers:  # (the block scales the norm's output on the way in)
        layer.mlp.register_forward_pre_hook(lambda m, args: (0.7 * args[0],))


def _value_residual(model: torch.nn.Module) -> None:
    """Block 1 adds a share of block 0's attention output, kept on a module between them."""
    first, second = model.model.layers[0], model.model.layers[1]
    first.self_attn.register_forward_hook(
        lambda m, a, out: setattr(second, "kept", out[0].detach()))
    second.mlp.register_forward_hook(lambda m, a, out: out + 0.5 * second.kept)


@pytest.mark.parametrize(("change", "what"), [
    (_mlp_reads_scaled, "the MLP does not read post_attention_layernorm's output"),
    (_value_residual, "its blocks pass something to later blocks besides the residual"),
])
def test_what_edges_and_shared_prefixes_rely_on_is_checked(change, what: str) -> None:
    model = renamed("llama")
    change(model)
    with pytest.raises(RuntimeInterventionError) as e:
        adapter_for(model)
    assert what in e.value.message, e.value.message


def test_norms_under_meta_names_are_found() -> None:
    """Meta's llama names (`attention_norm`, `ffn_norm`): a sequential block, not a parallel
    one without norms."""
    model = renamed("llama")
    for layer in model.model.layers:
        layer.attention_norm = layer.input_layernorm
        layer.ffn_norm = layer.post_attention_layernorm
        del layer.input_layernorm, layer.post_attention_layernorm
        layer.forward = _meta_forward(layer)
    ad = adapter_for(model)
    assert (ad.s.ln1, ad.s.ln2, ad.parallel_attn) == ("attention_norm", "ffn_norm", False)


def _meta_forward(layer: torch.nn.Module):
    def forward(hidden_states, *args, **kwargs):
        h = layer.attention_norm(hidden_states)
        h, _ = layer.self_attn(h, *args, **kwargs)
        hidden_states = hidden_states + h
        return hidden_states + layer.mlp(layer.ffn_norm(hidden_states))
    return forward


def test_edges_into_an_attention_that_reads_its_input_elsewhere_are_unavailable() -> None:
    model = renamed("llama")
    for layer in model.model.layers:  # (a gate on the attention's input: no receiver of ours)
        layer.self_attn.g_proj = torch.nn.Linear(model.config.hidden_size, 8)
    ad = adapter_for(model)
    assert "reads its input through g_proj" in ad.missing("q.in")
    assert ad.missing("k.in") and ad.missing("v.in") and not ad.missing("attn.z")


def test_a_config_that_switches_experts_off_is_dense() -> None:
    from patchc.compiler.family_inference import infer_family

    fam = infer_family({"architectures": ["XForCausalLM"], "num_hidden_layers": 2,
                        "hidden_size": 32, "num_attention_heads": 4, "is_moe": False,
                        "num_experts": 16384, "num_experts_per_tok": 2})
    assert fam is not None and fam.moe is None


def test_experts_chosen_by_no_known_rule_are_refused(monkeypatch) -> None:
    _skip_old("mixtral")
    model = renamed("mixtral")
    monkeypatch.setattr(moe, "RULES", ("sigmoid_topk",))  # (as if softmax were unknown)
    with pytest.raises(RuntimeInterventionError) as e:
        adapter_for(model)
    assert e.value.code == "E401" and "not chosen by any routing rule" in e.value.message
    assert no_hooks_left(model)
